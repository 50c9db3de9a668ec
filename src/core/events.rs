//! Domain events: what the core tells the transports after a change is committed.
//!
//! Operations publish here; the Socket.IO and `/ws` transports subscribe and fan out to
//! their rooms. The bus also carries events between processes (see `realtime::bus`).

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
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
    /// A responder's reply as it streams: `{conversation_id, stream_id, delta, …}` (not
    /// stored; the whole reply is stored as a message when it ends).
    MessageStream,
    /// A responder's reply failed: `{code, message, conversation_id, stream_id, …}`.
    StreamError,
    /// Internal, never sent to clients nor relayed: the bus may have missed a removal
    /// (it reconnected, or this process only now subscribed to the conversation), so
    /// the transports check again who may still read the conversation (the nil id: every
    /// conversation).
    AccessChanged,
}

/// Who caused an event, so the transport can leave them out (or not) of the fan-out.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Origin {
    /// The socket (Socket.IO sid or `/ws` session id) that sent it.
    pub socket_id: Option<String>,
    /// elizaOS 1.x clients render their own message only when it comes back to them.
    pub echo: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub conversation_id: Uuid,
    /// The conversation's `platform_conversation_id` (Socket.IO `roomId`/`channelId`).
    pub room: String,
    /// For message events, the message exactly as the REST API shows it.
    pub data: Value,
    #[serde(default)]
    pub origin: Origin,
    /// `data` as JSON text, once something asked for it ([`Event::data_json`]).
    #[serde(skip)]
    pub json: DataJson,
}

/// An event's `data` as JSON text, written once by whoever needs it first (the bus relay,
/// the webhook dispatcher) and then shared: a message is escaped and written out once
/// however many of them send it on, and what is kept of it afterwards is one buffer
/// rather than a tree of values.
#[derive(Clone, Debug, Default)]
pub struct DataJson(OnceLock<Arc<RawValue>>);

impl DataJson {
    #[cfg(test)]
    pub fn written(&self) -> bool {
        self.0.get().is_some()
    }
}

impl Event {
    pub fn new(
        kind: EventKind,
        conversation_id: Uuid,
        room: String,
        data: Value,
        origin: Origin,
    ) -> Self {
        Self {
            kind,
            conversation_id,
            room,
            data,
            origin,
            json: DataJson::default(),
        }
    }

    /// `data` as JSON text (written the first time it is asked for).
    pub fn data_json(&self) -> &Arc<RawValue> {
        self.json.0.get_or_init(|| {
            // A `Value` always serialises; keep the type total anyway.
            Arc::from(serde_json::value::to_raw_value(&self.data).unwrap_or_default())
        })
    }
}

/// As derived, but `data` is written from its JSON text when that exists already.
impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut event = serializer.serialize_struct("Event", 5)?;
        event.serialize_field("kind", &self.kind)?;
        event.serialize_field("conversation_id", &self.conversation_id)?;
        event.serialize_field("room", &self.room)?;
        match self.json.0.get() {
            Some(json) => event.serialize_field("data", &**json)?,
            None => event.serialize_field("data", &self.data)?,
        }
        event.serialize_field("origin", &self.origin)?;
        event.end()
    }
}

/// Publish side of the bus; cloning shares the channel.
///
/// Events go first to the delivery stage (`realtime::delivery`), which puts each
/// conversation's messages in `seq` order, drops repeats and fills gaps from the log, and
/// only then to the transports' subscribers.
#[derive(Clone)]
pub struct Events {
    /// What the transports subscribe to: messages in `seq` order per conversation.
    local: broadcast::Sender<Arc<Event>>,
    /// Into the delivery stage: every event, local or from another process.
    raw: mpsc::Sender<Arc<Event>>,
    raw_rx: Arc<std::sync::Mutex<Option<mpsc::Receiver<Arc<Event>>>>>,
    /// Set when the cross-process bus runs: events published here are relayed to it.
    relay: Arc<OnceLock<mpsc::Sender<Arc<Event>>>>,
    /// Conversations this process has clients in, with the last `seq` a client saw:
    /// the delivery stage checks them against the log even while they are quiet.
    watch: mpsc::Sender<Watch>,
    watch_rx: Arc<std::sync::Mutex<Option<mpsc::Receiver<Watch>>>>,
    interest: Interest,
}

/// What a bus that carries only what this process's clients follow (Redis, one channel
/// per conversation and per principal) should subscribe to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Conversation(Uuid),
    /// A principal's inbox (contract §4): its sockets hear of all its conversations.
    Principal(String),
}

/// This process's clients' interest, for the bus.
///
/// Socket.IO rooms are the record for sockets (the bus reads them); `/ws` sessions hold
/// a [`Following`] guard. Joins and connects also send a hint, so the bus subscribes at
/// once instead of at its next look.
#[derive(Clone, Default)]
pub struct Interest {
    ws: Arc<std::sync::Mutex<std::collections::HashMap<Uuid, usize>>>,
    hints: Arc<OnceLock<mpsc::Sender<Topic>>>,
}

impl Interest {
    /// Best effort: a full queue only waits for the bus's next look at the rooms.
    pub fn hint(&self, topic: Topic) {
        if let Some(hints) = self.hints.get() {
            let _ = hints.try_send(topic);
        }
    }

    /// The bus that wants hints (set once).
    pub fn set_hints(&self, hints: mpsc::Sender<Topic>) {
        let _ = self.hints.set(hints);
    }

