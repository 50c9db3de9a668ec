//! Avee messaging (seed 002): direct conversations between two profiles, or between a
//! user and another profile's agent (an "avee"); one conversation per pair, chat type and
//! agent. Opening a conversation's messages marks it read. Profiles come from token
//! claims. Errors are FastAPI's `{detail}` (with our `code`).

use std::collections::HashMap;

use axum::{
    Json as Reply, Router,
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Caller, Dialect, Fail, Routes, accept};
use crate::{
    auth::Principal,
    core::{
        conversations::{
            self, Conversation, CreateConversation, ListConversations, ParticipantSpec,
        },
        events::Origin,
        history, insights,
        messages::Message,
        participants::NewParticipant,
        profiles::{self, Profile},
        reads::{self, MarkRead},
        validate,
    },
    error::AppError,
    http::{Json, Path},
    state::AppState,
};

pub struct Messaging;

impl Dialect for Messaging {
    fn render(e: &AppError) -> Response {
        let status = e.status_code();
        (
            status,
            Reply(json!({ "detail": e.to_string(), "code": e.code() })),
        )
            .into_response()
    }
}

type Result<T> = std::result::Result<T, Fail<Messaging>>;
type Me = Caller<Messaging>;

pub const ROUTES: Routes = &[
    ("GET", "/messaging/conversations"),
    ("POST", "/messaging/conversations"),
    ("GET", "/messaging/conversations/{id}/messages"),
    ("POST", "/messaging/conversations/{id}/messages"),
    ("GET", "/messaging/agent-conversations"),
];

pub fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route("/messaging/conversations", get(list).post(start))
        .route(
            "/messaging/conversations/{id}/messages",
            get(read_messages).post(send),
        )
        .route("/messaging/agent-conversations", get(agent_conversations));
    super::guarded::<Messaging>(state, None, routes)
}

/// Messages one read returns at most (the newest).
const MAX_MESSAGES: i64 = 100;

/// Conversations listed at most (newest activity first).
const MAX_LISTED: i64 = 1000;

async fn all_conversations(
    state: &AppState,
    me: &Principal,
    list: impl Fn(i64) -> ListConversations,
    agent: Option<&str>,
) -> Result<Vec<Conversation>> {
    let mut all = Vec::new();
    loop {
        let query = list(all.len() as i64);
        let page = match agent {
            Some(a) => insights::agent_conversations(state, me, a, query).await?,
            None => conversations::list(state, me, query).await?,
        };
        let more = page.has_more && !page.items.is_empty();
        all.extend(page.items);
        if !more || all.len() as i64 >= MAX_LISTED {
            return Ok(all);
        }
    }
}

fn stored<'a>(c: &'a Conversation, field: &str) -> Option<&'a str> {
    c.metadata
        .get("messaging")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn profile_json(p: &Profile) -> Value {
    json!({ "user_id": p.user_id, "handle": p.handle, "display_name": p.display_name,
            "avatar_url": p.avatar_url })
}

fn avee_json(p: &Profile) -> Value {
    json!({ "id": p.user_id, "handle": p.handle, "display_name": p.display_name,
            "avatar_url": p.avatar_url })
}

/// Shapes conversations as `viewer` sees them: the other person, the agent if any.
async fn items(state: &AppState, viewer: &str, list: &[Conversation]) -> Result<Vec<Value>> {
    let ids: Vec<Uuid> = list.iter().map(|c| c.id).collect();
    let agents = profiles::agents_in(&state.db, &ids).await?;
    // The other person: in an agent chat, the agent's owner unless that is the viewer.
    let other_of = |c: &Conversation| -> Option<String> {
        let agent = agents.get(&c.id).map(|a| a.user_id.as_str());
        if let Some(owner) = stored(c, "target_user_id")
            && agent.is_some()
            && owner != viewer
        {
            return Some(owner.to_owned());
        }
        // Seed clients read `other_participant.display_name` unguarded: always someone
        // (another person, else the agent, else the creator).
        c.participants
            .iter()
            .find(|p| p.as_str() != viewer && Some(p.as_str()) != agent)
            .or_else(|| c.participants.iter().find(|p| p.as_str() != viewer))
            .cloned()
            .or_else(|| Some(c.created_by.clone()))
    };
    let others: Vec<String> = list.iter().filter_map(other_of).collect();
    let people = profiles::of(&state.db, &others).await?;
    Ok(list
        .iter()
        .map(|c| {
            let agent = agents.get(&c.id);
            let other = other_of(c).map(|o| {
                people
                    .get(&o)
                    .map_or_else(|| profile_json(&Profile::bare(&o)), profile_json)
            });
            let chat_type =
                stored(c, "chat_type").unwrap_or(if agent.is_some() { "agent" } else { "profile" });
            json!({
                "id": c.id,
                "chat_type": chat_type,
                "other_participant": other,
                "target_avee": agent.map(avee_json),
                "last_message_at": c.last_message_at,
                "last_message_preview": c.last_message.as_ref().map(|m| preview(&m.text)),
                "unread_count": c.unread_count.unwrap_or(0),
            })
        })
        .collect())
}

