//! The conversations CRUD API (seed 003), the localStorage replacement: whole
//! conversations with their `messages` arrays, `userId` in the body or query, epoch
//! milliseconds. A `messages` array is also how localStorage data migrates: what is not
//! yet stored is appended with its timestamps; an array that rewrites stored history is
//! a 409 naming the first differing index.

use axum::{
    Json as Reply, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Caller, Dialect, Fail, Routes, accept};
use crate::{
    auth::Principal,
    core::{
        conversations::{
            self, Conversation, CreateConversation, ListConversations, ParticipantSpec,
            UpdateConversation,
        },
        messages::Message,
        participants::NewParticipant,
        transfer::{self, TranscriptEntry, Voices},
        validate,
    },
    error::AppError,
    http::{Json, Query},
    state::AppState,
};

pub struct Crud;

fn request_id() -> Value {
    json!(crate::telemetry::current_request_id())
}

impl Dialect for Crud {
    fn render(e: &AppError) -> Response {
        let (status, kind, code) = match e {
            AppError::Validation { .. } | AppError::Unprocessable { .. } => (
                StatusCode::BAD_REQUEST,
                "Validation Error",
                "VALIDATION_ERROR",
            ),
            AppError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized", "UNAUTHORIZED"),
            AppError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "Permission Denied",
                "PERMISSION_DENIED",
            ),
            AppError::NotFound(_) | AppError::MethodNotAllowed => {
                (StatusCode::NOT_FOUND, "Not Found", "NOT_FOUND")
            }
            AppError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Rate Limit Exceeded",
                "RATE_LIMITED",
            ),
            AppError::Conflict { .. } | AppError::HistoryDiffers { .. } => {
                (StatusCode::CONFLICT, "Conflict", e.code())
            }
            AppError::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
                "PAYLOAD_TOO_LARGE",
            ),
            AppError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Database Error",
                "DATABASE_ERROR",
            ),
            AppError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                "INTERNAL_ERROR",
            ),
        };
        let body = json!({
            "error": kind,
            "message": e.to_string(),
            "code": code,
            "requestId": request_id(),
            "context": e.details().unwrap_or_else(|| json!({})),
        });
        (status, Reply(body)).into_response()
    }
}

type Result<T> = std::result::Result<T, Fail<Crud>>;

pub const ROUTES: Routes = &[
    ("GET", "/api/conversations"),
    ("POST", "/api/conversations"),
    ("PUT", "/api/conversations"),
    ("DELETE", "/api/conversations"),
];

/// Conversations one list returns at most (newest activity first).
const MAX_LISTED: usize = 1000;

/// The seed's limit: requests per user per minute.
const PER_MINUTE: u32 = 100;

pub fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new().route(
        "/api/conversations",
        get(list).post(create).put(update).delete(remove),
    );
    super::guarded::<Crud>(state, Some(PER_MINUTE), routes)
}

/// `userId` is required and must be the caller; a service or admin may name anyone and
/// then acts as that user (their pins, their access).
fn user_id(me: &Principal, user_id: Option<&str>) -> Result<Principal> {
    let Some(id) = user_id.filter(|u| !u.is_empty()) else {
        return Err(AppError::invalid_field("userId", "Missing or invalid userId").into());
    };
    validate::id("userId", id)?;
    if id == me.id {
        return Ok(me.clone());
    }
    if !me.is_privileged() {
        return Err(AppError::Forbidden("userId must be your own id".into()).into());
    }
    Ok(Principal {
        id: id.to_owned(),
        name: None,
        kind: crate::auth::PrincipalKind::User,
        admin: false,
        owner: None,
        handle: None,
        picture: None,
    })
}

