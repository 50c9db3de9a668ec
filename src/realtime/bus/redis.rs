//! The Redis bus (`EVENT_BUS=redis://…`, Redis ≥ 7 or Valkey): one channel per
//! conversation and one per principal, and each process subscribes only to what its own
//! clients follow (contract §6).
//!
//! - **Publishing.** Each committed event goes to its conversation's channel
//!   (`colloquy:c:<conversation_id>`). Events an inbox shows (messages, reads, membership,
//!   conversation changes) also go to the channels of the principals concerned
//!   (`colloquy:p:<principal_id>`): every participant for a message, the reader for a
//!   read, the member for a join or leave. The participants come from a cache refreshed
//!   from the database every [`PARTICIPANTS_FOR`]. A batch is one pipelined round trip.
//! - **Subscribing.** A process subscribes to a conversation's channel when a local
//!   client follows it (a Socket.IO socket in its room, a `/ws` session on it) and to a
//!   principal's channel while one of that principal's sockets is connected. Joins and
//!   connects subscribe at once; every [`LOOK_EVERY`] the subscriptions are compared
//!   with the rooms and sessions, and a channel nobody has followed for [`LINGER`] is
//!   unsubscribed. An event that arrives on a principal's channel for a conversation
//!   this process also follows is dropped (the conversation's channel brought it).
//! - **Failures.** Redis down: sends still commit and are acknowledged; the wake-ups are
//!   lost and the delivery stage reads the messages from the log instead (within
//!   `delivery::WATCHED_SWEEP_EVERY` for a conversation a local client follows). The
//!   listener reconnects with backoff and subscribes again to everything wanted; the
//!   relay reconnects at its next batch. A silent connection is caught by a ping every
//!   [`LOOK_EVERY`].

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use socketioxide::SocketIo;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    core::events::{Event, EventKind, Interest, Topic},
    state::AppState,
};

const ENGINE: &str = "redis";
/// Larger events go by reference (Redis takes more; this keeps one fan-out cheap).
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// How often subscriptions are compared with what local clients follow (and the
/// connection pinged).
pub const LOOK_EVERY: Duration = Duration::from_secs(2);
/// A channel stays subscribed this long after its last local follower left, so a client
/// that reconnects or rejoins at once finds it still there.
pub const LINGER: Duration = Duration::from_secs(5);
/// How long a conversation's participant list is used before it is read again.
pub const PARTICIPANTS_FOR: Duration = Duration::from_secs(5);
/// Any one Redis command (connect, publish, subscribe, ping).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const CHUNK: usize = 512;

const CONVERSATION_PREFIX: &str = "colloquy:c:";
const PRINCIPAL_PREFIX: &str = "colloquy:p:";

fn channel(topic: &Topic) -> String {
    match topic {
        Topic::Conversation(id) => format!("{CONVERSATION_PREFIX}{id}"),
        Topic::Principal(id) => format!("{PRINCIPAL_PREFIX}{id}"),
    }
}

/// Conversations whose channel this process is subscribed to (shared by the listener's
/// subscription bookkeeping and its duplicate check).
type Followed = Arc<Mutex<HashSet<Uuid>>>;

pub fn spawn(
    state: &AppState,
    node: Uuid,
    url: &str,
    io: SocketIo,
    namespaces: Vec<String>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let client = redis::Client::open(url)
        .context("EVENT_BUS is not a valid Redis URL (redis://[:password@]host[:port][/db])")?;
    let (tx, rx) = mpsc::channel::<Arc<Event>>(16_384);
    state.events.set_relay(tx);
    let (hints_tx, hints) = mpsc::channel::<Topic>(65_536);
    state.events.interest().set_hints(hints_tx);
    let listener = Listener {
        state: state.clone(),
        client: client.clone(),
        node,
        io,
        namespaces,
        wanted: HashMap::new(),
        followed: Followed::default(),
    };
    Ok(vec![
        tokio::spawn(relay(state.clone(), client, node, rx)),
        tokio::spawn(listener.run(hints)),
    ])
}

// ---------------------------------------------------------------- publishing

