//! `/conversations`: create, list, read, update, delete, archive/restore, pin/unpin.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiResult, Auth, Json, Path, Query, ok, ok_with};
use crate::{
    core::{
        Page,
        conversations::{
            self, Conversation, CreateConversation, ListConversations, UpdateConversation,
        },
    },
    error::{AppResult, ErrorBody},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    super::openapi::documented(
        OpenApiRouter::new()
            .routes(routes!(create, list))
            .routes(routes!(get, update, delete))
            .routes(routes!(archive))
            .routes(routes!(restore))
            .routes(routes!(pin))
            .routes(routes!(unpin)),
    )
}

#[derive(Clone, Serialize, ToSchema)]
pub struct CreatedData {
    #[serde(flatten)]
    conversation: Conversation,
    /// `false` when the platform id already existed (get-or-create).
    is_new: bool,
}

/// Create envelope: `data`, plus `conversation_id` and `conversation`.
#[derive(Serialize, ToSchema)]
pub struct CreatedEnvelope {
    success: bool,
    data: CreatedData,
    conversation_id: Uuid,
    /// The same object as `data`.
    conversation: CreatedData,
    message: String,
}

/// Create a conversation, or return the one with the same (`platform`, `platform_conversation_id`).
#[utoipa::path(post, path = "/api/v1/communication/conversations", tag = "conversations",
    request_body(content = CreateConversation, example = json!({
        "name": "Support chat",
        "description": "Questions about an order",
        "platform": "websocket",
        "participants": ["support-agent"],
        "metadata": { "order": "A-1001" },
        "tags": ["support"]
    })),
    responses(
        (status = 201, description = "created", body = CreatedEnvelope),
        (status = 200, description = "existing conversation returned", body = CreatedEnvelope),
        (status = 403, description = "FORBIDDEN: the platform id belongs to a conversation you are \
            not in, or `creator_id` names someone else and you are not a service or admin",
            body = ErrorBody),
        (status = 409, description = "CONVERSATION_ID_TAKEN: `conversation_id`, or the platform id it \
            implies, belongs to another conversation (a retry by the same creator returns 200)",
            body = ErrorBody)),
    security(("bearer" = [])))]
async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Json(input): Json<CreateConversation>,
) -> AppResult<Response> {
    let created = conversations::create(&state, &principal, input).await?;
    let status = if created.is_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let data = CreatedData {
        conversation: created.conversation,
        is_new: created.is_new,
    };
    let body = CreatedEnvelope {
        success: true,
        conversation_id: data.conversation.id,
        conversation: data.clone(),
        data,
        message: if created.is_new {
            "conversation created"
        } else {
            "conversation already exists"
        }
        .into(),
    };
    Ok((status, axum::Json(body)).into_response())
}

/// List the caller's conversations, newest activity first.
#[utoipa::path(get, path = "/api/v1/communication/conversations", tag = "conversations",
    params(ListConversations),
    responses((status = 200, body = inline(super::Envelope<Page<Conversation>>)),
        (status = 403, description = "FORBIDDEN: `participant_id` names someone else and you are not a service or admin", body = ErrorBody)),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Query(query): Query<ListConversations>,
) -> ApiResult<Page<Conversation>> {
    ok(
        StatusCode::OK,
        conversations::list(&state, &principal, query).await?,
    )
}

/// One conversation.
#[utoipa::path(get, path = "/api/v1/communication/conversations/{id}", tag = "conversations",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(super::Envelope<Conversation>))),
    security(("bearer" = [])))]
async fn get(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Conversation> {
    ok(
        StatusCode::OK,
        conversations::get(&state, &principal, id).await?,
    )
}

/// Update name, description, metadata, tags, platform metadata (owner, admin, service).
#[utoipa::path(put, path = "/api/v1/communication/conversations/{id}", tag = "conversations",
    params(("id" = Uuid, Path)), request_body = UpdateConversation,
    responses((status = 200, body = inline(super::Envelope<Conversation>)),
        (status = 403, description = "FORBIDDEN: only the owner, an admin or a service may update it", body = ErrorBody)),
    security(("bearer" = [])))]
async fn update(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    Json(input): Json<UpdateConversation>,
) -> ApiResult<Conversation> {
    let c = conversations::update(&state, &principal, id, input).await?;
    ok_with(StatusCode::OK, c, "conversation updated")
}

/// Delete with all messages (owner, admin, service).
#[utoipa::path(delete, path = "/api/v1/communication/conversations/{id}", tag = "conversations",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(super::Envelope<serde_json::Value>)),
        (status = 403, description = "FORBIDDEN: only the owner, an admin or a service may delete it", body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<serde_json::Value> {
    conversations::delete(&state, &principal, id).await?;
    ok_with(
        StatusCode::OK,
        serde_json::json!({ "id": id, "deleted": true }),
        "conversation deleted",
    )
}

/// Archive: no new messages until restored (409 `CONVERSATION_ARCHIVED`).
#[utoipa::path(post, path = "/api/v1/communication/conversations/{id}/archive", tag = "conversations",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(super::Envelope<Conversation>)),
        (status = 403, description = "FORBIDDEN: only the owner, an admin or a service may archive it", body = ErrorBody)),
    security(("bearer" = [])))]
async fn archive(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Conversation> {
    let c = conversations::set_archived(&state, &principal, id, true).await?;
    ok_with(StatusCode::OK, c, "conversation archived")
}

/// Restore an archived conversation.
#[utoipa::path(post, path = "/api/v1/communication/conversations/{id}/restore", tag = "conversations",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(super::Envelope<Conversation>)),
        (status = 403, description = "FORBIDDEN: only the owner, an admin or a service may restore it", body = ErrorBody)),
    security(("bearer" = [])))]
async fn restore(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Conversation> {
    let c = conversations::set_archived(&state, &principal, id, false).await?;
    ok_with(StatusCode::OK, c, "conversation restored")
}

/// Pin for the caller.
#[utoipa::path(post, path = "/api/v1/communication/conversations/{id}/pin", tag = "conversations",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(super::Envelope<Conversation>)),
        (status = 403, description = "FORBIDDEN: only participants may pin", body = ErrorBody)),
    security(("bearer" = [])))]
async fn pin(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Conversation> {
    ok(
        StatusCode::OK,
        conversations::set_pinned(&state, &principal, id, true).await?,
    )
}

/// Unpin for the caller.
#[utoipa::path(post, path = "/api/v1/communication/conversations/{id}/unpin", tag = "conversations",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(super::Envelope<Conversation>)),
        (status = 403, description = "FORBIDDEN: only participants may unpin", body = ErrorBody)),
    security(("bearer" = [])))]
async fn unpin(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Conversation> {
    ok(
        StatusCode::OK,
        conversations::set_pinned(&state, &principal, id, false).await?,
    )
}
