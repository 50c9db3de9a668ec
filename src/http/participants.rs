//! `/conversations/{id}/participants`.

use axum::{extract::State, http::StatusCode};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiResult, Auth, Envelope, Json, Path, ok, ok_with};
use crate::{
    core::participants::{self, AddOutcome, AddRequest, Participant},
    error::ErrorBody,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    super::openapi::documented(
        OpenApiRouter::new()
            .routes(routes!(list, add))
            .routes(routes!(remove)),
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

/// Add a participant (owner, admin, service): 201 new, 200 already in. Or a batch:
/// `{participants: [...]}` (1–500; ids already in are left as they are) answers 200 with
/// `{added, already_present}`; larger conversations grow batch by batch.
#[utoipa::path(post, path = "/api/v1/communication/conversations/{id}/participants", tag = "participants",
    params(("id" = Uuid, Path)), request_body = AddRequest,
    responses((status = 201, body = inline(Envelope<Participant>)), (status = 200, body = inline(Envelope<AddOutcome>)),
        (status = 403, description = "FORBIDDEN: only the owner, an admin or a service may add participants", body = ErrorBody)),
    security(("bearer" = [])))]
async fn add(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    Json(input): Json<AddRequest>,
) -> ApiResult<AddOutcome> {
    match input {
        AddRequest::One(one) => {
            let added = participants::add(&state, &principal, id, one).await?;
            let (status, message) = if added.is_new {
                (StatusCode::CREATED, "participant added")
            } else {
                (StatusCode::OK, "already a participant")
            };
            ok_with(status, AddOutcome::One(added.participant), message)
        }
        AddRequest::Many(many) => ok(
            StatusCode::OK,
            AddOutcome::Many(participants::add_many(&state, &principal, id, many).await?),
        ),
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
