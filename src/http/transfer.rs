//! Data in and out: bulk history import, a principal's export (streamed), erasure.

use axum::{
    body::Body,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiResult, Auth, Envelope, Json, Path, Query, ok};
use crate::{
    core::transfer::{self, Erased, ExportFormat, ImportRequest, Imported},
    error::{AppError, AppResult},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    super::openapi::documented(
        OpenApiRouter::new()
            .routes(routes!(import))
            .routes(routes!(export))
            .routes(routes!(erase)),
    )
}

/// Appends history with its original senders and timestamps (owner, admin or service);
/// re-running the same import stores nothing twice.
#[utoipa::path(post, path = "/api/v1/communication/conversations/{id}/import", tag = "data",
    params(("id" = Uuid, Path)),
    request_body = ImportRequest,
    responses((status = 200, body = inline(Envelope<Imported>)),
              (status = 403, description = "FORBIDDEN: only the owner, an admin or a service imports"),
              (status = 409, description = "CONVERSATION_ARCHIVED")),
    security(("bearer" = [])))]
async fn import(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    Json(body): Json<ImportRequest>,
) -> ApiResult<Imported> {
    ok(
        StatusCode::OK,
        transfer::import(&state, &principal, id, body).await?,
    )
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    /// `ndjson` (default: one record per line) or `json` (one document).
    format: Option<String>,
}

/// Everything held about a principal (itself or an admin asks), streamed: its profile,
/// agents, participations with their conversations, the messages it sent, reactions and
/// webhooks, one `{type, …}` record each.
#[utoipa::path(get, path = "/api/v1/communication/users/{user_id}/export", tag = "data",
    params(("user_id" = String, Path), ExportQuery),
    responses((status = 200, description = "NDJSON records (or one JSON document `{\"records\": [...]}` with `format=json`)",
               content((String = "application/x-ndjson"), (Object = "application/json"))),
              (status = 403, description = "FORBIDDEN: only the principal itself or an admin")),
    security(("bearer" = [])))]
async fn export(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(user_id): Path<String>,
    Query(query): Query<ExportQuery>,
) -> AppResult<Response> {
    let format = match query.format.as_deref() {
        None | Some("ndjson") => ExportFormat::Ndjson,
        Some("json") => ExportFormat::Json,
        Some(_) => return Err(AppError::invalid_field("format", "must be ndjson or json")),
    };
    let records = transfer::export(&state, &principal, &user_id).await?;
    let lines = futures::stream::unfold(
        (records, true, false),
        move |(mut records, first, finished)| async move {
            if finished {
                return None;
            }
            let (chunk, finished) = match (records.recv().await, format) {
                (Some(r), ExportFormat::Ndjson) => (format!("{r}\n"), false),
                (Some(r), ExportFormat::Json) if first => (format!("{{\"records\":[{r}"), false),
                (Some(r), ExportFormat::Json) => (format!(",{r}"), false),
                (None, ExportFormat::Ndjson) => return None,
                (None, ExportFormat::Json) if first => ("{\"records\":[]}".to_owned(), true),
                (None, ExportFormat::Json) => ("]}".to_owned(), true),
            };
            Some((Ok::<_, std::io::Error>(chunk), (records, false, finished)))
        },
    )
    // The body (through compression) may poll once more after the end: fused, that is
    // answered `None` instead of a panic.
    .fuse();
    let content_type = match format {
        ExportFormat::Ndjson => "application/x-ndjson",
        ExportFormat::Json => "application/json",
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(lines),
    )
        .into_response())
}

/// Erases a principal (itself or an admin): its messages become tombstones; its
/// participations, reactions, pins, agent records, webhooks and profile are removed.
#[utoipa::path(delete, path = "/api/v1/communication/users/{user_id}", tag = "data",
    params(("user_id" = String, Path)),
    responses((status = 200, body = inline(Envelope<Erased>)),
              (status = 403, description = "FORBIDDEN: only the principal itself or an admin")),
    security(("bearer" = [])))]
async fn erase(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(user_id): Path<String>,
) -> ApiResult<Erased> {
    ok(
        StatusCode::OK,
        transfer::erase(&state, &principal, &user_id).await?,
    )
}
