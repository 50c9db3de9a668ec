//! The cross-process event bus: how processes sharing one database wake each other
//! (contract §6).
//!
//! Every process relays the events its own writers commit and hands the ones it receives
//! from other processes to its delivery stage (`realtime::delivery`). What travels is a
//! wake-up: the delivery stage orders messages by `seq`, drops repeats and reads whatever
//! a lost wake-up left out from the log, so a bus that drops, repeats or stops costs
//! latency, never a message. Two engines, chosen by `EVENT_BUS`:
//! - [`postgres`] (default): LISTEN/NOTIFY on one channel of the same database; every
//!   process hears every event of the cluster. Nothing else to run.
//! - [`redis`]: one channel per conversation and one per principal (its inbox); each
//!   process subscribes only to what its own clients follow, so its traffic grows with
//!   its own clients, not with the whole cluster's.

pub mod postgres;
pub mod redis;

use std::sync::{Arc, atomic::Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide::SocketIo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::EventBus,
    core::{
        conversations,
        events::{Event, EventKind},
        messages,
    },
    state::AppState,
};

/// What one process tells the others: the event (or, past the engine's size limit, a
/// reference to re-read it by) and who sent it, so a process skips its own.
/// (Who sent it, `node` and `wake`, is read first, by [`Peek`].)
#[derive(Deserialize)]
struct Envelope {
    event: Event,
    /// The event's `data` was left out for size; re-read it by id.
    #[serde(default)]
    by_reference: bool,
}

/// [`Envelope`] as it is written: the event borrowed, not copied.
#[derive(Serialize)]
struct Outgoing<'a> {
    node: Uuid,
    /// The publisher's number for this wake-up (Redis: its copies on several channels
    /// carry the same, so a receiver can tell them apart from new ones).
    wake: u64,
    event: &'a Event,
    by_reference: bool,
}

/// The envelope as JSON, at most `max_bytes` long (larger events go by reference).
fn encode(node: Uuid, wake: u64, event: &Event, max_bytes: usize) -> Option<String> {
    if event.kind == EventKind::MessageCreated {
        // Written once and kept with the event: the webhook dispatcher sends the same text.
        event.data_json();
    }
    let full = serde_json::to_string(&Outgoing {
        node,
        wake,
        event,
        by_reference: false,
    })
    .ok()?;
    if full.len() <= max_bytes {
        return Some(full);
    }
    by_reference(node, wake, event)
}

/// The envelope without the event's data: the receiver re-reads it by id.
fn by_reference(node: Uuid, wake: u64, event: &Event) -> Option<String> {
    let slim = Event::new(
        event.kind,
        event.conversation_id,
        event.room.clone(),
        serde_json::json!({ "id": event.data.get("id") }),
        event.origin.clone(),
    );
    serde_json::to_string(&Outgoing {
        node,
        wake,
        event: &slim,
        by_reference: true,
    })
    .ok()
}

/// What a receiver looks at first (the rest is skipped without being built): its own
/// wake-ups (both buses read them back) and copies it already has are dropped on this.
#[derive(Deserialize)]
struct Peek {
    node: Uuid,
    #[serde(default)]
    wake: u64,
}

fn peek(payload: &[u8]) -> Option<Peek> {
    let peeked = serde_json::from_slice::<Peek>(payload).ok();
    if peeked.is_none() {
        tracing::warn!("ignoring an unreadable event from the bus");
    }
    peeked
}

/// Longest a by-reference event's re-read may hold up the listener.
const REHYDRATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The event a received envelope carries (re-read when it came by reference); `None`
/// when it is unreadable or the reference no longer resolves (the delivery stage reads
/// a message it then lacks from the log).
async fn open(state: &AppState, payload: &[u8]) -> Option<Event> {
    let Ok(envelope) = serde_json::from_slice::<Envelope>(payload) else {
        tracing::warn!("ignoring an unreadable event from the bus");
        return None;
    };
    if !envelope.by_reference {
        return Some(envelope.event);
    }
    tokio::time::timeout(REHYDRATE_TIMEOUT, rehydrate(state, envelope.event))
        .await
        .ok()
        .flatten()
}

async fn rehydrate(state: &AppState, mut event: Event) -> Option<Event> {
    let id = event
        .data
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())?;
    event.data = match event.kind {
        EventKind::MessageCreated
        | EventKind::MessageUpdated
        | EventKind::MessageDeleted
        | EventKind::ReactionUpdated => {
            serde_json::to_value(messages::fetch(&state.delivery_db, id).await.ok()?).ok()?
        }
        EventKind::ConversationUpdated => {
            let mut conn = state.delivery_db.acquire().await.ok()?;
            serde_json::to_value(conversations::fetch(&mut conn, "", id).await.ok()?).ok()?
        }
        _ => return None,
    };
    Some(event)
}

/// Which engine runs and how it is, for `/readyz` and the metrics.
#[derive(Debug)]
pub struct Status {
    pub engine: &'static str,
    state: std::sync::atomic::AtomicU8,
}

