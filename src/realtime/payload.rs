//! Resolving the conversation a payload names, and shaping the server's events.

use serde_json::{Value, json};
use uuid::Uuid;

use super::protocol::Target;
use crate::{
    core::{conversations, messages::SERVER_ID},
    error::{AppError, AppResult},
    state::AppState,
};

/// Which conversation a payload's [`Target`] names: by id, or by platform id (optionally
/// with `platform`).
pub async fn resolve(state: &AppState, target: &Target) -> AppResult<Uuid> {
    if let Some(id) = target.conversation_id() {
        if let Ok(uuid) = Uuid::parse_str(id) {
            return Ok(uuid);
        }
        return conversations::resolve_platform_id(state, target.platform.as_deref(), id).await;
    }
    if let Some(pcid) = target.platform_conversation_id() {
        return conversations::resolve_platform_id(state, target.platform.as_deref(), pcid).await;
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
        "source": m["platform_context"]["metadata"]["source"],
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