fn preview(text: &str) -> String {
    const MAX: usize = 100;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `GET /messaging/conversations`: the caller's conversations, most recent first.
async fn list(State(state): State<AppState>, Caller(me, _): Me) -> Result<Response> {
    let all = all_conversations(
        &state,
        &me,
        |offset| ListConversations {
            participant_id: Some(me.id.clone()),
            limit: Some(100),
            offset: Some(offset),
            ..Default::default()
        },
        None,
    )
    .await?;
    let conversations = items(&state, &me.id, &all).await?;
    Ok(Reply(json!({ "conversations": conversations })).into_response())
}

/// `GET /messaging/agent-conversations`: conversations users have with the caller's agents.
async fn agent_conversations(State(state): State<AppState>, Caller(me, _): Me) -> Result<Response> {
    let mut all = Vec::new();
    for agent in insights::agents_owned_by(&state, &me.id).await? {
        let found = all_conversations(
            &state,
            &me,
            |offset| ListConversations {
                limit: Some(100),
                offset: Some(offset),
                ..Default::default()
            },
            Some(&agent),
        )
        .await?;
        all.extend(found);
    }
    all.sort_by_key(|c| std::cmp::Reverse(c.last_message_at.unwrap_or(c.created_at)));
    all.dedup_by_key(|c| c.id);
    let conversations = items(&state, &me.id, &all).await?;
    Ok(Reply(json!({ "conversations": conversations })).into_response())
}

#[derive(Deserialize)]
struct Start {
    target_user_id: String,
    chat_type: Option<String>,
    target_avee_id: Option<String>,
}

/// `POST /messaging/conversations`: the one conversation of this pair, chat type and
/// agent, created when new.
async fn start(
    State(state): State<AppState>,
    Caller(me, _): Me,
    body: std::result::Result<Json<Start>, AppError>,
) -> Result<Response> {
    let Json(body) = accept(body)?;
    validate::id("target_user_id", &body.target_user_id)?;
    let chat_type = body.chat_type.as_deref().unwrap_or("profile");
    validate::one_of("chat_type", chat_type, &["profile", "agent"])?;
    if body.target_user_id == me.id {
        return Err(AppError::invalid_field("target_user_id", "must be someone else").into());
    }
    let avee = match (chat_type, &body.target_avee_id) {
        ("agent", None) => {
            return Err(AppError::invalid_field(
                "target_avee_id",
                "is required when chat_type is agent",
            )
            .into());
        }
        ("agent", Some(a)) => {
            validate::id("target_avee_id", a)?;
            // Only an agent the target user owns.
            if insights::owner_of(&state, a).await?.as_deref() != Some(&body.target_user_id) {
                return Err(AppError::NotFound("agent").into());
            }
            Some(a.clone())
        }
        _ => None,
    };
    let mut pair = [me.id.as_str(), body.target_user_id.as_str()];
    pair.sort();
    const NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_52c4_8a0e_4b8e_9c1f_0c0d_2a3b_002c);
    let key = format!(
        "{}\u{0}{}\u{0}{chat_type}\u{0}{}",
        pair[0],
        pair[1],
        avee.as_deref().unwrap_or_default()
    );
    let pcid = format!(
        "{}{}",
        conversations::DIRECT_PREFIX,
        Uuid::new_v5(&NAMESPACE, key.as_bytes())
    );
    let other = match &avee {
        Some(a) => NewParticipant {
            participant_id: a.clone(),
            participant_type: Some("agent".into()),
            role: None,
            display_name: None,
        },
        None => NewParticipant::member(body.target_user_id.clone()),
    };
    let created = conversations::create(
        &state,
        &me,
        CreateConversation {
            platform_conversation_id: Some(pcid),
            direct: true,
            participants: vec![ParticipantSpec::Full(other)],
            metadata: Some(json!({ "messaging": {
                "chat_type": chat_type, "target_user_id": body.target_user_id,
                "target_avee_id": avee } })),
            ..Default::default()
        },
    )
    .await?;
    // FastAPI's default: 200 for a POST; `is_new` tells the two apart.
    Ok(Reply(
        json!({ "id": created.conversation.id, "chat_type": chat_type,
                     "is_new": created.is_new }),
    )
    .into_response())
}

