//! `/messages`: history, send, mark read, read/edit/delete one, reactions.

use axum::{extract::State, http::StatusCode};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiResult, Auth, Envelope, Json, Path, Query, ok, ok_with};
use crate::{
    core::{
        Page,
        history::{self, HistoryQuery},
        messages::{self, EditMessage, Message, SendMessage, SendOptions},
        reactions::{self, AddReaction},
        reads::{self, MarkRead, ReadState},
    },
    error::{AppError, AppResult, ErrorBody},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    super::openapi::documented(
        OpenApiRouter::new()
            .routes(routes!(history, send))
            .routes(routes!(mark_read))
            .routes(routes!(get, edit, delete))
            .routes(routes!(add_reaction))
            .routes(routes!(remove_reaction)),
    )
}

/// History page; items oldest→newest within the page.
#[utoipa::path(get, path = "/api/v1/communication/messages/conversations/{id}", tag = "messages",
    params(("id" = Uuid, Path), HistoryQuery),
    responses((status = 200, body = inline(Envelope<Page<Message>>))),
    security(("bearer" = [])))]
async fn history(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Page<Message>> {
    ok(
        StatusCode::OK,
        history::history(&state, &principal, id, query).await?,
    )
}

/// Send: 201 stored; 200 when `client_message_id` repeats (the original is returned).
#[utoipa::path(post, path = "/api/v1/communication/messages/conversations/{id}", tag = "messages",
    params(("id" = Uuid, Path)),
    request_body(content = SendMessage, example = json!({ "text": "Hello!", "client_message_id": "c-1" })),
    responses((status = 201, body = inline(Envelope<Message>)), (status = 200, body = inline(Envelope<Message>)),
        (status = 403, description = "FORBIDDEN: read-only access (agent owner), or `sender_id` names someone else and you are not a service", body = ErrorBody),
        (status = 409, description = "CONVERSATION_ARCHIVED", body = ErrorBody)),
    security(("bearer" = [])))]
async fn send(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    Json(input): Json<SendMessage>,
) -> ApiResult<Message> {
    let started = std::time::Instant::now();
    let options = SendOptions {
        source: Some("api".into()),
        ..Default::default()
    };
    let sent = messages::send(&state, &principal, id, input, options).await?;
    crate::metrics::send_acked("rest", started.elapsed());
    if sent.created {
        ok_with(StatusCode::CREATED, sent.message, "message sent")
    } else {
        ok_with(
            StatusCode::OK,
            sent.message,
            "duplicate client_message_id: original returned",
        )
    }
}

/// Move the read horizon forward (default: to the newest message).
#[utoipa::path(post, path = "/api/v1/communication/messages/conversations/{id}/mark-read", tag = "messages",
    params(("id" = Uuid, Path)), request_body(content = Option<MarkRead>, description = "optional: no body (or `{}`) marks everything read"),
    responses((status = 200, body = inline(Envelope<ReadState>)),
        (status = 403, description = "FORBIDDEN: not a participant, or `user_id` names someone else and you are not a service or admin", body = ErrorBody)),
    security(("bearer" = [])))]
async fn mark_read(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> ApiResult<ReadState> {
    let input = optional_body(&body)?;
    ok(
        StatusCode::OK,
        reads::mark_read(&state, &principal, id, input, Default::default()).await?,
    )
}

/// Reads an optional JSON object body by the request-body policy: nothing, `null` or `{}`
/// is the default; anything else must be an object whose known fields have the right types.
fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> AppResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| AppError::invalid_field("body", format!("not valid JSON ({e})")))?;
    crate::core::validate::untrusted_json(&value)?;
    let unprocessable = |field: String, problem: String| AppError::Unprocessable {
        message: format!("{field}: {problem}"),
        details: Some(serde_json::json!({ "field": field, "problem": problem })),
    };
    match value {
        serde_json::Value::Null => Ok(T::default()),
        serde_json::Value::Object(_) => serde_path_to_error::deserialize(value)
            .map_err(|e| unprocessable(e.path().to_string(), e.inner().to_string())),
        _ => Err(unprocessable("body".into(), "must be a JSON object".into())),
    }
}

/// One message.
#[utoipa::path(get, path = "/api/v1/communication/messages/{message_id}", tag = "messages",
    params(("message_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<Message>))),
    security(("bearer" = [])))]
async fn get(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(message_id): Path<Uuid>,
) -> ApiResult<Message> {
    ok(
        StatusCode::OK,
        messages::get(&state, &principal, message_id).await?,
    )
}

/// Edit the text (author); the previous text is kept in `edit_history`.
#[utoipa::path(patch, path = "/api/v1/communication/messages/{message_id}", tag = "messages",
    params(("message_id" = Uuid, Path)), request_body = EditMessage,
    responses((status = 200, body = inline(Envelope<Message>)),
        (status = 403, description = "FORBIDDEN: only the author may edit a message", body = ErrorBody),
        (status = 409, description = "CONVERSATION_ARCHIVED or MESSAGE_DELETED", body = ErrorBody)),
    security(("bearer" = [])))]
async fn edit(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(message_id): Path<Uuid>,
    Json(input): Json<EditMessage>,
) -> ApiResult<Message> {
    ok_with(
        StatusCode::OK,
        messages::edit(&state, &principal, message_id, input).await?,
        "message edited",
    )
}

/// Soft delete (author, conversation owner, admin).
#[utoipa::path(delete, path = "/api/v1/communication/messages/{message_id}", tag = "messages",
    params(("message_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<Message>)),
        (status = 403, description = "FORBIDDEN: only the author, the owner, an admin or a service may delete it", body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(message_id): Path<Uuid>,
) -> ApiResult<Message> {
    ok_with(
        StatusCode::OK,
        messages::delete(&state, &principal, message_id).await?,
        "message deleted",
    )
}

/// React (once per principal per emoji): 201 added, 200 already there.
#[utoipa::path(post, path = "/api/v1/communication/messages/{message_id}/reactions", tag = "messages",
    params(("message_id" = Uuid, Path)), request_body = AddReaction,
    responses((status = 201, body = inline(Envelope<Message>)), (status = 200, body = inline(Envelope<Message>)),
        (status = 403, description = "FORBIDDEN: read-only access (agent owner)", body = ErrorBody),
        (status = 409, description = "MESSAGE_DELETED", body = ErrorBody)),
    security(("bearer" = [])))]
async fn add_reaction(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(message_id): Path<Uuid>,
    Json(input): Json<AddReaction>,
) -> ApiResult<Message> {
    let (message, added) = reactions::add(&state, &principal, message_id, &input.emoji).await?;
    ok(
        if added {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        message,
    )
}

/// Remove the caller's reaction.
#[utoipa::path(delete, path = "/api/v1/communication/messages/{message_id}/reactions/{emoji}", tag = "messages",
    params(("message_id" = Uuid, Path),
        ("emoji" = String, Path, min_length = 1, max_length = 32,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$")),
    responses((status = 200, body = inline(Envelope<Message>))),
    security(("bearer" = [])))]
async fn remove_reaction(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((message_id, emoji)): Path<(Uuid, String)>,
) -> ApiResult<Message> {
    ok(
        StatusCode::OK,
        reactions::remove(&state, &principal, message_id, &emoji).await?,
    )
}