/// Which conversation a PUT or DELETE names: `conversationId` (or `id`), ours or the
/// client's own id it was created with.
fn conversation_id(user: &str, w: &Write) -> Result<Uuid> {
    match w.conversation_id.as_ref().or(w.id.as_ref()) {
        None | Some(Value::Null) => {
            Err(AppError::invalid_field("conversationId", "Missing conversationId").into())
        }
        Some(Value::String(s)) if !s.is_empty() => {
            validate::id("conversationId", s)?;
            Ok(s.parse().unwrap_or_else(|_| migrated_id(user, s)))
        }
        Some(Value::Number(n)) => Ok(migrated_id(user, &n.to_string())),
        Some(_) => Err(AppError::invalid_field("conversationId", "must be a string").into()),
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// What this API stores in a conversation's metadata: `{crud: {agentId, mode}}`.
fn crud_field<'a>(c: &'a Conversation, field: &str) -> Option<&'a Value> {
    c.metadata.get("crud").and_then(|m| m.get(field))
}

fn shape(c: &Conversation, log: &[Message]) -> Value {
    let messages: Vec<Value> = log
        .iter()
        .map(|m| {
            json!({ "role": transfer::role_of(m), "content": m.text,
                    "timestamp": millis(m.created_at) })
        })
        .collect();
    json!({
        "id": c.id,
        "title": c.name.clone().unwrap_or_default(),
        "messages": messages,
        "createdAt": millis(c.created_at),
        "updatedAt": millis(c.updated_at.max(c.last_message_at.unwrap_or(c.updated_at))),
        "isPinned": c.is_pinned,
        "userId": c.created_by,
        "agentId": crud_field(c, "agentId").cloned().unwrap_or(Value::Null),
        "mode": crud_field(c, "mode").cloned().unwrap_or(Value::Null),
    })
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(rename = "userId", alias = "user_id")]
    user_id: Option<String>,
}

/// `GET /api/conversations?userId=`: all of the user's conversations, newest activity first.
async fn list(
    State(state): State<AppState>,
    Caller(me, _): Caller<Crud>,
    query: std::result::Result<Query<ListParams>, AppError>,
) -> Result<Response> {
    let Query(q) = accept(query)?;
    let me = user_id(&me, q.user_id.as_deref())?;
    let mut all = Vec::new();
    loop {
        let page = conversations::list(
            &state,
            &me,
            ListConversations {
                participant_id: Some(me.id.clone()),
                include_archived: Some(true),
                limit: Some(100),
                offset: Some(all.len() as i64),
                ..Default::default()
            },
        )
        .await?;
        let more = page.has_more && !page.items.is_empty();
        all.extend(page.items);
        if !more || all.len() >= MAX_LISTED {
            break;
        }
    }
    let ids: Vec<Uuid> = all.iter().map(|c| c.id).collect();
    let logs = transfer::visible_logs(&state.db, &ids)
        .await
        .map_err(Fail::from)?;
    let conversations: Vec<Value> = all
        .iter()
        .map(|c| shape(c, logs.get(&c.id).map_or(&[][..], Vec::as_slice)))
        .collect();
    Ok(Reply(json!({
        "success": true,
        "conversations": conversations,
        "count": conversations.len(),
        "requestId": request_id(),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct Write {
    #[serde(rename = "userId", alias = "user_id")]
    user_id: Option<String>,
    /// Update/delete: which conversation (ours, or the client's own id it was created with).
    #[serde(rename = "conversationId")]
    conversation_id: Option<Value>,
    /// Create: the client's own id for the conversation (a localStorage id), so a
    /// migration re-run finds the same conversation. Update/delete: as `conversationId`.
    id: Option<Value>,
    title: Option<String>,
    messages: Option<Vec<Value>>,
    #[serde(rename = "agentId")]
    agent_id: Option<String>,
    mode: Option<String>,
    #[serde(rename = "isPinned")]
    is_pinned: Option<bool>,
}

/// Reads a `messages` array: `{role, content, timestamp}` with the timestamp in epoch
/// milliseconds (or an ISO 8601 string, as `new Date().toISOString()` writes it).
fn transcript(messages: Vec<Value>) -> Result<Vec<TranscriptEntry>> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |f: &str| format!("messages[{i}].{f}");
            let role = match m.get("role") {
                Some(Value::String(r)) => r.clone(),
                _ => return Err(AppError::invalid_field(&field("role"), "must be a string").into()),
            };
            let content = match m.get("content") {
                Some(Value::String(c)) => c.clone(),
                _ => {
                    return Err(
                        AppError::invalid_field(&field("content"), "must be a string").into(),
                    );
                }
            };
            let timestamp = match m.get("timestamp") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(
                    n.as_i64()
                        .or_else(|| {
                            n.as_f64()
                                .filter(|f| f.is_finite() && f.abs() < 9e15)
                                .map(|f| f.floor() as i64)
                        })
                        .ok_or_else(|| {
                            AppError::invalid_field(
                                &field("timestamp"),
                                "must be epoch milliseconds",
                            )
                        })?,
                ),
                Some(Value::String(s)) => Some(
                    DateTime::parse_from_rfc3339(s)
                        .map(|t| t.timestamp_millis())
                        .or_else(|_| s.parse::<i64>())
                        .map_err(|_| {
                            AppError::invalid_field(
                                &field("timestamp"),
                                "must be epoch milliseconds or an ISO 8601 time",
                            )
                        })?,
                ),
                Some(_) => {
                    return Err(AppError::invalid_field(
                        &field("timestamp"),
                        "must be epoch milliseconds",
                    )
                    .into());
                }
            };
            Ok(TranscriptEntry {
                role,
                content,
                timestamp,
            })
        })
        .collect()
}

/// The conversation id a client's own (localStorage) id maps to, per user: the same
/// user re-sending the same id finds the same conversation; no one else can reach it.
fn migrated_id(user: &str, client_id: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_52c4_8a0e_4b8e_9c1f_0c0d_2a3b_003c);
    Uuid::new_v5(&NAMESPACE, format!("{user}\u{0}{client_id}").as_bytes())
}