async fn relay(state: AppState, client: redis::Client, node: Uuid, rx: mpsc::Receiver<Arc<Event>>) {
    let mut publisher = Publisher {
        client,
        connection: None,
        participants: Participants::default(),
        // A connection of its own (as the Postgres bus's relay has): reading participants
        // never waits behind the delivery stage's log reads or requests.
        db: crate::startup::side_pool(&state.config, 1, "colloquy-relay")
            .unwrap_or_else(|_| state.delivery_db.clone()),
        node,
    };
    let mut batches = super::Batches::new(rx, state.closing.clone());
    while let Some(batch) = batches.next().await {
        publisher.publish(batch).await;
    }
}

struct Publisher {
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    participants: Participants,
    db: PgPool,
    node: Uuid,
}

impl Publisher {
    async fn publish(&mut self, batch: &[Arc<Event>]) {
        let wanted: HashSet<Uuid> = batch
            .iter()
            .filter(|e| to_every_participant(e.kind))
            .map(|e| e.conversation_id)
            .collect();
        // Never read: read now (once per conversation). Read long ago: used as it is and
        // read again beside, so publishing does not wait for the database.
        let (missing, stale) = self.participants.needs(&wanted);
        if !missing.is_empty() {
            self.participants.load(&self.db, &missing).await;
        }
        if !stale.is_empty() {
            self.participants.refresh_beside(&self.db, stale);
        }
        let participants = self.participants.of(&wanted);
        let mut pipe = redis::pipe();
        let mut n = 0;
        for event in batch {
            let Some(payload) = super::encode(self.node, event, MAX_PAYLOAD_BYTES) else {
                continue;
            };
            pipe.publish(
                channel(&Topic::Conversation(event.conversation_id)),
                &payload,
            )
            .ignore();
            n += 1;
            for principal in inbox_recipients(event, &participants) {
                pipe.publish(format!("{PRINCIPAL_PREFIX}{principal}"), &payload)
                    .ignore();
                n += 1;
            }
            if matches!(
                event.kind,
                EventKind::ParticipantJoined
                    | EventKind::ParticipantLeft
                    | EventKind::ConversationDeleted
            ) {
                self.participants.forget(event.conversation_id);
            }
        }
        if n == 0 {
            return;
        }
        if self.connection.is_none() {
            let connect = self.client.get_multiplexed_async_connection();
            self.connection = tokio::time::timeout(COMMAND_TIMEOUT, connect)
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(connection) = self.connection.as_mut() else {
            crate::metrics::bus_publish_failed(ENGINE, n);
            tracing::debug!(
                wake_ups = n,
                "Redis is unreachable; other processes read these messages from the log"
            );
            return;
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(connection)).await {
            Ok(Ok(())) => crate::metrics::bus_published(ENGINE, n),
            outcome => {
                self.connection = None;
                crate::metrics::bus_publish_failed(ENGINE, n);
                let error = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(%error, wake_ups = n, "could not publish to Redis; other processes read these messages from the log");
            }
        }
    }
}

/// Whether every participant's inbox hears of an event of this kind.
fn to_every_participant(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::MessageCreated
            | EventKind::MessageUpdated
            | EventKind::MessageDeleted
            | EventKind::ConversationUpdated
            | EventKind::ConversationDeleted
    )
}

/// The principals whose inbox channel an event also goes to.
fn inbox_recipients<'a>(
    event: &'a Event,
    participants: &'a HashMap<Uuid, Arc<[String]>>,
) -> Vec<&'a str> {
    let d = &event.data;
    let one = match event.kind {
        kind if to_every_participant(kind) => {
            return participants
                .get(&event.conversation_id)
                .map(|p| p.iter().map(String::as_str).collect())
                .unwrap_or_default();
        }
        EventKind::MessagesRead => d["user_id"].as_str(),
        EventKind::ParticipantJoined => d["participant"]["participant_id"].as_str(),
        EventKind::ParticipantLeft => d["participant_id"].as_str(),
        _ => None,
    };
    one.into_iter().collect()
}

/// A conversation's participants, and when they were read.
type Read = (Arc<[String]>, Instant);

/// Conversation → its participants.
#[derive(Clone, Default)]
struct Participants {
    known: Arc<Mutex<HashMap<Uuid, Read>>>,
    /// A read beside publishing is under way (one at a time).
    refreshing: Arc<std::sync::atomic::AtomicBool>,
}

impl Participants {
    /// Past this many conversations the cache starts over.
    const MAX: usize = 50_000;

