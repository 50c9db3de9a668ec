//! Cross-process event relay over Postgres LISTEN/NOTIFY.
//!
//! Every process publishes its committed events on one channel and listens to it; events
//! from other processes are delivered to local sockets and `/ws` sessions. One bus serves
//! all transports, so a message sent over REST on process A reaches a Socket.IO client on
//! B and a `/ws` bot on C. NOTIFY payloads are limited to 8000 bytes: larger events are
//! sent as a reference and re-read from the database by the receiver.
//!
//! A notification is a wake-up, not the record: a process that loses its LISTEN
//! connection (or a relay batch that fails) misses wake-ups, and its delivery stage reads
//! the messages from the log instead (`realtime::delivery`). The bus has its own small
//! pool (`AppState::delivery_db`; the relay a connection of its own), so it never waits
//! behind requests for a connection,
//! and it keeps running until shutdown has delivered every answered send.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    core::{
        conversations,
        events::{Event, EventKind},
        messages,
    },
    state::AppState,
};

pub const CHANNEL: &str = "colloquy_events";
const MAX_NOTIFY_BYTES: usize = 7900;

#[derive(Serialize, Deserialize)]
struct Envelope {
    node: Uuid,
    event: Event,
    /// The event's `data` was left out for size; re-read it by id.
    #[serde(default)]
    by_reference: bool,
}

fn encode(node: Uuid, event: &Event) -> Option<String> {
    let full = serde_json::to_string(&Envelope {
        node,
        event: event.clone(),
        by_reference: false,
    })
    .ok()?;
    if full.len() <= MAX_NOTIFY_BYTES {
        return Some(full);
    }
    let mut slim = event.clone();
    slim.data = serde_json::json!({ "id": event.data.get("id") });
    serde_json::to_string(&Envelope {
        node,
        event: slim,
        by_reference: true,
    })
    .ok()
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

/// Starts the relay (outbound) and the listener (inbound).
pub fn spawn(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let node = Uuid::new_v4();
    let (tx, rx) = mpsc::channel::<Arc<Event>>(16_384);
    state.events.set_relay(tx);
    vec![
        tokio::spawn(relay(
            // The relay's own connection: sending wake-ups never waits for one.
            crate::startup::side_pool(&state.config, 1, "colloquy-relay")
                .unwrap_or_else(|_| state.delivery_db.clone()),
            node,
            rx,
            state.closing.clone(),
        )),
        tokio::spawn(listen(state.clone(), node)),
    ]
}

/// Sends queued events, batching whatever has accumulated into one statement.
async fn relay(
    db: PgPool,
    node: Uuid,
    mut rx: mpsc::Receiver<Arc<Event>>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(256);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, 256) => n,
            _ = shutdown.cancelled() => 0,
        };
        if n == 0 && batch.is_empty() {
            // Drain what is left, then stop.
            if shutdown.is_cancelled() {
                while let Ok(e) = rx.try_recv() {
                    batch.push(e);
                }
                if !batch.is_empty() {
                    send(&db, node, &batch).await;
                }
                return;
            }
            continue;
        }
        send(&db, node, &batch).await;
        batch.clear();
    }
}

async fn send(db: &PgPool, node: Uuid, batch: &[Arc<Event>]) {
    let payloads: Vec<String> = batch.iter().filter_map(|e| encode(node, e)).collect();
    let result = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(&payloads)
        .execute(db)
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, events = payloads.len(), "could not relay events to other processes");
    }
}

async fn listen(state: AppState, node: Uuid) {
    let mut delay = Duration::from_millis(200);
    loop {
        if state.closing.is_cancelled() {
            return;
        }
        match run_listener(&state, node).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "event listener lost its connection");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = state.closing.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn run_listener(state: &AppState, node: Uuid) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(&state.delivery_db).await?;
    listener.listen(CHANNEL).await?;
    tracing::debug!("listening for events from other processes");
    loop {
        let notification = tokio::select! {
            n = listener.try_recv() => n?,
            _ = state.closing.cancelled() => return Ok(()),
        };
        // `None`: the connection dropped; events may have been missed (clients gap-fill).
        let Some(notification) = notification else {
            anyhow::bail!("listen connection closed")
        };
        let Ok(envelope) = serde_json::from_str::<Envelope>(notification.payload()) else {
            tracing::warn!("ignoring an unreadable event notification");
            continue;
        };
        if envelope.node == node {
            continue;
        }
        let event = if envelope.by_reference {
            match rehydrate(state, envelope.event).await {
                Some(e) => e,
                None => continue,
            }
        } else {
            envelope.event
        };
        state.events.deliver_local(Arc::new(event));
    }
}
