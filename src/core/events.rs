//! Domain events: what the core tells the transports after a change is committed.
//!
//! Operations publish here; the Socket.IO and `/ws` transports subscribe and fan out to
//! their rooms. The bus also carries events between processes (see `realtime::bus`).

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    MessageCreated,
    MessageUpdated,
    MessageDeleted,
    ReactionUpdated,
    MessagesRead,
    MessageComplete,
    Typing,
    ConversationUpdated,
    ConversationDeleted,
    ParticipantJoined,
    ParticipantLeft,
}

/// Who caused an event, so the transport can leave them out (or not) of the fan-out.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Origin {
    /// The socket (Socket.IO sid or `/ws` session id) that sent it.
    pub socket_id: Option<String>,
    /// elizaOS 1.x clients render their own message only when it comes back to them.
    pub echo: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub conversation_id: Uuid,
    /// The conversation's `platform_conversation_id` (Socket.IO `roomId`/`channelId`).
    pub room: String,
    pub data: Value,
    #[serde(default)]
    pub origin: Origin,
}

/// Publish side of the bus; cloning shares the channel.
#[derive(Clone)]
pub struct Events {
    local: broadcast::Sender<Arc<Event>>,
    /// Set when the cross-process bus runs: events published here are relayed to it.
    relay: Arc<OnceLock<mpsc::Sender<Arc<Event>>>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        // A subscriber that falls this far behind skips events (and is told so) instead
        // of slowing the publishers: the durable record is the database.
        let (local, _) = broadcast::channel(4096);
        Self {
            local,
            relay: Arc::new(OnceLock::new()),
        }
    }

    /// Delivers to this process's transports and, through the bus, to every other process.
    pub fn publish(&self, event: Event) {
        let event = Arc::new(event);
        if let Some(relay) = self.relay.get()
            && relay.try_send(event.clone()).is_err()
        {
            tracing::warn!(
                "event relay is full; other processes miss one event (clients gap-fill)"
            );
        }
        let _ = self.local.send(event);
    }

    /// Delivers an event that came from another process to this process's transports only.
    pub fn deliver_local(&self, event: Arc<Event>) {
        let _ = self.local.send(event);
    }

    pub fn set_relay(&self, relay: mpsc::Sender<Arc<Event>>) {
        let _ = self.relay.set(relay);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.local.subscribe()
    }
}
