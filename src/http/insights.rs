//! Search, the unread inbox and agent registration.

use axum::{extract::State, http::StatusCode};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiResult, Auth, Envelope, Json, Path, Query, ok};
use crate::{
    core::{
        Page,
        analytics::{self, Analytics, AnalyticsQuery},
        conversations::{Conversation, ListConversations},
        insights::{self, Agent, Inbox, RegisterAgent, SearchHit, SearchQuery},
        summary::{self, Summary},
    },
    error::ErrorBody,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    super::openapi::documented(
        OpenApiRouter::new()
            .routes(routes!(search))
            .routes(routes!(unread))
            .routes(routes!(register_agent))
            .routes(routes!(agent_conversations))
            .routes(routes!(conversation_summary))
            .routes(routes!(conversation_analytics)),
    )
}

/// A summary of the conversation's newest messages, cached until the conversation changes.
#[utoipa::path(get, path = "/api/v1/communication/conversations/{id}/summary", tag = "intelligence",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<Summary>))),
    security(("bearer" = [])))]
async fn conversation_summary(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Summary> {
    ok(
        StatusCode::OK,
        summary::summary(&state, &principal, id).await?,
    )
}

/// Message counts, per-participant stats and an activity timeline.
#[utoipa::path(get, path = "/api/v1/communication/conversations/{id}/analytics", tag = "intelligence",
    params(("id" = Uuid, Path), AnalyticsQuery),
    responses((status = 200, body = inline(Envelope<Analytics>))),
    security(("bearer" = [])))]
async fn conversation_analytics(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<Uuid>,
    Query(query): Query<AnalyticsQuery>,
) -> ApiResult<Analytics> {
    ok(
        StatusCode::OK,
        analytics::analytics(&state, &principal, id, query).await?,
    )
}

/// Full-text search over messages the caller may read, best match first.
#[utoipa::path(get, path = "/api/v1/communication/messages/search", tag = "intelligence",
    params(SearchQuery),
    responses((status = 200, body = inline(Envelope<Page<SearchHit>>))),
    security(("bearer" = [])))]
async fn search(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Query(query): Query<SearchQuery>,
) -> ApiResult<Page<SearchHit>> {
    ok(
        StatusCode::OK,
        insights::search(&state, &principal, query).await?,
    )
}

/// The caller's unread messages across conversations.
#[utoipa::path(get, path = "/api/v1/communication/unread", tag = "intelligence",
    responses((status = 200, body = inline(Envelope<Inbox>))),
    security(("bearer" = [])))]
async fn unread(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<Inbox> {
    ok(StatusCode::OK, insights::unread(&state, &principal).await?)
}

/// Record who owns an agent: 201 new, 200 updated. Only a party controlling the agent id
/// may: an admin or a service (any `owner_id`), or the agent itself (its own token).
#[utoipa::path(post, path = "/api/v1/communication/agents", tag = "intelligence",
    request_body = RegisterAgent,
    responses((status = 201, body = inline(Envelope<Agent>)), (status = 200, body = inline(Envelope<Agent>)),
        (status = 403, description = "FORBIDDEN: only the agent itself, an admin or a service may grant ownership of this id", body = ErrorBody)),
    security(("bearer" = [])))]
async fn register_agent(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Json(input): Json<RegisterAgent>,
) -> ApiResult<Agent> {
    let (agent, is_new) = insights::register_agent(&state, &principal, input).await?;
    ok(
        if is_new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        agent,
    )
}

/// The owner's read-only view of every conversation the agent is in.
#[utoipa::path(get, path = "/api/v1/communication/agents/{agent_id}/conversations", tag = "intelligence",
    params(("agent_id" = String, Path), ListConversations),
    responses((status = 200, body = inline(Envelope<Page<Conversation>>))),
    security(("bearer" = [])))]
async fn agent_conversations(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(agent_id): Path<String>,
    Query(query): Query<ListConversations>,
) -> ApiResult<Page<Conversation>> {
    ok(
        StatusCode::OK,
        insights::agent_conversations(&state, &principal, &agent_id, query).await?,
    )
}
