//! `/conversations/{id}/participants`.

use axum::{extract::State, http::StatusCode};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiResult, Auth, Envelope, Json, Path, ok, ok_with};
use crate::{
    core::participants::{self, AddParticipants, AddedBatch, NewParticipant, Participant},
    error::ErrorBody,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    super::openapi::documented(
        OpenApiRouter::new()
            .routes(routes!(list, add))
            .routes(routes!(remove))
            .routes(routes!(add_batch)),
    )
}

/// Participants, in joining order.
#[utoipa::path(get, path = "/api/v1/communication/conversations/{id}/participants", tag = "participants",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<Vec<Participant>>))),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Vec<Participant>> {
    ok(
        StatusCode::OK,
        participants::list(&state, &principal, id).await?,
    )
}

/// Add a participant (owner, admin, service): 201 new, 200 already in.
#[utoipa::path(post, path = "/api/v1/communication/conversations/{id}/participants", tag = "participants",
    params(("id" = Uuid, Path)), request_body = NewParticipant,
    responses((status = 201, body = inline(Envelope<Participant>)), (status = 200, body = inline(Envelope<Participant>)),
        (status = 403, description = "FORBIDDEN: only the owner, an admin or a service may add participants", body = ErrorBody)),
    security(("bearer" = [])))]
async fn add(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    Json(input): Json<NewParticipant>,
) -> ApiResult<Participant> {
    let added = participants::add(&state, &principal, id, input).await?;
    if added.is_new {
        ok_with(StatusCode::CREATED, added.participant, "participant added")
    } else {
        ok_with(StatusCode::OK, added.participant, "already a participant")
    }
}

/// Remove a participant (owner, admin, service, or oneself).
#[utoipa::path(delete, path = "/api/v1/communication/conversations/{id}/participants/{participant_id}",
    tag = "participants", params(("id" = Uuid, Path), ("participant_id" = String, Path)),
    responses((status = 200, body = inline(Envelope<serde_json::Value>)),
        (status = 403, description = "FORBIDDEN: only the owner, an admin or a service may remove someone else", body = ErrorBody)),
    security(("bearer" = [])))]
async fn remove(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((id, participant_id)): Path<(Uuid, String)>,
) -> ApiResult<serde_json::Value> {
    participants::remove(&state, &principal, id, &participant_id).await?;
    ok_with(
        StatusCode::OK,
        serde_json::json!({ "conversation_id": id, "participant_id": participant_id }),
        "participant removed",
    )
}

/// Add up to 500 participants at once (owner, admin, service); repeat for larger
/// conversations (at least 10,000 participants are supported).
#[utoipa::path(post, path = "/api/v1/communication/conversations/{id}/participants/batch", tag = "participants",
    params(("id" = Uuid, Path)), request_body = AddParticipants,
    responses((status = 200, body = inline(Envelope<AddedBatch>)),
        (status = 403, description = "FORBIDDEN: only the owner, an admin or a service may add participants", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such conversation, or not yours to see", body = ErrorBody)),
    security(("bearer" = [])))]
async fn add_batch(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    Json(input): Json<AddParticipants>,
) -> ApiResult<AddedBatch> {
    ok(
        StatusCode::OK,
        participants::add_many(&state, &principal, id, input).await?,
    )
}