/// The seed's message: who sent it as a user, and as which agent.
fn message_json(
    m: &Message,
    owners: &HashMap<String, String>,
    people: &HashMap<String, Profile>,
) -> Value {
    let agent = m.sender_type == "agent";
    let info = people
        .get(&m.sender_id)
        .map_or_else(|| profile_json(&Profile::bare(&m.sender_id)), profile_json);
    json!({
        "id": m.id,
        "conversation_id": m.conversation_id,
        "sender_user_id": if agent { owners.get(&m.sender_id).unwrap_or(&m.sender_id) } else { &m.sender_id },
        "sender_type": m.sender_type,
        "sender_avee_id": if agent { Some(&m.sender_id) } else { None },
        "content": m.text,
        "created_at": m.created_at,
        "sender_info": info,
    })
}

async fn shape_messages(state: &AppState, list: &[Message]) -> Result<Vec<Value>> {
    let mut senders: Vec<String> = list.iter().map(|m| m.sender_id.clone()).collect();
    senders.sort();
    senders.dedup();
    let people = profiles::of(&state.db, &senders).await?;
    let mut owners = HashMap::new();
    for m in list.iter().filter(|m| m.sender_type == "agent") {
        if !owners.contains_key(&m.sender_id)
            && let Some(o) = insights::owner_of(state, &m.sender_id).await?
        {
            owners.insert(m.sender_id.clone(), o);
        }
    }
    Ok(list
        .iter()
        .map(|m| message_json(m, &owners, &people))
        .collect())
}

/// `GET /messaging/conversations/{id}/messages`: oldest first; opening marks it read.
async fn read_messages(
    State(state): State<AppState>,
    Caller(me, _): Me,
    path: std::result::Result<Path<String>, AppError>,
) -> Result<Response> {
    let Path(id) = accept(path)?;
    let id = super::conversation_id(&id)?;
    let conversation = conversations::get(&state, &me, id).await?;
    // The newest page, oldest first; deleted messages are left out.
    let page = history::history(
        &state,
        &me,
        id,
        history::HistoryQuery {
            limit: Some(MAX_MESSAGES),
            ..Default::default()
        },
    )
    .await?;
    let log: Vec<Message> = page
        .items
        .into_iter()
        .filter(|m| m.deleted_at.is_none())
        .collect();
    // Participants read it by opening it; an agent's owner only looks.
    if conversation.last_read_seq.is_some() {
        reads::mark_read(&state, &me, id, MarkRead::default(), Origin::default()).await?;
    }
    let messages = shape_messages(&state, &log).await?;
    Ok(Reply(json!({ "messages": messages })).into_response())
}

#[derive(Deserialize)]
struct Send {
    content: Option<Value>,
    client_message_id: Option<String>,
}

/// `POST /messaging/conversations/{id}/messages` `{content}`: the stored message.
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
        Vec::new(),
        body.client_message_id,
        "messaging",
    )
    .await?;
    let message = &sent.message;
    // The sender is the caller: its token just said who it is (and was remembered), so
    // only a nameless caller needs the stored fallbacks.
    let shaped = match Profile::claimed(&me) {
        Some(profile) if message.sender_id == me.id && message.sender_type != "agent" => {
            let people = HashMap::from([(me.id.clone(), profile)]);
            message_json(message, &HashMap::new(), &people)
        }
        _ => shape_messages(&state, std::slice::from_ref(message))
            .await?
            .into_iter()
            .next()
            .unwrap_or(Value::Null),
    };
    Ok(Reply(shaped).into_response())
}
