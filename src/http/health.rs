//! Probes and telemetry: `/healthz`, `/readyz`, `/metrics`.

use std::time::Duration;

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde_json::json;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "up")))]
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// The database answers and the server is not shutting down; the event bus is reported.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "shutting_down" })),
        );
    }
    if !state.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not_ready", "database": "not migrated yet" })),
        );
    }
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.db),
    )
    .await;
    // The bus only carries wake-ups: while it is down, sends still commit and live
    // delivery reads the log, so it is reported, not a reason to take the process out.
    let event_bus = json!({
        "engine": state.bus.engine,
        "status": state.bus.describe(),
    });
    match ping {
        Ok(Ok(_)) => (
            StatusCode::OK,
            axum::Json(json!({ "status": "ready", "database": "ok", "event_bus": event_bus })),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({ "status": "not_ready", "database": "unreachable", "event_bus": event_bus }),
            ),
        ),
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let idle = state.db.num_idle() as u32;
    crate::metrics::pool(state.db.size().saturating_sub(idle), idle);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
}