fn check_extras(w: &Write) -> Result<()> {
    if let Some(a) = &w.agent_id {
        validate::id("agentId", a)?;
    }
    if let Some(m) = &w.mode {
        validate::id("mode", m)?;
        validate::max_chars("mode", m, 64)?;
    }
    Ok(())
}

/// The voices of a conversation's transcript: its user, and its agent (`assistant`).
fn voices_of<'a>(user: &'a str, agent: Option<&'a str>) -> Voices<'a> {
    Voices {
        user,
        assistant: agent.unwrap_or(transfer::ASSISTANT),
    }
}

/// `POST /api/conversations`: creates (or, re-sent with the same client `id`, finds) a
/// conversation and appends the `messages` not yet stored.
async fn create(
    State(state): State<AppState>,
    Caller(me, _): Caller<Crud>,
    body: std::result::Result<Json<Write>, AppError>,
) -> Result<Response> {
    let Json(body) = accept(body)?;
    let (me, entries) = prepare(&me, &body)?;
    let user = me.id.clone();
    let chosen = match &body.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => {
            validate::id("id", s)?;
            Some(migrated_id(&user, s))
        }
        Some(Value::Number(n)) => Some(migrated_id(&user, &n.to_string())),
        Some(_) => return Err(AppError::invalid_field("id", "must be a string").into()),
    };
    let participants = body
        .agent_id
        .iter()
        .map(|a| {
            ParticipantSpec::Full(NewParticipant {
                participant_id: a.clone(),
                participant_type: Some("agent".into()),
                role: None,
                display_name: None,
            })
        })
        .collect();
    let created = conversations::create(
        &state,
        &me,
        CreateConversation {
            conversation_id: chosen,
            migrated: chosen.is_some(),
            name: body.title.clone(),
            participants,
            metadata: Some(json!({ "crud": { "agentId": body.agent_id, "mode": body.mode } })),
            ..Default::default()
        },
    )
    .await?;
    let id = created.conversation.id;
    let agent = crud_field(&created.conversation, "agentId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if !entries.is_empty() {
        transfer::append_transcript(&state, &me, id, entries, voices_of(&user, agent.as_deref()))
            .await?;
    }
    let view = settle(&state, &me, id, body.is_pinned).await?;
    let (status, message) = if created.is_new {
        (StatusCode::CREATED, "Conversation created successfully")
    } else {
        (
            StatusCode::OK,
            "Conversation already exists; new messages were appended",
        )
    };
    Ok((
        status,
        Reply(
            json!({ "success": true, "conversation": view, "message": message,
                      "requestId": request_id() }),
        ),
    )
        .into_response())
}

