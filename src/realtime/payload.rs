//! Reading loosely-typed client payloads (several naming styles are in use) and shaping
//! the server's events.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    core::{conversations, messages::SERVER_ID},
    error::{AppError, AppResult},
    state::AppState,
};

/// The first string among `keys`.
pub fn str_field<'a>(p: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| p.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

/// The first integer among `keys`; a present but non-integer value is an error.
pub fn int_field(p: &Value, keys: &[&str]) -> AppResult<Option<i64>> {
    for k in keys {
        match p.get(*k) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return v
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| AppError::invalid_field(k, "must be an integer"));
            }
        }
    }
    Ok(None)
}

pub fn require_object(p: &Value) -> AppResult<()> {
    if !p.is_object() {
        return Err(AppError::validation("payload must be a JSON object"));
    }
    Ok(())
}

/// Which conversation a payload names: by id, or by platform id (optionally with `platform`).
pub async fn conversation_ref(state: &AppState, p: &Value) -> AppResult<Uuid> {
    if let Some(id) = str_field(p, &["conversation_id", "conversationId"]) {
        if let Ok(uuid) = Uuid::parse_str(id) {
            return Ok(uuid);
        }
        return conversations::resolve_platform_id(state, str_field(p, &["platform"]), id).await;
    }
    if let Some(pcid) = str_field(
        p,
        &[
            "platform_conversation_id",
            "platformConversationId",
            "roomId",
            "channelId",
            "session_id",
        ],
    ) {
        return conversations::resolve_platform_id(state, str_field(p, &["platform"]), pcid).await;
    }
    Err(AppError::validation(
        "name the conversation: conversation_id or platform_conversation_id",
    ))
}

/// `messageBroadcast` from a stored message (as serialised by the core).
pub fn message_broadcast(room: &str, m: &Value) -> Value {
    let created_ms = m["created_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    json!({
        "id": m["id"],
        "seq": m["seq"],
        "conversationId": m["conversation_id"],
        "roomId": room,
        "channelId": room,
        "serverId": SERVER_ID,
        "senderId": m["sender_id"],
        "senderName": m["sender_name"],
        "senderType": m["sender_type"],
        "text": m["text"],
        "createdAt": created_ms,
        "source": m.get("source").cloned().unwrap_or_else(|| m["platform_context"]["metadata"]["source"].clone()),
        "attachments": m["attachments"],
        "metadata": m["metadata"],
        "thread_id": m["thread_id"],
        "clientMessageId": m["client_message_id"],
    })
}

/// `messageComplete` for an agent's finished reply.
pub fn message_complete(room: &str, conversation_id: &Value, agent_id: &Value) -> Value {
    json!({
        "roomId": room,
        "channelId": room,
        "conversationId": conversation_id,
        "agentId": agent_id,
        "senderId": agent_id,
    })
}

/// An agent's message completes its reply unless it says it is partial.
pub fn completes_reply(m: &Value) -> bool {
    m["sender_type"] == "agent" && m["metadata"]["partial"] != Value::Bool(true)
}
