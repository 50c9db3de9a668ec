//! The default bus: Postgres LISTEN/NOTIFY on the same database (contract §6).
//!
//! Every process publishes its committed events on one channel and listens to it, so
//! every process hears every event of the cluster (and decodes it, whether or not one of
//! its clients follows that conversation): the right default for a few processes, with
//! nothing else to run. NOTIFY payloads are limited to 8000 bytes: larger events are sent
//! as a reference and re-read from the database by the receiver.
//!
//! The bus has its own small pool (`AppState::delivery_db`; the relay a connection of its
//! own), so it never waits behind requests for a connection, and it keeps running until
//! shutdown has delivered every answered send.

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{core::events::Event, state::AppState};

pub const CHANNEL: &str = "colloquy_events";
/// NOTIFY payloads stop at 8000 bytes; larger events go by reference.
const MAX_NOTIFY_BYTES: usize = 7900;

/// Starts the relay (outbound) and the listener (inbound).
pub fn spawn(state: &AppState, node: Uuid) -> Vec<tokio::task::JoinHandle<()>> {
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
async fn relay(db: PgPool, node: Uuid, rx: mpsc::Receiver<Arc<Event>>, closing: CancellationToken) {
    let mut batches = super::Batches::new(rx, closing);
    while let Some(batch) = batches.next().await {
        send(&db, node, batch).await;
    }
}

async fn send(db: &PgPool, node: Uuid, batch: &[Arc<Event>]) {
    let payloads: Vec<String> = batch
        .iter()
        .filter_map(|e| super::encode(node, 0, e, MAX_NOTIFY_BYTES))
        .collect();
    let result = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(&payloads)
        .execute(db)
        .await;
    match result {
        Ok(_) => crate::metrics::bus_published("postgres", payloads.len()),
        Err(e) => {
            crate::metrics::bus_publish_failed("postgres", payloads.len());
            tracing::warn!(error = %e, events = payloads.len(), "could not relay events to other processes");
        }
    }
}

async fn listen(state: AppState, node: Uuid) {
    let mut delay = Duration::from_millis(200);
    let mut first = true;
    loop {
        if state.closing.is_cancelled() {
            return;
        }
        let result = run_listener(&state, node, std::mem::take(&mut first)).await;
        state.bus.set_connected(false);
        match result {
            Ok(()) => return,
            Err(e) => {
                crate::metrics::bus_reconnect("postgres");
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

async fn run_listener(state: &AppState, node: Uuid, first: bool) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(&state.delivery_db).await?;
    listener.listen(CHANNEL).await?;
    state.bus.set_connected(true);
    if !first {
        // Removals notified while the connection was down were missed: who may still
        // read what is checked again (messages come back from the log by themselves).
        state.events.recheck(Uuid::nil());
    }
    tracing::debug!("listening for events from other processes");
    loop {
        let notification = tokio::select! {
            n = listener.try_recv() => n?,
            _ = state.closing.cancelled() => return Ok(()),
        };
        // `None`: the connection dropped; events may have been missed (the delivery
        // stage reads them from the log).
        let Some(notification) = notification else {
            anyhow::bail!("listen connection closed")
        };
        crate::metrics::bus_received("postgres");
        let payload = notification.payload().as_bytes();
        if super::peek(payload).is_some_and(|p| p.node != node)
            && let Some(event) = super::open(state, payload).await
        {
            super::deliver(state, event);
        }
    }
}