/// The start of every write: who acts (the caller, or the `userId` a service names) and
/// the `messages`, checked before anything is changed.
fn prepare(caller: &Principal, body: &Write) -> Result<(Principal, Vec<TranscriptEntry>)> {
    let me = user_id(caller, body.user_id.as_deref())?;
    check_extras(body)?;
    let entries = transcript(body.messages.clone().unwrap_or_default())?;
    Ok((me, entries))
}

/// The end of every write: the pin, then the conversation as this API shows it.
async fn settle(state: &AppState, me: &Principal, id: Uuid, pinned: Option<bool>) -> Result<Value> {
    if let Some(pinned) = pinned {
        conversations::set_pinned(state, me, id, pinned).await?;
    }
    let conversation = conversations::get(state, me, id).await?;
    let mut conn = state.db.acquire().await.map_err(AppError::from)?;
    let log = transfer::visible_log(&mut conn, id).await?;
    Ok(shape(&conversation, &log))
}

/// `PUT /api/conversations`: title, pin, mode and agent, and any new `messages`. The
/// messages are checked first: a 409 changes nothing.
async fn update(
    State(state): State<AppState>,
    Caller(me, _): Caller<Crud>,
    body: std::result::Result<Json<Write>, AppError>,
) -> Result<Response> {
    let Json(body) = accept(body)?;
    let (me, entries) = prepare(&me, &body)?;
    let user = me.id.clone();
    let id = conversation_id(&user, &body)?;
    let existing = conversations::get(&state, &me, id).await?;
    // Everything but the pin is the owner's: checked before anything is changed.
    if body.messages.is_some()
        || body.title.is_some()
        || body.mode.is_some()
        || body.agent_id.is_some()
    {
        crate::core::access::Access::load(&state.db, &me, id)
            .await?
            .require_manage("change it")?;
    }
    let agent = body.agent_id.clone().or_else(|| {
        crud_field(&existing, "agentId")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    if body.messages.is_some() {
        transfer::append_transcript(&state, &me, id, entries, voices_of(&user, agent.as_deref()))
            .await?;
    }
    let mut metadata = None;
    if body.mode.is_some() || body.agent_id.is_some() {
        let mut m = existing.metadata.clone();
        let mode = body
            .mode
            .clone()
            .map(Value::String)
            .or_else(|| crud_field(&existing, "mode").cloned());
        if let Some(obj) = m.as_object_mut() {
            obj.insert("crud".into(), json!({ "agentId": agent, "mode": mode }));
        }
        metadata = Some(m);
    }
    if body.title.is_some() || metadata.is_some() {
        conversations::update(
            &state,
            &me,
            id,
            UpdateConversation {
                name: body.title.clone(),
                metadata,
                ..Default::default()
            },
        )
        .await?;
    }
    let view = settle(&state, &me, id, body.is_pinned).await?;
    Ok(Reply(json!({ "success": true, "conversation": view,
                     "message": "Conversation updated successfully", "requestId": request_id() }))
    .into_response())
}

/// `DELETE /api/conversations` with `{userId, conversationId}`.
async fn remove(
    State(state): State<AppState>,
    Caller(me, _): Caller<Crud>,
    body: std::result::Result<Json<Write>, AppError>,
) -> Result<Response> {
    let Json(body) = accept(body)?;
    let me = user_id(&me, body.user_id.as_deref())?;
    let id = conversation_id(&me.id, &body)?;
    conversations::delete(&state, &me, id).await?;
    Ok(Reply(
        json!({ "success": true, "message": "Conversation deleted successfully",
                     "requestId": request_id() }),
    )
    .into_response())
}
