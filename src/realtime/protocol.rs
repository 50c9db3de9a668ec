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
}
