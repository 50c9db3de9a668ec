//! The Socket.IO protocol's payloads as typed structs.
//!
//! Clients in use name the same thing several ways (`conversation_id`, `conversationId`,
//! `roomId`…): each spelling is a serde alias. Unknown fields are ignored (contract §3);
//! a known field of the wrong type is an error naming it. An empty string counts as absent,
//! as the clients that send `""` for "none" mean it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::Value;

use crate::error::{AppError, AppResult};

/// Reads a payload into `T`; a type error names the field (`conversations.abc: invalid
/// type…`).
pub fn parse<T: DeserializeOwned>(payload: Value) -> AppResult<T> {
    if !payload.is_object() {
        return Err(AppError::validation("payload must be a JSON object"));
    }
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let field = e.path().to_string();
        AppError::invalid_field(&field, e.into_inner().to_string())
    })
}

/// `""` and `null` as `None`.
fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// Conversation id → the last `seq` the client has (for a resume).
pub type Positions = BTreeMap<String, i64>;

/// The Socket.IO handshake's `auth` object.
#[derive(Debug, Default, Deserialize)]
pub struct HandshakeAuth {
    #[serde(default, deserialize_with = "non_empty")]
    pub token: Option<String>,
    /// Resume after a reconnect: back into these conversations, missed messages first.
    #[serde(default)]
    pub resume: Option<Positions>,
}

/// `resume {conversations: {<conversation_id>: <last_seq>, …}}`.
#[derive(Debug, Deserialize)]
pub struct Resume {
    pub conversations: Positions,
}

/// The first present value among spellings of one field.
fn first<'a>(spellings: &[&'a Option<String>]) -> Option<&'a str> {
    spellings.iter().find_map(|s| s.as_deref())
}

/// Which conversation an event names: by id (`conversation_id`, `conversationId`; a
/// non-UUID is taken as a platform id), or by platform id (`platform_conversation_id`,
/// `platformConversationId`, elizaOS `roomId`/`channelId`, `/ws`-style `session_id`),
/// optionally with `platform`. Each spelling is its own field: clients send several at
/// once (elizaOS sends `roomId` and `channelId`), which one aliased field would refuse.
#[derive(Debug, Default, Deserialize)]
pub struct Target {
    #[serde(default, deserialize_with = "non_empty")]
    conversation_id: Option<String>,
    #[serde(default, rename = "conversationId", deserialize_with = "non_empty")]
    conversation_id_camel: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    platform_conversation_id: Option<String>,
    #[serde(
        default,
        rename = "platformConversationId",
        deserialize_with = "non_empty"
    )]
    platform_conversation_id_camel: Option<String>,
    #[serde(default, rename = "roomId", deserialize_with = "non_empty")]
    room_id: Option<String>,
    #[serde(default, rename = "channelId", deserialize_with = "non_empty")]
    channel_id: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    session_id: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub platform: Option<String>,
}

impl Target {
    /// A target naming `id` (a conversation id, or a platform id).
    pub fn id(id: &str) -> Self {
        Self {
            conversation_id: Some(id.to_owned()),
            ..Self::default()
        }
    }

    pub fn conversation_id(&self) -> Option<&str> {
        first(&[&self.conversation_id, &self.conversation_id_camel])
    }

    pub fn platform_conversation_id(&self) -> Option<&str> {
        first(&[
            &self.platform_conversation_id,
            &self.platform_conversation_id_camel,
            &self.room_id,
            &self.channel_id,
            &self.session_id,
        ])
    }
}

/// Who an anonymous (legacy mode) socket says it is; ignored when the socket has a token.
#[derive(Debug, Default, Deserialize)]
pub struct Claimed {
    #[serde(default, rename = "userId", deserialize_with = "non_empty")]
    user_id_camel: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    user_id: Option<String>,
    #[serde(default, rename = "senderId", deserialize_with = "non_empty")]
    sender_id_camel: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    sender_id: Option<String>,
    #[serde(default, rename = "entityId", deserialize_with = "non_empty")]
    entity_id: Option<String>,
    #[serde(default, rename = "senderName", deserialize_with = "non_empty")]
    sender_name_camel: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    sender_name: Option<String>,
    #[serde(default, rename = "userName", deserialize_with = "non_empty")]
    user_name: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    name: Option<String>,
}

impl Claimed {
    pub fn id(&self) -> Option<&str> {
        first(&[
            &self.user_id_camel,
            &self.user_id,
            &self.sender_id_camel,
            &self.sender_id,
            &self.entity_id,
        ])
    }

    /// The sender a send names (`senderId`, `sender_id`): a service acts for it.
    pub fn sender_id(&self) -> Option<&str> {
        first(&[&self.sender_id_camel, &self.sender_id])
    }

    pub fn sender_name(&self) -> Option<&str> {
        first(&[&self.sender_name_camel, &self.sender_name])
    }

    pub fn name(&self) -> Option<&str> {
        first(&[&self.sender_name_camel, &self.user_name, &self.name])
    }
}

/// `join` and `leave` (and elizaOS type 1).
#[derive(Debug, Deserialize)]
pub struct Join {
    #[serde(flatten)]
    pub target: Target,
    #[serde(flatten)]
    pub claimed: Claimed,
    #[serde(default)]
    since_seq: Option<i64>,
    #[serde(default, rename = "sinceSeq")]
    since_seq_camel: Option<i64>,
}

impl Join {
    pub fn since_seq(&self) -> Option<i64> {
        self.since_seq.or(self.since_seq_camel)
    }
}

