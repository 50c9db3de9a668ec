//! The Redis bus (`EVENT_BUS=redis://…`, Redis ≥ 7 or Valkey): one channel per
//! conversation and one per principal, and each process subscribes only to what its own
//! clients follow (contract §6).
//!
//! - **Publishing.** Each committed event goes to its conversation's channel
//!   (`colloquy:c:<conversation_id>`). Events an inbox shows (messages, reads, membership,
//!   conversation changes) also go to the channels of the principals concerned
//!   (`colloquy:p:<principal_id>`): every participant for a message (up to
//!   [`MAX_INBOX_FANOUT`]), the reader for a read, the member for a join or leave. Those
//!   copies carry the event when it is small and a reference otherwise. The participants
//!   come from a cache read at most every [`PARTICIPANTS_FOR`]. A batch is one pipelined
//!   round trip (split past [`PIPELINE_COMMANDS`]).
//! - **Subscribing.** A process subscribes to a conversation's channel when a local
//!   client follows it (a Socket.IO socket in its room, a `/ws` session on it) and to a
//!   principal's channel while one of that principal's sockets is connected. Joins and
//!   connects subscribe at once; every [`LOOK_EVERY`] the subscriptions are compared
//!   with the rooms and sessions, and a channel nobody has followed for [`LINGER`] is
//!   unsubscribed (and the delivery stage forgets the conversation).
//! - **Copies.** A wake-up's copies share the publisher's number; one that arrives on a
//!   principal's channel after the same wake-up came on its conversation's channel is
//!   dropped. The conversation's copy is published first, and Redis delivers one
//!   publisher's messages to a subscriber in order, so this is exact.
//! - **Missed removals.** After (re)connecting, and after subscribing to a conversation,
//!   the transports check again who may read what (`Events::recheck`): a removal published
//!   while this process was not listening does not leave a removed reader in the room.
//! - **Failures.** Redis down: sends still commit and are acknowledged; the wake-ups are
//!   lost and the delivery stage reads the messages from the log instead (within
//!   `delivery::WATCHED_SWEEP_EVERY` for a conversation a local client follows). The
//!   listener reconnects with backoff and subscribes again to everything wanted; the
//!   relay reconnects with backoff too, and meanwhile drops its batches at once. A
//!   silent connection is caught by a ping every [`LOOK_EVERY`]. Refused credentials or
//!   TLS are logged as errors and reported `misconfigured` by `/readyz`.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use redis::{
    AsyncConnectionConfig,
    aio::{MultiplexedConnection, PubSubSink},
};
use socketioxide::SocketIo;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    core::events::{Event, EventKind, Interest, Topic},
    state::AppState,
};

const ENGINE: &str = "redis";
/// Larger events go by reference on their conversation's channel.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Larger events go by reference on principals' channels (one copy per participant).
const INBOX_COPY_MAX_BYTES: usize = 4 * 1024;
/// Participants past this many get no inbox copy of a conversation's events (a huge
/// room's members who have not joined it re-read their inbox instead).
pub const MAX_INBOX_FANOUT: usize = 1000;
/// Commands per pipelined round trip.
const PIPELINE_COMMANDS: usize = 1024;
/// How often subscriptions are compared with what local clients follow (and the
/// connection pinged).
pub const LOOK_EVERY: Duration = Duration::from_secs(2);
/// A channel stays subscribed this long after its last local follower left, so a client
/// that reconnects or rejoins at once finds it still there.
pub const LINGER: Duration = Duration::from_secs(5);
/// How long a conversation's participant list is used before it is read again (beside
/// publishing); past twice this it is read before publishing.
pub const PARTICIPANTS_FOR: Duration = Duration::from_secs(5);
/// How long publishing waits for a participant list it must read first.
const PARTICIPANTS_READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Any one Redis command (connect, publish, subscribe, ping).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const CHUNK: usize = 512;
/// Reconnect backoff: from the first to the longest wait.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A listener connection that lasted this long resets the backoff (a Redis that drops
/// every connection at once is not hammered with full resubscriptions).
const STABLE_FOR: Duration = Duration::from_secs(30);
/// While the bus is down, who may read what is checked again this often.
const RECHECK_WHILE_DOWN: Duration = Duration::from_secs(5);
/// Wake-ups remembered to recognise their copies.
const RECENT_WAKES: usize = 65_536;

