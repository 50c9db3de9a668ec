//! REST transport: thin handlers over `core`, our envelope, extractors that reject in it.

mod conversations;
mod health;
mod insights;
mod messages;
pub mod openapi;
mod participants;

use axum::{
    Router,
    extract::{FromRequest, FromRequestParts, Request, State, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, Uri, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

pub const API_BASE: &str = "/api/v1/communication";
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Success envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    /// Always `true`.
    pub success: bool,
    pub data: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

pub type ApiResult<T> = AppResult<(StatusCode, axum::Json<Envelope<T>>)>;

pub fn ok<T>(status: StatusCode, data: T) -> ApiResult<T> {
    Ok((
        status,
        axum::Json(Envelope {
            success: true,
            data,
            message: None,
        }),
    ))
}

pub fn ok_with<T>(status: StatusCode, data: T, message: &str) -> ApiResult<T> {
    Ok((
        status,
        axum::Json(Envelope {
            success: true,
            data,
            message: Some(message.to_owned()),
        }),
    ))
}

/// `axum::Json` whose rejections come back in our error envelope.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct Json<T>(pub T);

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                AppError::PayloadTooLarge {
                    limit: MAX_BODY_BYTES,
                }
            }
            JsonRejection::MissingJsonContentType(_) => {
                AppError::validation("expected `Content-Type: application/json`")
            }
            JsonRejection::JsonDataError(e) => AppError::Unprocessable(e.body_text()),
            other => AppError::validation(other.body_text()),
        }
    }
}

/// `axum::extract::Path` with our rejection.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct Path<T>(pub T);

impl From<axum::extract::rejection::PathRejection> for AppError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> Self {
        AppError::validation(format!("invalid path parameter: {}", rejection.body_text()))
    }
}

/// `axum::extract::Query` with our rejection.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);

impl From<axum::extract::rejection::QueryRejection> for AppError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        AppError::validation(format!("invalid query: {}", rejection.body_text()))
    }
}

/// The verified caller, put in the request by [`authenticate`].
pub struct Auth(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Auth)
            .ok_or_else(|| AppError::Unauthorized("missing bearer token".into()))
    }
}

/// Verifies the bearer token and applies the caller's rate limit, with its headers.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if !state.is_ready() {
        return AppError::Unavailable(anyhow::anyhow!("database not migrated yet")).into_response();
    }
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match state.verifier.verify_bearer(header) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let allowance = match state.limiter.check(&principal.id) {
        Ok(a) => a,
        Err(e) => {
            crate::metrics::rate_limited("rest");
            let mut response = e.into_response();
            let h = response.headers_mut();
            h.insert(
                "x-ratelimit-limit",
                HeaderValue::from(state.config.rate_limit_per_minute),
            );
            h.insert("x-ratelimit-remaining", HeaderValue::from(0));
            return response;
        }
    };
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(allowance.limit));
    h.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(allowance.remaining),
    );
    h.insert("x-ratelimit-reset", HeaderValue::from(allowance.reset_secs));
    response
}

/// The REST API with its OpenAPI description.
pub fn api(state: AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (api, spec) = OpenApiRouter::with_openapi(openapi::base())
        .merge(conversations::router())
        .merge(participants::router())
        .merge(messages::router())
        .merge(insights::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        // REST only: Socket.IO long-polling holds requests open for the ping interval,
        // and websockets must not be compressed or cut.
        .layer(middleware::from_fn_with_state(state, deadline))
        .layer(tower_http::compression::CompressionLayer::new())
        .split_for_parts();
    let (public, public_spec) = health::router().split_for_parts();
    let mut spec = spec;
    spec.merge(public_spec);
    (api.merge(public), spec)
}

/// Answers `503 UNAVAILABLE` when a request runs longer than `REQUEST_TIMEOUT_SECONDS`.
/// The work is dropped at its next await point; a send whose commit already happened
/// stays committed, and its retry with the same `client_message_id` returns it.
async fn deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = std::time::Duration::from_secs(state.config.request_timeout_seconds.max(1));
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => AppError::Unavailable(anyhow::anyhow!(
            "request took longer than {}s",
            limit.as_secs()
        ))
        .into_response(),
    }
}

/// Unknown routes answer in our envelope.
pub async fn not_found() -> AppError {
    AppError::NotFound("route")
}

/// Accepts a trailing slash on every API route by trimming it before routing.
pub fn trim_trailing_slash(mut request: Request) -> Request {
    let path = request.uri().path();
    if path.len() > 1 && path.ends_with('/') && path.starts_with("/api/") {
        let trimmed = path.trim_end_matches('/');
        let new = match request.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = new.parse::<Uri>() {
            *request.uri_mut() = uri;
        }
    }
    request
}
