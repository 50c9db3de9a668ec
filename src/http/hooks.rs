//! `/webhooks` and `/agents/{agent_id}/responder` (contract §8).

use axum::{extract::State, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiResult, Auth, Envelope, Json, Path, Query, ok, ok_with};
use crate::{
    core::{
        responders::{self, Responder, SetResponder},
        webhooks::{
            self, Delivery, ListDeliveries, NewWebhook, UpdateWebhook, Webhook, WebhookWithSecret,
        },
    },
    error::ErrorBody,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    super::openapi::documented(
        OpenApiRouter::new()
            .routes(routes!(create_webhook, list_webhooks))
            .routes(routes!(get_webhook, update_webhook, delete_webhook))
            .routes(routes!(rotate_secret))
            .routes(routes!(list_deliveries))
            .routes(routes!(replay_delivery))
            .routes(routes!(set_responder, get_responder, delete_responder)),
    )
}

/// Nothing to return.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: bool,
}

/// Register an endpoint (admin, service; or for `agent_id`: the agent or its owner). The
/// answer holds the signing `secret`, shown only here and on rotation.
#[utoipa::path(post, path = "/api/v1/communication/webhooks", tag = "webhooks",
    request_body = NewWebhook,
    responses((status = 201, body = inline(Envelope<WebhookWithSecret>)),
        (status = 403, description = "FORBIDDEN: not an admin, a service, or the agent's owner", body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_webhook(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Json(input): Json<NewWebhook>,
) -> ApiResult<WebhookWithSecret> {
    ok(
        StatusCode::CREATED,
        webhooks::create(&state, &principal, input).await?,
    )
}

/// The caller's endpoints (admins and services: every endpoint).
#[utoipa::path(get, path = "/api/v1/communication/webhooks", tag = "webhooks",
    responses((status = 200, body = inline(Envelope<Vec<Webhook>>))),
    security(("bearer" = [])))]
async fn list_webhooks(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> ApiResult<Vec<Webhook>> {
    ok(StatusCode::OK, webhooks::list(&state, &principal).await?)
}

#[utoipa::path(get, path = "/api/v1/communication/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<Webhook>))),
    security(("bearer" = [])))]
async fn get_webhook(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Webhook> {
    ok(StatusCode::OK, webhooks::get(&state, &principal, id).await?)
}

/// Change the URL, event types, description, or pause (`active: false`) and resume.
#[utoipa::path(patch, path = "/api/v1/communication/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path)), request_body = UpdateWebhook,
    responses((status = 200, body = inline(Envelope<Webhook>))),
    security(("bearer" = [])))]
async fn update_webhook(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    Json(input): Json<UpdateWebhook>,
) -> ApiResult<Webhook> {
    ok(
        StatusCode::OK,
        webhooks::update(&state, &principal, id, input).await?,
    )
}

/// Delete the endpoint and everything still queued for it.
#[utoipa::path(delete, path = "/api/v1/communication/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<Deleted>))),
    security(("bearer" = [])))]
async fn delete_webhook(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Deleted> {
    webhooks::delete(&state, &principal, id).await?;
    ok(StatusCode::OK, Deleted { deleted: true })
}

/// A new signing secret, effective at once (the old one stops signing).
#[utoipa::path(post, path = "/api/v1/communication/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<WebhookWithSecret>))),
    security(("bearer" = [])))]
async fn rotate_secret(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<WebhookWithSecret> {
    ok(
        StatusCode::OK,
        webhooks::rotate_secret(&state, &principal, id).await?,
    )
}

/// Deliveries not yet made: `pending` (waiting or retrying) and `dead` letters.
#[utoipa::path(get, path = "/api/v1/communication/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path), ListDeliveries),
    responses((status = 200, body = inline(Envelope<Vec<Delivery>>))),
    security(("bearer" = [])))]
async fn list_deliveries(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    Query(query): Query<ListDeliveries>,
) -> ApiResult<Vec<Delivery>> {
    ok(
        StatusCode::OK,
        webhooks::deliveries(&state, &principal, id, query).await?,
    )
}

/// Send a dead letter again now (same delivery id), in its place in the queue.
#[utoipa::path(post, path = "/api/v1/communication/webhooks/{id}/deliveries/{delivery_id}/replay", tag = "webhooks",
    params(("id" = Uuid, Path), ("delivery_id" = Uuid, Path)),
    responses((status = 202, body = inline(Envelope<Delivery>)),
        (status = 409, description = "DELIVERY_PENDING: it is not a dead letter", body = ErrorBody)),
    security(("bearer" = [])))]
async fn replay_delivery(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((id, delivery_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Delivery> {
    ok_with(
        StatusCode::ACCEPTED,
        webhooks::replay(&state, &principal, id, delivery_id).await?,
        "queued for delivery",
    )
}

/// Configure the agent to answer by itself through an OpenAI-compatible endpoint (the
/// agent, its owner, an admin or a service). 201 new, 200 replaced.
#[utoipa::path(put, path = "/api/v1/communication/agents/{agent_id}/responder", tag = "webhooks",
    params(("agent_id" = String, Path)), request_body = SetResponder,
    responses((status = 200, body = inline(Envelope<Responder>)), (status = 201, body = inline(Envelope<Responder>)),
        (status = 403, description = "FORBIDDEN: not the agent, its owner, an admin or a service", body = ErrorBody)),
    security(("bearer" = [])))]
async fn set_responder(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(agent_id): Path<String>,
    Json(input): Json<SetResponder>,
) -> ApiResult<Responder> {
    let (responder, is_new) = responders::set(&state, &principal, &agent_id, input).await?;
    ok(
        if is_new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        responder,
    )
}

#[utoipa::path(get, path = "/api/v1/communication/agents/{agent_id}/responder", tag = "webhooks",
    params(("agent_id" = String, Path)),
    responses((status = 200, body = inline(Envelope<Responder>)), (status = 403, description = "FORBIDDEN: not the agent, its owner, an admin or a service", body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_responder(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(agent_id): Path<String>,
) -> ApiResult<Responder> {
    ok(
        StatusCode::OK,
        responders::get(&state, &principal, &agent_id).await?,
    )
}

#[utoipa::path(delete, path = "/api/v1/communication/agents/{agent_id}/responder", tag = "webhooks",
    params(("agent_id" = String, Path)),
    responses((status = 200, body = inline(Envelope<Deleted>)), (status = 403, description = "FORBIDDEN: not the agent, its owner, an admin or a service", body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_responder(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(agent_id): Path<String>,
) -> ApiResult<Deleted> {
    responders::delete(&state, &principal, &agent_id).await?;
    ok(StatusCode::OK, Deleted { deleted: true })
}