const CONVERSATION_PREFIX: &str = "colloquy:c:";
const PRINCIPAL_PREFIX: &str = "colloquy:p:";

fn channel(topic: &Topic) -> String {
    match topic {
        Topic::Conversation(id) => format!("{CONVERSATION_PREFIX}{id}"),
        Topic::Principal(id) => format!("{PRINCIPAL_PREFIX}{id}"),
    }
}

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
        recent: RecentWakes::default(),
    };
    Ok(vec![
        tokio::spawn(relay(state.clone(), client, node, rx)),
        tokio::spawn(listener.run(hints)),
    ])
}

/// Whether Redis refused who we are (password, ACL user) or the TLS handshake: an
/// operator's mistake that retrying will not mend.
fn misconfigured(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<redis::RedisError>().is_some_and(|r| {
            r.kind() == redis::ErrorKind::AuthenticationFailed
                || r.code()
                    .is_some_and(|c| matches!(c, "WRONGPASS" | "NOAUTH" | "NOPERM"))
                || r.to_string().to_ascii_lowercase().contains("tls")
        })
    })
}

fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
}

// ---------------------------------------------------------------- publishing

async fn relay(state: AppState, client: redis::Client, node: Uuid, rx: mpsc::Receiver<Arc<Event>>) {
    let mut publisher = Publisher {
        client,
        connection: None,
        retry_at: None,
        backoff: BACKOFF_FIRST,
        participants: Participants::default(),
        // Connections of its own (as the Postgres bus's relay has): reading participants
        // never waits behind the delivery stage's log reads or requests.
        db: crate::startup::side_pool(&state.config, 2, "colloquy-relay")
            .unwrap_or_else(|_| state.delivery_db.clone()),
        node,
        wake: 0,
    };
    let mut batches = super::Batches::new(rx, state.closing.clone());
    while let Some(batch) = batches.next().await {
        publisher.publish(batch).await;
    }
}

struct Publisher {
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    /// While Redis is unreachable: when to try connecting again.
    retry_at: Option<Instant>,
    backoff: Duration,
    participants: Participants,
    db: PgPool,
    node: Uuid,
    /// This process's wake-up numbers.
    wake: u64,
}

