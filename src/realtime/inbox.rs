//! The inbox channel (contract §4): every socket of a principal, joined to a conversation
//! or not, hears when one of its conversations changes.
//!
//! - `inboxUpdated {conversation_id, last_seq, unread_count, last_message}` after a message,
//!   a read (on any of the principal's devices: unread counts stay in sync), or a change
//!   of the conversation;
//! - `conversationAdded {conversation_id, conversation}` when the principal is added to a
//!   conversation (or creates one), `conversationRemoved {conversation_id}` when it leaves
//!   one or it is deleted.
//!
//! Each authenticated socket is in its principal's inbox room. One task follows the
//! delivery stage's events and keeps, per conversation it has seen, the participants'
//! read horizons (read once from the database, then kept current from the events), so a
//! message costs no query. `inboxUpdated` is coalesced: a principal gets at most one per
//! conversation every [`COALESCE`] (100 ms), carrying the latest state — a busy
//! conversation does not double every socket's traffic. Inbox events are best effort,
//! like reads and edits: a client that reconnects re-reads `GET /conversations` (or
//! `/unread`).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use socketioxide::SocketIo;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::{
    core::{
        conversations,
        events::{Event, EventKind},
    },
    state::AppState,
};

/// The room every socket of `principal_id` is in.
pub fn room(principal_id: &str) -> String {
    format!("{ROOM_PREFIX}{principal_id}")
}

const ROOM_PREFIX: &str = "inbox:";

/// The principal whose inbox `room` is, if it is one.
pub fn principal_of(room: &str) -> Option<&str> {
    room.strip_prefix(ROOM_PREFIX)
}

/// Conversations whose read state is kept; past this the cache starts over.
const MAX_CACHED: usize = 50_000;
/// How long a database read for the inbox may take before the update is skipped.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// `inboxUpdated` for one principal and conversation goes out at most this often.
pub const COALESCE: Duration = Duration::from_millis(100);

/// What the inbox knows of one conversation.
struct Known {
    last_seq: i64,
    /// The message at `last_seq` (shared with the event that brought it: no copy per
    /// message); `None` when the conversation has none.
    last_message: Option<Arc<Event>>,
    /// Participant → last read `seq`.
    horizons: HashMap<String, i64>,
    used: Instant,
}

pub fn spawn(
    state: &AppState,
    io: SocketIo,
    namespaces: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = state.events.subscribe();
    let state = state.clone();
    tokio::spawn(async move {
        let mut known: HashMap<Uuid, Known> = HashMap::new();
        let mut dirty = Dirty::default();
        let mut tick = tokio::time::interval(COALESCE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = rx.recv() => match received {
                    Ok(event) => handle(&state, &io, &namespaces, &mut known, &mut dirty, &event).await,
                    // Skipped events: what is known may be stale; read it again when needed.
                    Err(RecvError::Lagged(_)) => known.clear(),
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick(), if !dirty.is_empty() => {
                    for id in std::mem::take(&mut dirty.everyone) {
                        if let Some(k) = known.get(&id) {
                            for principal in k.horizons.keys() {
                                updated(&io, &namespaces, id, k, principal).await;
                            }
                        }
                    }
                    for (id, principal) in std::mem::take(&mut dirty.one) {
                        if let Some(k) = known.get(&id) {
                            updated(&io, &namespaces, id, k, &principal).await;
                        }
                    }
                }
            }
        }
    })
}

/// Whether any socket of `principal_id` is on this process.
fn online(io: &SocketIo, namespaces: &[String], principal_id: &str) -> bool {
    namespaces.iter().any(|ns| {
        io.of(ns.as_str())
            .is_some_and(|op| !op.within(room(principal_id)).sockets().is_empty())
    })
}

async fn emit(
    io: &SocketIo,
    namespaces: &[String],
    principal_id: &str,
    name: &'static str,
    data: &(impl serde::Serialize + ?Sized),
) {
    for ns in namespaces {
        if let Some(op) = io.of(ns.as_str())
            && let Err(e) = op.to(room(principal_id)).emit(name, data).await
        {
            tracing::debug!(error = %e, event = name, "some sockets missed an inbox event");
        }
    }
}

/// Sends `inboxUpdated` to `principal`'s sockets, if any is on this process.
async fn updated(io: &SocketIo, namespaces: &[String], id: Uuid, known: &Known, principal: &str) {
    // Only to participants as they are now (one removed since the update was marked
    // hears nothing more of the conversation).
    let Some(read) = known.horizons.get(principal).copied() else {
        return;
    };
    if !online(io, namespaces, principal) {
        return;
    }
    let data = InboxUpdated {
        conversation_id: id,
        last_seq: known.last_seq,
        unread_count: (known.last_seq - read).max(0),
        last_message: known.last_message.as_ref().map(|e| &e.data),
    };
    emit(io, namespaces, principal, "inboxUpdated", &data).await;
}

#[derive(serde::Serialize)]
struct InboxUpdated<'a> {
    conversation_id: Uuid,
    last_seq: i64,
    unread_count: i64,
    last_message: Option<&'a Value>,
}

/// What awaits the next tick: conversations whose every participant hears of them, and
/// single (conversation, principal) pairs (a read on one principal's device).
#[derive(Default)]
struct Dirty {
    everyone: HashSet<Uuid>,
    one: HashSet<(Uuid, String)>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.everyone.is_empty() && self.one.is_empty()
    }

    fn forget(&mut self, id: Uuid) {
        self.everyone.remove(&id);
        self.one.retain(|(c, _)| *c != id);
    }
}

/// Marks every participant of the conversation for an `inboxUpdated` at the next tick.
fn mark_all(dirty: &mut Dirty, id: Uuid) {
    dirty.everyone.insert(id);
}

