//! General Bots (seeds 001 and 004): start a conversation with a bot, send, read history
//! by timestamp cursors, list. Errors are `{error, message}` with the seed's codes; its
//! `/ws` is Colloquy's (`session_id` is the conversation id). A bot is an agent principal.

use axum::{
    Json as Reply, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Caller, Dialect, Fail, Routes, accept};
use crate::{
    core::{
        conversations::{self, CreateConversation, ListConversations, ParticipantSpec},
        history,
        messages::{self, Attachment, SendMessage, SendOptions},
        participants::NewParticipant,
        profiles,
    },
    error::AppError,
    http::{Json, Path, Query},
    state::AppState,
};

pub struct GeneralBots;

impl Dialect for GeneralBots {
    fn render(e: &AppError) -> Response {
        let code = match e {
            AppError::Validation { .. } | AppError::Unprocessable { .. } => "invalid_message",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) | AppError::MethodNotAllowed => "not_found",
            AppError::RateLimited { .. } => "rate_limited",
            AppError::Conflict { .. } | AppError::HistoryDiffers { .. } => "conflict",
            AppError::PayloadTooLarge { .. } => "payload_too_large",
            AppError::Unavailable(_) => "unavailable",
            AppError::Internal(_) => "internal_error",
        };
        // The seed's 400 is `invalid_message` whatever was malformed; so is a 422.
        let status = match e {
            AppError::Unprocessable { .. } => StatusCode::BAD_REQUEST,
            other => other.status_code(),
        };
        (
            status,
            Reply(json!({ "error": code, "message": e.to_string() })),
        )
            .into_response()
    }
}

type Result<T> = std::result::Result<T, Fail<GeneralBots>>;
type Me = Caller<GeneralBots>;

/// Below the prefix.
pub const ROUTES: Routes = &[
    ("POST", "/api/conversations/start"),
    ("POST", "/api/conversations/{id}/messages"),
    ("GET", "/api/conversations/{id}/history"),
    ("GET", "/api/conversations"),
];

/// The seed's limits, per user per minute.
const MESSAGES_PER_MINUTE: u32 = 60;
const HISTORY_PER_MINUTE: u32 = 100;
const LIST_PER_MINUTE: u32 = 30;

pub fn router(state: &AppState) -> Router<AppState> {
    let messages = Router::new()
        .route("/api/conversations/start", post(start))
        .route("/api/conversations/{id}/messages", post(send));
    let history = Router::new().route("/api/conversations/{id}/history", get(history));
    let list = Router::new().route("/api/conversations", get(list));
    Router::new()
        .merge(super::guarded::<GeneralBots>(
            state,
            Some(MESSAGES_PER_MINUTE),
            messages,
        ))
        .merge(super::guarded::<GeneralBots>(
            state,
            Some(HISTORY_PER_MINUTE),
            history,
        ))
        .merge(super::guarded::<GeneralBots>(
            state,
            Some(LIST_PER_MINUTE),
            list,
        ))
}

#[derive(Deserialize)]
struct Start {
    bot_id: String,
    initial_message: Option<String>,
}

/// `POST /api/conversations/start`: a new conversation between the caller and the bot.
async fn start(
    State(state): State<AppState>,
    Caller(me, _): Me,
    body: std::result::Result<Json<Start>, AppError>,
) -> Result<Response> {
    let Json(body) = accept(body)?;
    crate::core::validate::id("bot_id", &body.bot_id)?;
    if body.bot_id == me.id {
        return Err(AppError::invalid_field("bot_id", "must name a bot, not yourself").into());
    }
    // Checked before anything is created, so a refused start leaves nothing behind.
    let initial = body.initial_message.filter(|t| !t.trim().is_empty());
    if let Some(text) = &initial {
        crate::core::validate::text(text, state.config.max_message_chars)?;
    }
    let created = conversations::create(
        &state,
        &me,
        CreateConversation {
            participants: vec![ParticipantSpec::Full(NewParticipant {
                participant_id: body.bot_id.clone(),
                participant_type: Some("agent".into()),
                role: None,
                display_name: None,
            })],
            metadata: Some(json!({ "general_bots": { "bot_id": body.bot_id } })),
            ..Default::default()
        },
    )
    .await?;
    let id = created.conversation.id;
    if let Some(text) = initial {
        let input = SendMessage {
            text,
            ..Default::default()
        };
        let options = SendOptions {
            source: Some(SOURCE.into()),
            ..Default::default()
        };
        messages::send(&state, &me, id, input, options).await?;
    }
    Ok(
        Reply(json!({ "conversation_id": id, "session_id": id, "status": "active" }))
            .into_response(),
    )
}