impl Publisher {
    async fn publish(&mut self, batch: &[Arc<Event>]) {
        let commands = self.commands(batch).await;
        let n = commands.len();
        if n == 0 {
            return;
        }
        let Some(connection) = self.connect().await else {
            crate::metrics::bus_publish_failed(ENGINE, n);
            return;
        };
        for chunk in commands.chunks(PIPELINE_COMMANDS) {
            let mut pipe = redis::pipe();
            for (channel, payload) in chunk {
                pipe.publish(channel, payload.as_str()).ignore();
            }
            let outcome =
                tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(connection)).await;
            if !matches!(outcome, Ok(Ok(()))) {
                self.connection = None;
                crate::metrics::bus_publish_failed(ENGINE, n);
                let error = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(%error, wake_ups = n, "could not publish to Redis; other processes read these messages from the log");
                return;
            }
        }
        crate::metrics::bus_published(ENGINE, n);
    }

    /// The connection, made again when it was lost (not before the backoff allows:
    /// meanwhile batches are dropped at once instead of each waiting for a timeout).
    async fn connect(&mut self) -> Option<&mut MultiplexedConnection> {
        if self.connection.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            let config = connection_config();
            let connect = self
                .client
                .get_multiplexed_async_connection_with_config(&config);
            match tokio::time::timeout(COMMAND_TIMEOUT, connect).await {
                Ok(Ok(c)) => {
                    self.connection = Some(c);
                    self.retry_at = None;
                    self.backoff = BACKOFF_FIRST;
                }
                outcome => {
                    let error = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(%error, retry_in_ms = self.backoff.as_millis() as u64,
                        "cannot publish to Redis; other processes read new messages from the log meanwhile");
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    return None;
                }
            }
        }
        self.connection.as_mut()
    }

    /// Each event's (channel, payload) pairs: its conversation's, then its inbox copies.
    async fn commands(&mut self, batch: &[Arc<Event>]) -> Vec<(String, Arc<String>)> {
        let lists: HashSet<Uuid> = batch
            .iter()
            .filter(|e| to_every_participant(e.kind))
            .map(|e| e.conversation_id)
            .collect();
        // Never read, or long ago: read now (bounded). Read a while ago: used as it is and
        // read again beside, so publishing rarely waits for the database.
        let (missing, stale) = self.participants.needs(&lists);
        if !missing.is_empty() {
            self.participants
                .load(&self.db, &missing, PARTICIPANTS_READ_TIMEOUT)
                .await;
        }
        if !stale.is_empty() {
            self.participants.refresh_beside(&self.db, stale);
        }
        let participants = self.participants.of(&lists);
        let mut commands = Vec::new();
        for event in batch {
            self.wake += 1;
            let wake = self.wake;
            let Some(payload) = super::encode(self.node, wake, event, MAX_PAYLOAD_BYTES) else {
                continue;
            };
            let payload = Arc::new(payload);
            commands.push((
                channel(&Topic::Conversation(event.conversation_id)),
                payload.clone(),
            ));
            let recipients = inbox_recipients(event, &participants);
            if !recipients.is_empty() {
                let copy = if payload.len() <= INBOX_COPY_MAX_BYTES {
                    Some(payload)
                } else {
                    super::by_reference(self.node, wake, event).map(Arc::new)
                };
                if let Some(copy) = copy {
                    for principal in recipients {
                        commands.push((format!("{PRINCIPAL_PREFIX}{principal}"), copy.clone()));
                    }
                }
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
        commands
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
                .filter(|p| p.len() <= MAX_INBOX_FANOUT)
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
    refreshing: Arc<AtomicBool>,
}

impl Participants {
    /// Past this many conversations the cache starts over.
    const MAX: usize = 50_000;

    /// Of `ids`: those to read before publishing (never read, or more than twice
    /// [`PARTICIPANTS_FOR`] ago), and those to read again beside it.
    fn needs(&self, ids: &HashSet<Uuid>) -> (Vec<Uuid>, Vec<Uuid>) {
        let (mut missing, mut stale) = (Vec::new(), Vec::new());
        if let Ok(known) = self.known.lock() {
            for id in ids {
                match known.get(id).map(|(_, at)| at.elapsed()) {
                    None => missing.push(*id),
                    Some(age) if age >= 2 * PARTICIPANTS_FOR => missing.push(*id),
                    Some(age) if age >= PARTICIPANTS_FOR => stale.push(*id),
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
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (this, db) = (self.clone(), db.clone());
        tokio::spawn(async move {
            this.load(&db, &ids, COMMAND_TIMEOUT).await;
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Reads the participants of `ids`; on failure the inbox copies go to those known
    /// (inbox events are best effort; the messages themselves are not at stake).
    async fn load(&self, db: &PgPool, ids: &[Uuid], within: Duration) {
        let read = sqlx::query_as::<_, (Uuid, String)>(
            "SELECT conversation_id, participant_id FROM participants WHERE conversation_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(db);
        let rows = match tokio::time::timeout(within, read).await {
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

/// The wake-ups that came on a conversation's channel lately, so their copies on
/// principals' channels are recognised.
#[derive(Default)]
struct RecentWakes {
    set: HashSet<(Uuid, u64)>,
    order: VecDeque<(Uuid, u64)>,
}

impl RecentWakes {
    fn remember(&mut self, key: (Uuid, u64)) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > RECENT_WAKES
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    fn seen(&self, key: &(Uuid, u64)) -> bool {
        self.set.contains(key)
    }
}

struct Listener {
    state: AppState,
    client: redis::Client,
    node: Uuid,
    io: SocketIo,
    namespaces: Vec<String>,
    /// Every channel wanted (and, while connected, subscribed), with when a local client
    /// last followed it.
    wanted: HashMap<Topic, Instant>,
    recent: RecentWakes,
}

impl Listener {
    async fn run(mut self, mut hints: mpsc::Receiver<Topic>) {
        let mut delay = BACKOFF_FIRST;
        let mut said_misconfigured = false;
        let mut last_recheck = Instant::now();
        loop {
            if self.state.closing.is_cancelled() {
                return;
            }
            let started = Instant::now();
            let result = self.session(&mut hints).await;
            self.state.bus.set_connected(false);
            crate::metrics::bus_subscriptions("conversation", 0);
            crate::metrics::bus_subscriptions("principal", 0);
            if started.elapsed() >= STABLE_FOR {
                delay = BACKOFF_FIRST;
            }
            match result {
                Ok(()) => return,
                Err(e) if misconfigured(&e) => {
                    self.state.bus.set_misconfigured();
                    crate::metrics::bus_reconnect(ENGINE);
                    if !std::mem::replace(&mut said_misconfigured, true) {
                        tracing::error!(error = %e, "Redis refused this process's credentials or TLS (EVENT_BUS); live delivery across processes falls back to reading the log until it is fixed");
                    }
                }
                Err(e) => {
                    crate::metrics::bus_reconnect(ENGINE);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                        "lost the Redis event bus; live delivery falls back to reading the log until it is back");
                }
            }
            // While no removal can be heard, who may read what is checked again now and
            // then, so one takes effect within about the time a message takes.
            if last_recheck.elapsed() >= RECHECK_WHILE_DOWN {
                self.state.events.recheck(Uuid::nil());
                last_recheck = Instant::now();
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.state.closing.cancelled() => return,
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: subscribes to everything wanted, then receives until it drops.
    async fn session(&mut self, hints: &mut mpsc::Receiver<Topic>) -> anyhow::Result<()> {
        let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .context("connecting timed out")??;
        let (mut sink, mut stream) = pubsub.split();
        self.look().await;
        let all: Vec<Topic> = self.wanted.keys().cloned().collect();
        subscribe(&mut sink, &all).await?;
        self.state.bus.set_connected(true);
        self.gauges();
        // Removals published while this process was not listening were missed: who may
        // still read what is checked again (messages come back from the log by themselves).
        self.state.events.recheck(Uuid::nil());
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
                    self.subscribed(&new);
                }
                _ = look.tick() => {
                    let (new, gone) = self.look().await;
                    subscribe(&mut sink, &new).await?;
                    self.subscribed(&new);
                    unsubscribe(&mut sink, &gone).await?;
                    for topic in &gone {
                        if let Topic::Conversation(id) = topic {
                            self.state.events.unwatch(*id);
                        }
                    }
                    self.gauges();
                    tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>())
                        .await
                        .context("ping timed out")??;
                }
                _ = self.state.closing.cancelled() => return Ok(()),
            }
        }
    }

    async fn received(&mut self, channel: &str, payload: &[u8]) {
        crate::metrics::bus_received(ENGINE);
        let Some(peek) = super::peek(payload) else {
            return;
        };
        if peek.node == self.node {
            return;
        }
        let key = (peek.node, peek.wake);
        if channel.starts_with(PRINCIPAL_PREFIX) {
            // Its conversation's channel brought it here already.
            if self.recent.seen(&key) {
                return;
            }
        } else {
            self.recent.remember(key);
        }
        if let Some(event) = super::open(&self.state, payload).await {
            super::deliver(&self.state, event);
        }
    }

    /// Newly subscribed conversations: a removal published before the subscription took
    /// effect was missed, so who may read them is checked again.
    fn subscribed(&self, topics: &[Topic]) {
        for topic in topics {
            if let Topic::Conversation(id) = topic {
                self.state.events.recheck(*id);
            }
        }
        self.gauges();
    }

    fn gauges(&self) {
        let conversations = self
            .wanted
            .keys()
            .filter(|t| matches!(t, Topic::Conversation(_)))
            .count();
        crate::metrics::bus_subscriptions("conversation", conversations);
        crate::metrics::bus_subscriptions("principal", self.wanted.len() - conversations);
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
    change(sink, topics, true).await
}

async fn unsubscribe(sink: &mut PubSubSink, topics: &[Topic]) -> anyhow::Result<()> {
    change(sink, topics, false).await
}

/// SUBSCRIBE (or UNSUBSCRIBE) `topics`, [`CHUNK`] channels per command.
async fn change(sink: &mut PubSubSink, topics: &[Topic], on: bool) -> anyhow::Result<()> {
    for chunk in topics.chunks(CHUNK) {
        let channels: Vec<String> = chunk.iter().map(channel).collect();
        let done = if on {
            tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(channels)).await
        } else {
            tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(channels)).await
        };
        done.context("changing subscriptions timed out")??;
    }
    Ok(())
}
