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
    error::ErrorBody,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(history, send))
        .routes(routes!(mark_read))
        .routes(routes!(get, edit, delete))
        .routes(routes!(add_reaction))
        .routes(routes!(remove_reaction))
}

/// History page; items oldest→newest within the page.
#[utoipa::path(get, path = "/api/v1/communication/messages/conversations/{id}", tag = "messages",
    params(("id" = Uuid, Path), HistoryQuery),
    responses((status = 200, body = inline(Envelope<Page<Message>>)),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
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
    params(("id" = Uuid, Path)), request_body = SendMessage,
    responses((status = 201, body = inline(Envelope<Message>)), (status = 200, body = inline(Envelope<Message>)),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "CONVERSATION_ARCHIVED", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)),
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
    params(("id" = Uuid, Path)), request_body(content = MarkRead, description = "optional"),
    responses((status = 200, body = inline(Envelope<ReadState>)),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn mark_read(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> ApiResult<ReadState> {
    // The body is optional: none (or `{}`) marks everything read.
    let input: MarkRead = if body.iter().all(u8::is_ascii_whitespace) {
        MarkRead::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| crate::error::AppError::validation(format!("invalid JSON body: {e}")))?
    };
    ok(
        StatusCode::OK,
        reads::mark_read(&state, &principal, id, input, Default::default()).await?,
    )
}

/// One message.
#[utoipa::path(get, path = "/api/v1/communication/messages/{message_id}", tag = "messages",
    params(("message_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<Message>)), (status = 404, body = ErrorBody)),
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
    responses((status = 200, body = inline(Envelope<Message>)), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
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
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
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
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
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
    params(("message_id" = Uuid, Path), ("emoji" = String, Path)),
    responses((status = 200, body = inline(Envelope<Message>)), (status = 404, body = ErrorBody)),
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