    /// A `/ws` session follows `conversation_id` until the guard drops.
    pub fn follow(&self, conversation_id: Uuid) -> Following {
        if let Ok(mut ws) = self.ws.lock() {
            *ws.entry(conversation_id).or_default() += 1;
        }
        self.hint(Topic::Conversation(conversation_id));
        Following {
            ws: self.ws.clone(),
            conversation_id,
        }
    }

    /// Conversations `/ws` sessions on this process follow.
    pub fn ws_conversations(&self) -> Vec<Uuid> {
        self.ws
            .lock()
            .map(|ws| ws.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// Held by a `/ws` session for as long as it follows its conversation.
pub struct Following {
    ws: Arc<std::sync::Mutex<std::collections::HashMap<Uuid, usize>>>,
    conversation_id: Uuid,
}

impl Drop for Following {
    fn drop(&mut self) {
        if let Ok(mut ws) = self.ws.lock()
            && let Some(n) = ws.get_mut(&self.conversation_id)
        {
            *n -= 1;
            if *n == 0 {
                ws.remove(&self.conversation_id);
            }
        }
    }
}

/// "A client of this process follows this conversation, and has seen it up to `seq`"
/// (a join or resume); without `seq`, a refresh of an earlier report.
#[derive(Clone, Copy, Debug)]
pub struct Watch {
    pub conversation_id: Uuid,
    pub seq: Option<i64>,
    /// Nobody here follows it any more: forget the track.
    pub forget: bool,
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
        // Past this backlog the delivery stage is not keeping up; a message dropped here
        // is recovered from the log like any lost wake-up.
        let (raw, raw_rx) = mpsc::channel(16_384);
        let (watch, watch_rx) = mpsc::channel(16_384);
        Self {
            local,
            raw,
            raw_rx: Arc::new(std::sync::Mutex::new(Some(raw_rx))),
            relay: Arc::new(OnceLock::new()),
            watch,
            watch_rx: Arc::new(std::sync::Mutex::new(Some(watch_rx))),
            interest: Interest::default(),
        }
    }

    /// Delivers to this process's transports and, through the bus, to every other process.
    pub fn publish(&self, event: Event) {
        let event = Arc::new(event);
        if let Some(relay) = self.relay.get()
            && relay.try_send(event.clone()).is_err()
        {
            crate::metrics::bus_publish_failed("relay_queue", 1);
            // Said at most every 10 s: a bus that is down fills the queue at every send.
            static LAST_SAID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let said = LAST_SAID.load(std::sync::atomic::Ordering::Relaxed);
            if now >= said + 10
                && LAST_SAID
                    .compare_exchange(
                        said,
                        now,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(
                    "event relay is full; other processes recover messages from the log"
                );
            }
        }
        self.deliver_local(event);
    }

    /// Has the transports check again who may read `conversation_id` (`Uuid::nil()`: every
    /// conversation): after the bus may have missed a removal. Local only.
    pub fn recheck(&self, conversation_id: Uuid) {
        self.deliver_local(Arc::new(Event::new(
            EventKind::AccessChanged,
            conversation_id,
            String::new(),
            Value::Null,
            Origin::default(),
        )));
    }

    /// A local client no longer follows `conversation_id` (the bus unsubscribed it): the
    /// delivery stage forgets where it stood, instead of sweeping a conversation nobody
    /// here reads and later resuming from a stale position.
    pub fn unwatch(&self, conversation_id: Uuid) {
        let _ = self.watch.try_send(Watch {
            conversation_id,
            seq: None,
            forget: true,
        });
    }

    /// Delivers an event that came from another process to this process's transports only.
    pub fn deliver_local(&self, event: Arc<Event>) {
        if self.raw.try_send(event).is_err() {
            crate::metrics::delivery_backlog_dropped();
        }
    }

    /// The delivery stage's inputs (events, watches); taken once, by the stage.
    pub fn take_input(&self) -> Option<(mpsc::Receiver<Arc<Event>>, mpsc::Receiver<Watch>)> {
        let events = self.raw_rx.lock().ok()?.take()?;
        let watches = self.watch_rx.lock().ok()?.take()?;
        Some((events, watches))
    }

    /// Tells the delivery stage a local client follows `conversation_id` (joins, resumes,
    /// and a periodic refresh for every followed conversation). Best effort: a full queue
    /// only delays the next check.
    pub fn watch(&self, conversation_id: Uuid, seq: Option<i64>) {
        if seq.is_some() {
            self.interest.hint(Topic::Conversation(conversation_id));
        }
        let _ = self.watch.try_send(Watch {
            conversation_id,
            seq,
            forget: false,
        });
    }

    /// Hands an event, in order, to the transports (the delivery stage calls this).
    pub fn forward(&self, event: Arc<Event>) {
        let _ = self.local.send(event);
    }

    /// Nothing waits between the writers and the transports (shutdown drains until so).
    pub fn is_idle(&self) -> bool {
        self.raw.capacity() == self.raw.max_capacity()
            && self.local.is_empty()
            && self
                .relay
                .get()
                .is_none_or(|r| r.capacity() == r.max_capacity())
    }

    /// What this process's clients follow (for the bus).
    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    pub fn set_relay(&self, relay: mpsc::Sender<Arc<Event>>) {
        let _ = self.relay.set(relay);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.local.subscribe()
    }
}