    /// Of `ids`: those never read, and those read more than [`PARTICIPANTS_FOR`] ago.
    fn needs(&self, ids: &HashSet<Uuid>) -> (Vec<Uuid>, Vec<Uuid>) {
        let (mut missing, mut stale) = (Vec::new(), Vec::new());
        if let Ok(known) = self.known.lock() {
            for id in ids {
                match known.get(id) {
                    None => missing.push(*id),
                    Some((_, at)) if at.elapsed() >= PARTICIPANTS_FOR => stale.push(*id),
                    Some(_) => {}
                }
            }
        }
        (missing, stale)
    }

    fn of(&self, ids: &HashSet<Uuid>) -> HashMap<Uuid, Arc<[String]>> {
        self.known
            .lock()
            .map(|known| {
                ids.iter()
                    .filter_map(|id| Some((*id, known.get(id)?.0.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn forget(&self, id: Uuid) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(&id);
        }
    }

    fn refresh_beside(&self, db: &PgPool, ids: Vec<Uuid>) {
        use std::sync::atomic::Ordering;
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (this, db) = (self.clone(), db.clone());
        tokio::spawn(async move {
            this.load(&db, &ids).await;
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Reads the participants of `ids`; on failure the inbox wake-ups go to those known
    /// (inbox events are best effort; the messages themselves are not at stake).
    async fn load(&self, db: &PgPool, ids: &[Uuid]) {
        let read = sqlx::query_as::<_, (Uuid, String)>(
            "SELECT conversation_id, participant_id FROM participants WHERE conversation_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(db);
        let rows = match tokio::time::timeout(COMMAND_TIMEOUT, read).await {
            Ok(Ok(rows)) => rows,
            _ => {
                tracing::debug!("could not read participants for inbox wake-ups");
                return;
            }
        };
        let mut lists: HashMap<Uuid, Vec<String>> =
            ids.iter().map(|id| (*id, Vec::new())).collect();
        for (id, participant) in rows {
            if let Some(list) = lists.get_mut(&id) {
                list.push(participant);
            }
        }
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        if known.len() + ids.len() > Self::MAX {
            known.retain(|_, (_, at)| at.elapsed() < PARTICIPANTS_FOR);
            if known.len() + ids.len() > Self::MAX {
                known.clear();
            }
        }
        let now = Instant::now();
        for (id, list) in lists {
            known.insert(id, (list.into(), now));
        }
    }
}

// ---------------------------------------------------------------- subscribing

struct Listener {
    state: AppState,
    client: redis::Client,
    node: Uuid,
    io: SocketIo,
    namespaces: Vec<String>,
    /// Every channel wanted, with when a local client last followed it.
    wanted: HashMap<Topic, Instant>,
    followed: Followed,
}

impl Listener {
    async fn run(mut self, mut hints: mpsc::Receiver<Topic>) {
        let mut delay = Duration::from_millis(200);
        loop {
            if self.state.closing.is_cancelled() {
                return;
            }
            let result = self.session(&mut hints, &mut delay).await;
            self.state.bus.set_connected(false);
            if let Ok(mut f) = self.followed.lock() {
                f.clear();
            }
            match result {
                Ok(()) => return,
                Err(e) => {
                    crate::metrics::bus_reconnect(ENGINE);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                        "lost the Redis event bus; live delivery falls back to reading the log until it is back");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.state.closing.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection: subscribes to everything wanted, then receives until it drops.
    async fn session(
        &mut self,
        hints: &mut mpsc::Receiver<Topic>,
        delay: &mut Duration,
    ) -> anyhow::Result<()> {
        let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .context("connecting timed out")??;
        let (mut sink, mut stream) = pubsub.split();
        self.look().await;
        let all: Vec<Topic> = self.wanted.keys().cloned().collect();
        subscribe(&mut sink, &all).await?;
        self.mark_followed(&all, true);
        self.state.bus.set_connected(true);
        *delay = Duration::from_millis(200);
        tracing::debug!(channels = all.len(), "subscribed to the Redis event bus");
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        look.tick().await;
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        anyhow::bail!("the connection closed")
                    };
                    self.received(message.get_channel_name(), message.get_payload_bytes()).await;
                }
                n = hints.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        return Ok(());
                    }
                    let now = Instant::now();
                    let mut new = Vec::new();
                    for topic in batch.drain(..) {
                        if self.wanted.insert(topic.clone(), now).is_none() {
                            new.push(topic);
                        }
                    }
                    if let Err(e) = subscribe(&mut sink, &new).await {
                        for topic in &new {
                            self.wanted.remove(topic);
                        }
                        return Err(e);
                    }
                    self.mark_followed(&new, true);
                }
                _ = look.tick() => {
                    let (new, gone) = self.look().await;
                    subscribe(&mut sink, &new).await?;
                    self.mark_followed(&new, true);
                    unsubscribe(&mut sink, &gone).await?;
                    self.mark_followed(&gone, false);
                    tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>())
                        .await
                        .context("ping timed out")??;
                }
                _ = self.state.closing.cancelled() => return Ok(()),
            }
        }
    }

    async fn received(&self, channel: &str, payload: &[u8]) {
        crate::metrics::bus_received(ENGINE);
        // On a principal's channel: dropped when the conversation's own channel brings
        // it to this process too.
        let on_inbox = channel.starts_with(PRINCIPAL_PREFIX);
        let wanted = |conversation_id: Uuid| {
            !on_inbox
                || !self
                    .followed
                    .lock()
                    .is_ok_and(|f| f.contains(&conversation_id))
        };
        if let Some(event) = super::decode(&self.state, self.node, payload, wanted).await {
            super::deliver(&self.state, event);
        }
    }

    /// Compares what is wanted with what local clients follow now: returns the topics to
    /// subscribe to and the ones nobody has followed for [`LINGER`].
    async fn look(&mut self) -> (Vec<Topic>, Vec<Topic>) {
        let now = Instant::now();
        let mut new = Vec::new();
        for topic in followed_now(&self.io, &self.namespaces, self.state.events.interest()).await {
            if self.wanted.insert(topic.clone(), now).is_none() {
                new.push(topic);
            }
        }
        let gone: Vec<Topic> = self
            .wanted
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > LINGER)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in &gone {
            self.wanted.remove(topic);
        }
        (new, gone)
    }

    fn mark_followed(&self, topics: &[Topic], subscribed: bool) {
        if let Ok(mut f) = self.followed.lock() {
            for topic in topics {
                if let Topic::Conversation(id) = topic {
                    if subscribed {
                        f.insert(*id);
                    } else {
                        f.remove(id);
                    }
                }
            }
            let conversations = f.len();
            crate::metrics::bus_subscriptions("conversation", conversations);
        }
        let principals = self
            .wanted
            .keys()
            .filter(|t| matches!(t, Topic::Principal(_)))
            .count();
        crate::metrics::bus_subscriptions("principal", principals);
    }
}

/// What this process's clients follow right now: the conversations of Socket.IO rooms
/// and `/ws` sessions, and the principals of connected sockets.
async fn followed_now(io: &SocketIo, namespaces: &[String], interest: &Interest) -> HashSet<Topic> {
    let mut topics: HashSet<Topic> = interest
        .ws_conversations()
        .into_iter()
        .map(Topic::Conversation)
        .collect();
    for ns in namespaces {
        let Some(op) = io.of(ns.as_str()) else {
            continue;
        };
        for room in op.rooms().await.unwrap_or_default() {
            if let Ok(id) = Uuid::parse_str(&room) {
                topics.insert(Topic::Conversation(id));
            } else if let Some(principal) = super::super::inbox::principal_of(&room) {
                topics.insert(Topic::Principal(principal.to_owned()));
            }
        }
    }
    topics
}

async fn subscribe(sink: &mut PubSubSink, topics: &[Topic]) -> anyhow::Result<()> {
    for chunk in topics.chunks(CHUNK) {
        let channels: Vec<String> = chunk.iter().map(channel).collect();
        tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(channels))
            .await
            .context("subscribing timed out")??;
    }
    Ok(())
}

async fn unsubscribe(sink: &mut PubSubSink, topics: &[Topic]) -> anyhow::Result<()> {
    for chunk in topics.chunks(CHUNK) {
        let channels: Vec<String> = chunk.iter().map(channel).collect();
        tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(channels))
            .await
            .context("unsubscribing timed out")??;
    }
    Ok(())
}
