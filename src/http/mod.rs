//! REST transport: thin handlers over `core`, our envelope, extractors that reject in it.

mod conversations;
mod health;
mod hooks;
mod insights;
mod messages;
pub mod openapi;
mod participants;
mod transfer;

use axum::{
    Router,
    extract::{FromRequest, FromRequestParts, Request, State},
    http::{StatusCode, Uri, request::Parts},
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

/// A JSON request body, read by the request-body policy (contract §3): any JSON document
/// is first checked as untrusted input (no U+0000 anywhere, bounded nesting), then read
/// into `T`. Unknown fields are ignored; a known field of the wrong type is a 422 naming it.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !is_json(content_type) {
            return Err(AppError::validation(
                "expected `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::PayloadTooLarge {
                        limit: MAX_BODY_BYTES,
                    }
                } else {
                    AppError::validation("the request body could not be read")
                }
            })?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| AppError::Validation {
                message: format!("the body is not valid JSON: {}", json_problem(&e)),
                details: Some(serde_json::json!({
                    "line": e.line(), "column": e.column(), "problem": json_problem(&e)
                })),
            })?;
        crate::core::validate::untrusted_json(&value)?;
        // Valid JSON is valid UTF-8.
        crate::core::validate::exact_numbers(std::str::from_utf8(&bytes).unwrap_or_default())?;
        serde_path_to_error::deserialize(value)
            .map(Json)
            .map_err(|e| {
                let field = e.path().to_string();
                let field = if field == "." {
                    "body".to_owned()
                } else {
                    field
                };
                let problem = e.inner().to_string();
                // serde's wording for a value that fits none of several shapes names our
                // Rust types; say it in the API's terms.
                let problem = if problem.contains("did not match any variant") {
                    "does not have any accepted shape (see the API reference)".to_owned()
                } else {
                    problem
                };
                AppError::Unprocessable {
                    message: format!("{field}: {problem}"),
                    details: Some(serde_json::json!({ "field": field, "problem": problem })),
                }
            })
    }
}

/// `application/json`, or any `+json` type, with any parameters.
fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// serde_json's description without its " at line L column C" suffix.
fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// `axum::extract::Path` with our rejection: a field named, never the parser's internals,
/// and U+0000 refused before it can reach a query.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let names: Vec<String> =
            match axum::extract::RawPathParams::from_request_parts(parts, state).await {
                Ok(raw) => {
                    for (key, value) in &raw {
                        crate::core::validate::no_nul(key, value)?;
                    }
                    raw.iter().map(|(k, _)| k.to_owned()).collect()
                }
                Err(_) => vec![],
            };
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rejection) => Err(path_rejection(rejection, &names)),
        }
    }
}

fn uuid_or_form(parser_message: &str) -> &'static str {
    if parser_message.to_ascii_lowercase().contains("uuid") {
        "must be a UUID"
    } else {
        "has the wrong form"
    }
}

/// Names the parameter and the rule, e.g. `id: must be a UUID`.
fn path_rejection(
    rejection: axum::extract::rejection::PathRejection,
    names: &[String],
) -> AppError {
    use axum::extract::path::ErrorKind;
    use axum::extract::rejection::PathRejection;
    let PathRejection::FailedToDeserializePathParams(e) = &rejection else {
        return AppError::validation("invalid path");
    };
    let rule = |expected_type: &str| {
        if expected_type.contains("Uuid") {
            "must be a UUID".to_owned()
        } else if expected_type.starts_with('i') || expected_type.starts_with('u') {
            "must be an integer".to_owned()
        } else {
            "has the wrong form".to_owned()
        }
    };
    let only = || {
        names
            .first()
            .map(String::as_str)
            .filter(|_| names.len() == 1)
    };
    match e.kind() {
        ErrorKind::ParseErrorAtKey {
            key, expected_type, ..
        } => AppError::invalid_field(key, rule(expected_type)),
        ErrorKind::ParseErrorAtIndex {
            index,
            expected_type,
            ..
        } => AppError::invalid_field(
            names.get(*index).map(String::as_str).unwrap_or("path"),
            rule(expected_type),
        ),
        ErrorKind::ParseError { expected_type, .. } => {
            AppError::invalid_field(only().unwrap_or("path"), rule(expected_type))
        }
        ErrorKind::InvalidUtf8InPathParam { key } => {
            AppError::invalid_field(key, "must be valid UTF-8")
        }
        // Types with their own parser (UUIDs) report through a message.
        ErrorKind::DeserializeError { key, message, .. } => {
            AppError::invalid_field(key, uuid_or_form(message))
        }
        ErrorKind::Message(m) => AppError::invalid_field(only().unwrap_or("path"), uuid_or_form(m)),
        _ => AppError::validation("invalid path parameter"),
    }
}

/// `axum::extract::Query` with our rejection (the field and the rule), U+0000 refused.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            crate::core::validate::no_nul(&key, &key)?;
            crate::core::validate::no_nul(&key, &value)?;
        }
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|e| {
                let field = e.path().to_string();
                let problem = e.inner().to_string();
                if field == "." {
                    AppError::validation(format!("query: {problem}"))
                } else {
                    AppError::invalid_field(&field, problem)
                }
            })
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
            let refused = state.limiter.refused(&e);
            let mut response = e.into_response();
            refused.write(response.headers_mut());
            return response;
        }
    };
    if let Err(e) = crate::core::profiles::remember_claims(&state, &principal).await {
        return e.into_response();
    }
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    allowance.write(response.headers_mut());
    response
}

/// The REST API with its OpenAPI description.
pub fn api(state: AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (api, spec) = OpenApiRouter::with_openapi(openapi::base())
        .merge(conversations::router())
        .merge(participants::router())
        .merge(messages::router())
        .merge(insights::router())
        .merge(hooks::router())
        .merge(transfer::router())
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
pub(crate) async fn deadline(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
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

/// Known routes called with a method they do not serve, likewise.
pub async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

/// Browsers send `Origin` on WebSocket upgrades and Socket.IO polls, and CORS does not
/// protect either: with an explicit `CORS_ALLOWED_ORIGINS`, both are refused from any other
/// origin (contract §3), like every other cross-origin request.
pub async fn realtime_origin_guard(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let realtime = path == "/ws" || path == "/ws/" || path.starts_with("/socket.io");
    if realtime
        && let Some(origin) = request.headers().get(axum::http::header::ORIGIN)
        && !state.config.origin_allowed(origin.as_bytes())
    {
        return AppError::Forbidden(format!(
            "origin {} is not in CORS_ALLOWED_ORIGINS",
            String::from_utf8_lossy(origin.as_bytes())
        ))
        .into_response();
    }
    next.run(request).await
}

/// Accepts a trailing slash on every API route (and the seed systems' routes) by
/// trimming it before routing. Not on `/socket.io/` and `/docs/`, which want theirs.
pub fn trim_trailing_slash(mut request: Request) -> Request {
    let path = request.uri().path();
    let keeps_its_slash = path.starts_with("/socket.io") || path.starts_with("/docs");
    if path.len() > 1 && path.ends_with('/') && !keeps_its_slash {
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