/// What messages sent here carry as their `source`.
const SOURCE: &str = "general-bots";

#[derive(Deserialize)]
struct Send {
    content: Option<Value>,
    #[serde(default)]
    attachments: Vec<Attachment>,
    client_message_id: Option<String>,
}

/// `POST /api/conversations/{id}/messages`.
async fn send(
    State(state): State<AppState>,
    Caller(me, _): Me,
    path: std::result::Result<Path<String>, AppError>,
    body: std::result::Result<Json<Send>, AppError>,
) -> Result<Response> {
    let Path(id) = accept(path)?;
    let Json(body) = accept(body)?;
    let sent = super::send_content(
        &state,
        &me,
        &id,
        body.content,
        body.attachments,
        body.client_message_id,
        SOURCE,
    )
    .await?;
    Ok(Reply(json!({
        "message_id": sent.message.id,
        "timestamp": sent.message.created_at,
        "status": "delivered",
    }))
    .into_response())
}

#[derive(Deserialize)]
struct HistoryParams {
    limit: Option<i64>,
    before: Option<String>,
    after: Option<String>,
}

/// A timestamp cursor: RFC 3339 (what `timestamp` fields carry) or epoch milliseconds.
fn instant(field: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    v.parse::<i64>()
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(Some)
        .ok_or_else(|| {
            AppError::invalid_field(field, "must be an RFC 3339 timestamp or epoch milliseconds")
                .into()
        })
}

/// `GET /api/conversations/{id}/history?limit&before&after`.
async fn history(
    State(state): State<AppState>,
    Caller(me, _): Me,
    path: std::result::Result<Path<String>, AppError>,
    query: std::result::Result<Query<HistoryParams>, AppError>,
) -> Result<Response> {
    let Path(id) = accept(path)?;
    let Query(q) = accept(query)?;
    let id = super::conversation_id(&id)?;
    let before = instant("before", q.before.as_deref())?;
    let after = instant("after", q.after.as_deref())?;
    let page = history::by_time(&state, &me, id, before, after, q.limit).await?;
    let messages: Vec<Value> = page
        .messages
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "sender": if m.sender_type == "agent" { "bot" } else { "user" },
                "sender_id": m.sender_id,
                "content": m.text,
                "timestamp": m.created_at,
            })
        })
        .collect();
    Ok(Reply(json!({ "messages": messages, "has_more": page.has_more })).into_response())
}

#[derive(Deserialize)]
struct ListParams {
    bot_id: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// `GET /api/conversations?bot_id&status&limit&offset`: the caller's, newest activity first.
async fn list(
    State(state): State<AppState>,
    Caller(me, _): Me,
    query: std::result::Result<Query<ListParams>, AppError>,
) -> Result<Response> {
    let Query(q) = accept(query)?;
    let page = conversations::list(
        &state,
        &me,
        ListConversations {
            participant_id: Some(me.id.clone()),
            with_participant: q.bot_id,
            status: q.status,
            include_archived: Some(true),
            limit: q.limit,
            offset: q.offset,
            ..Default::default()
        },
    )
    .await?;
    let ids: Vec<Uuid> = page.items.iter().map(|c| c.id).collect();
    let bots = profiles::agents_in(&state.db, &ids)
        .await
        .map_err(Fail::from)?;
    let conversations: Vec<Value> = page
        .items
        .iter()
        .map(|c| {
            let bot = bots.get(&c.id);
            json!({
                "id": c.id,
                "bot_id": bot.map(|b| &b.user_id),
                "bot_name": bot.map(|b| &b.display_name),
                "last_message": c.last_message.as_ref().map(|m| &m.text),
                "last_activity": c.last_message_at.unwrap_or(c.updated_at),
                "status": if c.archived_at.is_some() { "archived" } else { "active" },
            })
        })
        .collect();
    Ok(Reply(json!({ "conversations": conversations, "total": page.total })).into_response())
}
