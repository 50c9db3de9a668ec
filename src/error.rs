//! The one error type of every operation, and how each transport reports it.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

pub type AppResult<T> = Result<T, AppError>;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{message}")]
    Validation {
        message: String,
        details: Option<Value>,
    },
    /// Well-formed JSON of the wrong shape (422).
    #[error("{message}")]
    Unprocessable {
        message: String,
        details: Option<Value>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    /// `code` is specific, e.g. `CONVERSATION_ARCHIVED`.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A transcript that would rewrite stored history: `index` is the first entry that
    /// differs from (or is missing against) the stored log.
    #[error("messages[{index}] differs from the stored history; the stored log is append-only")]
    HistoryDiffers { index: usize },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("rate limit exceeded, retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("service temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    pub fn validation(message: impl Into<String>) -> Self {
        Self::Validation {
            message: message.into(),
            details: None,
        }
    }

    pub fn invalid_field(field: &str, problem: impl Into<String>) -> Self {
        let problem = problem.into();
        Self::Validation {
            message: format!("{field}: {problem}"),
            details: Some(json!({ "field": field, "problem": problem })),
        }
    }

    pub fn archived() -> Self {
        Self::Conflict {
            code: "CONVERSATION_ARCHIVED",
            message: "the conversation is archived; restore it before sending".into(),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Validation { .. } => StatusCode::BAD_REQUEST,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } | Self::HistoryDiffers { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation { .. } | Self::Unprocessable { .. } => "VALIDATION_ERROR",
            Self::Unauthorized(_) => "UNAUTHORIZED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict { code, .. } => code,
            Self::HistoryDiffers { .. } => "HISTORY_CONFLICT",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    pub fn details(&self) -> Option<Value> {
        match self {
            Self::Validation { details, .. } | Self::Unprocessable { details, .. } => {
                details.clone()
            }
            Self::RateLimited { retry_after_secs } => {
                Some(json!({ "retry_after_secs": retry_after_secs }))
            }
            Self::HistoryDiffers { index } => Some(json!({ "index": index })),
            _ => None,
        }
    }

    /// Logs server-side failures once; client errors are not worth a log line each.
    fn log(&self) {
        match self {
            Self::Internal(e) => tracing::error!(error = ?e, "internal error"),
            Self::Unavailable(e) => tracing::warn!(error = %e, "dependency unavailable"),
            _ => {}
        }
    }

    /// The body both transports send: REST as the response, sockets as the ack.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            success: false,
            code: self.code(),
            message: self.to_string(),
            request_id: crate::telemetry::current_request_id(),
            details: self.details(),
        }
    }
}

/// Error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// Machine-readable code, e.g. `NOT_FOUND`, `VALIDATION_ERROR`, `CONVERSATION_ARCHIVED`.
    #[schema(value_type = String)]
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.status_code(), axum::Json(self.body())).into_response();
        if let Self::RateLimited { retry_after_secs } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Self::NotFound("resource"),
            // The database (or the path to it) is down or misbehaving: the caller may retry.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e.into()),
            sqlx::Error::Database(db) => {
                // Connection-level failures (admin shutdown, too many connections, …).
                let class = db.code().map(|c| c.chars().take(2).collect::<String>());
                match db.code().as_deref() {
                    // A row this request refers to was deleted meanwhile (a conversation
                    // deleted while someone reacts or adds participants).
                    Some("23503") => return Self::NotFound("resource"),
                    // Concurrent writers: the caller may simply retry.
                    Some("40P01" | "40001") => return Self::Unavailable(e.into()),
                    Some("23505") => {
                        return Self::Conflict {
                            code: "CONFLICT",
                            message: "a concurrent request changed this resource; retry".into(),
                        };
                    }
                    _ => {}
                }
                match class.as_deref() {
                    Some("08" | "53" | "57") => Self::Unavailable(e.into()),
                    // Data exceptions (a value out of range, an untranslatable character):
                    // the input is at fault. Validation refuses these before any query; this
                    // is the net under it, logged so the missing check gets written.
                    Some("22") => {
                        tracing::warn!(error = %e, "a value reached the database that validation should have refused");
                        Self::validation("a value is outside what can be stored")
                    }
                    _ => Self::Internal(e.into()),
                }
            }
            _ => Self::Internal(e.into()),
        }
    }
}

impl From<anyhow::Error> for AppError {
    fn from(e: anyhow::Error) -> Self {
        Self::Internal(e)
    }
}