const DEGRADED: u8 = 0;
const CONNECTED: u8 = 1;
const MISCONFIGURED: u8 = 2;

impl Status {
    pub fn new(bus: &EventBus) -> Self {
        Self {
            engine: match bus {
                EventBus::Postgres => "postgres",
                EventBus::Redis(_) => "redis",
            },
            state: std::sync::atomic::AtomicU8::new(DEGRADED),
        }
    }

    /// `ok`, `degraded` (unreachable: live delivery reads the log) or `misconfigured`
    /// (the bus refused the credentials or TLS: it will not heal by itself).
    pub fn describe(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            CONNECTED => "ok",
            MISCONFIGURED => "misconfigured",
            _ => "degraded",
        }
    }

    fn set_connected(&self, up: bool) {
        self.state
            .store(if up { CONNECTED } else { DEGRADED }, Ordering::Release);
        crate::metrics::bus_connected(self.engine, up);
    }

    fn set_misconfigured(&self) {
        self.state.store(MISCONFIGURED, Ordering::Release);
        crate::metrics::bus_connected(self.engine, false);
    }
}

/// Starts the engine `EVENT_BUS` names: its relay (outbound) and listener (inbound).
pub fn spawn(
    state: &AppState,
    io: SocketIo,
    namespaces: Vec<String>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let node = Uuid::new_v4();
    Ok(match state.config.bus()? {
        EventBus::Postgres => postgres::spawn(state, node),
        EventBus::Redis(url) => redis::spawn(state, node, url.expose(), io, namespaces)?,
    })
}

/// What both engines' relays read: whatever has accumulated, as one batch. On shutdown
/// (`closing`, after every answered send was delivered) what is left comes as a last
/// batch, then `None`.
struct Batches {
    rx: mpsc::Receiver<Arc<Event>>,
    closing: CancellationToken,
    batch: Vec<Arc<Event>>,
    done: bool,
}

impl Batches {
    fn new(rx: mpsc::Receiver<Arc<Event>>, closing: CancellationToken) -> Self {
        Self {
            rx,
            closing,
            batch: Vec::with_capacity(256),
            done: false,
        }
    }

    async fn next(&mut self) -> Option<&[Arc<Event>]> {
        self.batch.clear();
        if self.done {
            return None;
        }
        let n = tokio::select! {
            n = self.rx.recv_many(&mut self.batch, 256) => n,
            _ = self.closing.cancelled() => 0,
        };
        if n > 0 {
            return Some(&self.batch);
        }
        self.done = true;
        while let Ok(e) = self.rx.try_recv() {
            self.batch.push(e);
        }
        (!self.batch.is_empty()).then_some(&self.batch)
    }
}

/// Shared by the engines: a received event goes to this process's delivery stage.
fn deliver(state: &AppState, event: Event) {
    state.events.deliver_local(Arc::new(event));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::events::Origin;

    fn message() -> Event {
        Event::new(
            EventKind::MessageCreated,
            Uuid::now_v7(),
            "room-1".into(),
            json!({ "id": Uuid::nil(), "seq": 7, "text": "a \"quoted\" line\n", "platform_context": { "metadata": { "source": "ws" } } }),
            Origin {
                socket_id: Some("sid".into()),
                echo: false,
            },
        )
    }

    /// A message goes out with its data written once and kept with the event; what
    /// arrives is the event as it was, whether its text was written before or not.
    #[test]
    fn an_envelope_reads_back_as_the_event_it_carried() {
        let event = message();
        let node = Uuid::now_v7();
        let plain = serde_json::to_string(&event).expect("event");
        let wire = encode(node, 3, &event, 7900).expect("encoded");
        assert!(event.json.written(), "the message's text was kept");
        assert_eq!(serde_json::to_string(&event).expect("event"), plain);
        let peeked = peek(wire.as_bytes()).expect("peek");
        assert_eq!((peeked.node, peeked.wake), (node, 3));
        let back: Envelope = serde_json::from_str(&wire).expect("envelope");
        assert!(!back.by_reference);
        assert_eq!(back.event.data, event.data);
        assert_eq!(back.event.kind, event.kind);
        assert_eq!(back.event.room, event.room);
        assert_eq!(back.event.origin.socket_id.as_deref(), Some("sid"));
        assert!(!back.event.json.written());
    }

    /// Past the size limit only the id travels, even when the full text is kept.
    #[test]
    fn a_large_event_goes_by_reference_without_its_kept_text() {
        let mut event = message();
        event.data["text"] = json!("x".repeat(10_000));
        event.data_json();
        let wire = encode(Uuid::now_v7(), 0, &event, 7900).expect("encoded");
        assert!(wire.len() < 1000, "{} bytes", wire.len());
        let back: Envelope = serde_json::from_str(&wire).expect("envelope");
        assert!(back.by_reference);
        assert_eq!(back.event.data, json!({ "id": Uuid::nil() }));
    }
}