/// `chat_message` (and elizaOS type 2).
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    #[serde(flatten)]
    pub target: Target,
    #[serde(flatten)]
    pub claimed: Claimed,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default, rename = "messageId", deserialize_with = "non_empty")]
    message_id: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    client_message_id: Option<String>,
    #[serde(default, rename = "clientMessageId", deserialize_with = "non_empty")]
    client_message_id_camel: Option<String>,
    #[serde(default, rename = "senderType", deserialize_with = "non_empty")]
    sender_type_camel: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    sender_type: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    thread_id: Option<String>,
    #[serde(default, rename = "threadId", deserialize_with = "non_empty")]
    thread_id_camel: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub source: Option<String>,
    #[serde(default)]
    pub attachments: Option<Vec<crate::core::messages::Attachment>>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

impl ChatMessage {
    pub fn text(&self) -> Option<&str> {
        self.message.as_deref().or(self.text.as_deref())
    }

    /// The client's id for the message (its idempotency key); elizaOS calls it `messageId`.
    pub fn client_message_id(&self) -> Option<&str> {
        first(&[
            &self.message_id,
            &self.client_message_id,
            &self.client_message_id_camel,
        ])
    }

    /// Whether an elizaOS send carries its `messageId` (and so wants its echo).
    pub fn has_message_id(&self) -> bool {
        self.message_id.is_some()
    }

    pub fn sender_type(&self) -> Option<&str> {
        first(&[&self.sender_type_camel, &self.sender_type])
    }

    pub fn thread_id(&self) -> Option<&str> {
        first(&[&self.thread_id, &self.thread_id_camel])
    }
}

/// `typing`.
#[derive(Debug, Deserialize)]
pub struct Typing {
    #[serde(flatten)]
    pub target: Target,
    #[serde(flatten)]
    pub claimed: Claimed,
    #[serde(default)]
    is_typing: Option<bool>,
    #[serde(default, rename = "isTyping")]
    is_typing_camel: Option<bool>,
}

impl Typing {
    pub fn is_typing(&self) -> bool {
        self.is_typing.or(self.is_typing_camel).unwrap_or(true)
    }
}

/// `mark_read`.
#[derive(Debug, Deserialize)]
pub struct MarkRead {
    #[serde(flatten)]
    pub target: Target,
    #[serde(flatten)]
    pub claimed: Claimed,
    #[serde(default)]
    up_to_seq: Option<i64>,
    #[serde(default, rename = "upToSeq")]
    up_to_seq_camel: Option<i64>,
}

impl MarkRead {
    pub fn up_to_seq(&self) -> Option<i64> {
        self.up_to_seq.or(self.up_to_seq_camel)
    }
}

/// `complete`, and anything else that only names a conversation.
#[derive(Debug, Deserialize)]
pub struct Named {
    #[serde(flatten)]
    pub target: Target,
    #[serde(flatten)]
    pub claimed: Claimed,
}

/// The elizaOS envelope `{type, payload}`; `type` as a number or a numeric string.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type", deserialize_with = "number_or_numeric_string")]
    pub kind: i64,
    #[serde(default)]
    pub payload: Value,
}

fn number_or_numeric_string<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("must be 1 (join) or 2 (send)")),
        Value::String(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom("must be 1 (join) or 2 (send)")),
        _ => Err(serde::de::Error::custom("must be 1 (join) or 2 (send)")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn handshake_auth_reads_token_and_resume_and_names_bad_fields() {
        let a: HandshakeAuth = parse(json!({"token": "t", "resume": {"c1": 4}, "x": 1})).unwrap();
        assert_eq!(a.token.as_deref(), Some("t"));
        assert_eq!(a.resume.unwrap()["c1"], 4);
        let a: HandshakeAuth = parse(json!({"token": ""})).unwrap();
        assert!(a.token.is_none());
        let e = parse::<HandshakeAuth>(json!({"resume": {"c1": "x"}})).unwrap_err();
        assert!(e.to_string().contains("resume.c1"), "{e}");
        assert!(parse::<Resume>(json!([1])).is_err());
    }

    #[test]
    fn every_spelling_clients_use_is_read_and_several_at_once_are_fine() {
        let j: Join =
            parse(json!({"roomId": "r", "channelId": "r", "entityId": "e", "sinceSeq": 3}))
                .unwrap();
        assert_eq!(j.target.platform_conversation_id(), Some("r"));
        assert_eq!(j.claimed.id(), Some("e"));
        assert_eq!(j.since_seq(), Some(3));
        let m: ChatMessage = parse(json!({
            "conversationId": "c", "conversation_id": "c", "text": "hi", "messageId": "m1",
            "senderId": "s", "senderName": "S", "unknown": {"deep": [1]}
        }))
        .unwrap();
        assert_eq!(m.target.conversation_id(), Some("c"));
        assert_eq!((m.text(), m.client_message_id()), (Some("hi"), Some("m1")));
        assert!(m.has_message_id());
        assert_eq!(m.claimed.sender_id(), Some("s"));
        let e = parse::<ChatMessage>(json!({"message": 5})).unwrap_err();
        assert!(e.to_string().contains("message"), "{e}");
        let e = parse::<MarkRead>(json!({"conversation_id": "c", "up_to_seq": "x"})).unwrap_err();
        assert!(e.to_string().contains("up_to_seq"), "{e}");
        let env: Envelope = parse(json!({"type": "2", "payload": {}})).unwrap();
        assert_eq!(env.kind, 2);
        assert!(parse::<Envelope>(json!({"type": true})).is_err());
        let t: Typing = parse(json!({"conversation_id": "c", "conversation_id_x": 1})).unwrap();
        assert!(t.is_typing());
    }
}
