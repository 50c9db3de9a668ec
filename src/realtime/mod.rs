//! Real-time transports: Socket.IO and `/ws`, fed by the core's event bus, and the
//! cross-process relay that makes several processes act as one server.

pub mod bus;
pub mod cursor;
pub mod delivery;
pub mod fanout;
pub mod inbox;
pub mod payload;
pub mod protocol;
pub mod socketio;
pub mod ws;

use uuid::Uuid;

/// The Socket.IO room of a conversation.
pub fn room(conversation_id: Uuid) -> String {
    conversation_id.to_string()
}

/// The room holding just one socket, so a broadcast can leave the sender out.
pub fn socket_room(sid: &str) -> String {
    format!("sid:{sid}")
}