async fn load(state: &AppState, id: Uuid) -> Option<Known> {
    let read = async {
        let horizons: Vec<(String, i64)> = sqlx::query_as(
            "SELECT participant_id, last_read_seq FROM participants WHERE conversation_id = $1 LIMIT 10000",
        )
        .bind(id)
        .fetch_all(&state.db)
        .await?;
        let last_seq: Option<(i64,)> =
            sqlx::query_as("SELECT last_seq FROM conversations WHERE id = $1")
                .bind(id)
                .fetch_optional(&state.db)
                .await?;
        Ok::<_, sqlx::Error>((horizons, last_seq))
    };
    let (horizons, last_seq) = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok((horizons, Some((last_seq,))))) => (horizons, last_seq),
        _ => return None,
    };
    // The last message as stored, so `last_seq` and `last_message` always agree.
    let last = tokio::time::timeout(
        READ_TIMEOUT,
        crate::core::history::since(state, id, last_seq - 1, 1),
    )
    .await;
    let last_message = match last {
        Ok(Ok(mut m)) if !m.is_empty() => {
            let data = serde_json::to_value(m.remove(0)).unwrap_or_default();
            Some(Arc::new(Event::new(
                EventKind::MessageCreated,
                id,
                String::new(),
                data,
                Default::default(),
            )))
        }
        _ => None,
    };
    Some(Known {
        last_seq,
        last_message,
        horizons: horizons.into_iter().collect(),
        used: Instant::now(),
    })
}

async fn known_for<'a>(
    state: &AppState,
    known: &'a mut HashMap<Uuid, Known>,
    id: Uuid,
) -> Option<&'a mut Known> {
    if !known.contains_key(&id) {
        let loaded = load(state, id).await?;
        if known.len() >= MAX_CACHED {
            // Keep the busiest half.
            let mut ages: Vec<Instant> = known.values().map(|k| k.used).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            known.retain(|_, k| k.used >= cut);
        }
        known.insert(id, loaded);
    }
    let k = known.get_mut(&id)?;
    k.used = Instant::now();
    Some(k)
}

async fn handle(
    state: &AppState,
    io: &SocketIo,
    namespaces: &[String],
    known: &mut HashMap<Uuid, Known>,
    dirty: &mut Dirty,
    event: &Arc<Event>,
) {
    let id = event.conversation_id;
    let d = &event.data;
    match event.kind {
        EventKind::MessageCreated => {
            let Some(seq) = d["seq"].as_i64() else { return };
            let Some(k) = known_for(state, known, id).await else {
                return;
            };
            // Events come in seq order; one older than what a fresh load read changes
            // nothing but still reports (coalesced) the state as it is.
            if seq >= k.last_seq || k.last_message.is_none() {
                k.last_seq = k.last_seq.max(seq);
                if seq == k.last_seq {
                    k.last_message = Some(event.clone());
                }
            }
            // Sending moves the sender's own read horizon.
            if let Some(sender) = d["sender_id"].as_str()
                && let Some(h) = k.horizons.get_mut(sender)
            {
                *h = (*h).max(seq);
            }
            mark_all(dirty, id);
        }
        EventKind::MessagesRead => {
            let Some(user) = d["user_id"].as_str() else {
                return;
            };
            let Some(k) = known_for(state, known, id).await else {
                return;
            };
            if let Some(seq) = d["last_read_seq"].as_i64() {
                k.horizons.insert(user.to_owned(), seq);
            }
            dirty.one.insert((id, user.to_owned()));
        }
        EventKind::ConversationUpdated if known_for(state, known, id).await.is_some() => {
            mark_all(dirty, id);
        }
        EventKind::ParticipantJoined => {
            known.remove(&id);
            let Some(principal) = d["participant"]["participant_id"].as_str() else {
                return;
            };
            if !online(io, namespaces, principal) {
                return;
            }
            let fetched = async {
                let mut conn = state.db.acquire().await.ok()?;
                conversations::fetch(&mut conn, principal, id).await.ok()
            };
            if let Ok(Some(conversation)) = tokio::time::timeout(READ_TIMEOUT, fetched).await {
                let data = json!({ "conversation_id": id, "conversation": conversation });
                emit(io, namespaces, principal, "conversationAdded", &data).await;
            }
        }
        EventKind::ParticipantLeft => {
            known.remove(&id);
            dirty.forget(id);
            if let Some(principal) = d["participant_id"].as_str() {
                let data = json!({ "conversation_id": id, "reason": "removed" });
                emit(io, namespaces, principal, "conversationRemoved", &data).await;
            }
        }
        EventKind::ConversationDeleted => {
            dirty.forget(id);
            if let Some(k) = known.remove(&id) {
                let data = json!({ "conversation_id": id, "reason": "deleted" });
                for principal in k.horizons.keys() {
                    emit(io, namespaces, principal, "conversationRemoved", &data).await;
                }
            }
        }
        // The bus may have missed a removal: what is known of the conversation's
        // participants is read again when next needed.
        EventKind::AccessChanged if id.is_nil() => known.clear(),
        EventKind::AccessChanged => {
            known.remove(&id);
        }
        // An edit or delete of the message the inbox shows: it shows the new state (a
        // deleted message's text is gone from storage and from here too).
        EventKind::MessageUpdated | EventKind::MessageDeleted => {
            if let Some(k) = known.get_mut(&id)
                && k.last_message
                    .as_ref()
                    .is_some_and(|m| m.data["id"] == d["id"])
            {
                if d["seq"].is_i64() {
                    k.last_message = Some(event.clone());
                    mark_all(dirty, id);
                } else {
                    known.remove(&id);
                }
            }
        }
        _ => {}
    }
}
