//! The delivery stage: each conversation's log is the stream.
//!
//! Every event on its way to the transports (from this process's writers or from another
//! process's bus) passes through one task that keeps, per conversation, the last `seq` it
//! handed on. A message wake-up is forwarded only in `seq` order:
//! - a repeat (`seq` already handed on) is dropped;
//! - an early one waits for the ones before it; if they have not come within
//!   [`GAP_WAIT`] (their writer was slower, or their wake-up was lost), they are read from
//!   the log and forwarded first;
//! - every [`SWEEP_EVERY`], conversations active in the last [`ACTIVE_FOR`] are checked
//!   against the log, so a message whose wake-up never came at all (the process that
//!   stored it died before announcing it) is delivered too;
//! - conversations a local client follows (joins, resumes and `/ws` sessions report
//!   them, and refresh the report while they stay) are tracked even when no wake-up for
//!   them ever arrives, and checked against the log every [`WATCHED_SWEEP_EVERY`] while
//!   quiet: a conversation whose every wake-up was lost still reaches its members.
//!
//! So a lost or reordered wake-up costs latency, never a message or the order. Database
//! reads run in their own tasks; the stage itself never waits on the database, and other
//! events (typing, reads, edits) pass straight through.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    core::{
        events::{Event, EventKind, Events, Origin, Watch},
        messages::{Message, Row, message_select},
    },
    state::AppState,
};

/// How long a later message waits for an earlier one before the log is read.
pub const GAP_WAIT: Duration = Duration::from_millis(100);
/// A conversation first seen waits this long, so a wake-up overtaken on its way is not
/// taken for the start.
const WARM_UP: Duration = Duration::from_millis(20);
/// How often active conversations are compared with the log.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Conversations with a message this recent are swept.
const ACTIVE_FOR: Duration = Duration::from_secs(300);
/// Tracks idle this long are forgotten (the next message starts a new one).
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Messages a sweep is older than, so it does not race a wake-up still on its way.
const SWEEP_MIN_AGE_MS: i64 = 500;
/// Most messages one read from the log returns.
const FILL_LIMIT: i64 = 1000;
/// How often quiet conversations that local clients follow are checked against the log.
pub const WATCHED_SWEEP_EVERY: Duration = Duration::from_secs(5);
/// A follow report lasts this long; transports refresh theirs well within it.
const WATCH_LASTS: Duration = Duration::from_secs(60);
/// A track the bus stops following is kept if a join reported it this recently.
const FORGET_RACE: Duration = Duration::from_secs(5);
/// How often transports refresh their follow reports.
pub const WATCH_REFRESH: Duration = Duration::from_secs(20);

struct Track {
    /// Last `seq` handed on; `None` while warming up.
    delivered: Option<i64>,
    pending: BTreeMap<i64, Arc<Event>>,
    born: Instant,
    /// Since when the first pending message waits for an earlier one.
    gap_since: Option<Instant>,
    /// A read from the log is under way.
    filling: bool,
    active: Instant,
    /// Until when a local client follows the conversation.
    watched_until: Option<Instant>,
    /// The lowest `seq` a follower reported (positions the server read at a join, never
    /// one a client named): where a track born from follow reports starts, so no
    /// follower misses what came after its own position.
    hint: Option<i64>,
    /// When a join (or resume, or `/ws` connect) last reported it.
    joined: Option<Instant>,
}

impl Track {
    fn new(now: Instant) -> Self {
        Self {
            delivered: None,
            pending: BTreeMap::new(),
            born: now,
            gap_since: None,
            filling: false,
            active: now,
            watched_until: None,
            hint: None,
            joined: None,
        }
    }

    fn watched(&self, now: Instant) -> bool {
        self.watched_until.is_some_and(|u| u > now)
    }
}

/// What a read from the log brings back.
struct Filled {
    conversation_id: Uuid,
    events: Vec<Arc<Event>>,
    /// A gap read (up to the first waiting message) that the database answered.
    gap_read: bool,
}

pub fn spawn(state: &AppState) -> Option<tokio::task::JoinHandle<()>> {
    let input = state.events.take_input()?;
    let state = state.clone();
    Some(tokio::spawn(run(state, input)))
}

async fn run(
    state: AppState,
    (mut input, mut watches): (mpsc::Receiver<Arc<Event>>, mpsc::Receiver<Watch>),
) {
    let (filled_tx, mut filled) = mpsc::channel::<Filled>(256);
    let mut tracks: HashMap<Uuid, Track> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_sweep = Instant::now();
    let mut last_watched_sweep = Instant::now();
    loop {
        tokio::select! {
            event = input.recv() => {
                let Some(event) = event else { return };
                accept(&state.events, &mut tracks, event);
            }
            Some(watch) = watches.recv() => {
                let now = Instant::now();
                if watch.forget {
                    // Unless a join reported it since the bus decided (a join racing the
                    // unsubscribe keeps its track).
                    if tracks.get(&watch.conversation_id).is_some_and(|t| {
                        !t.filling && t.joined.is_none_or(|at| now - at > FORGET_RACE)
                    }) {
                        tracks.remove(&watch.conversation_id);
                    }
                    continue;
                }
                let track = match (tracks.get_mut(&watch.conversation_id), watch.seq) {
                    (Some(track), _) => track,
                    (None, Some(_)) => tracks.entry(watch.conversation_id).or_insert_with(|| Track::new(now)),
                    // A refresh for a conversation no longer tracked: the next join reports it.
                    (None, None) => continue,
                };
                track.watched_until = Some(now + WATCH_LASTS);
                if let Some(seq) = watch.seq {
                    track.joined = Some(now);
                    track.hint = Some(track.hint.map_or(seq, |h| h.min(seq)));
                }
            }
            Some(fill) = filled.recv() => {
                if let Some(track) = tracks.get_mut(&fill.conversation_id) {
                    track.filling = false;
                    if fill.events.is_empty() && track.gap_since.is_some() {
                        if fill.gap_read {
                            // The log answered and holds nothing before the waiting
                            // messages: their conversation was deleted, or the wake-ups
                            // name positions the log does not have (a forged or corrupt
                            // one). Either way they are not handed on, and the position
                            // stays where the log confirms it: a wake-up's word never
                            // moves it past what is stored.
                            track.pending.clear();
                            track.gap_since = None;
                        } else {
                            // It could not be read: wait and try again.
                            track.gap_since = Some(Instant::now());
                        }
                    }
                    crate::metrics::delivery_gap_filled(fill.events.len());
                    for event in fill.events {
                        if let Some(seq) = seq_of(&event) {
                            queue(track, seq, event);
                        }
                    }
                    flush(&state.events, track, Instant::now());
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                tracks.retain(|_, t| {
                    !t.pending.is_empty() || t.filling || t.watched(now) || now - t.active <= FORGET_AFTER
                });
                for (id, track) in tracks.iter_mut() {
                    if track.delivered.is_none() && now - track.born >= WARM_UP {
                        // Where the stream starts: before the first wake-up that came, or
                        // (a track born from a follow report) where the follower stood.
                        // A follower's report wins: what came after it is owed to that
                        // follower even if a later wake-up overtook an earlier one.
                        track.delivered = match (track.pending.keys().next(), track.hint) {
                            (Some(first), Some(hint)) => Some((first - 1).min(hint)),
                            (Some(first), None) => Some(first - 1),
                            (None, Some(hint)) => Some(hint),
                            (None, None) => Some(0),
                        };
                        flush(&state.events, track, now);
                    }
                    if let (Some(since), Some(delivered), false) = (track.gap_since, track.delivered, track.filling)
                        && now - since >= GAP_WAIT
                    {
                        track.filling = true;
                        let until = track.pending.keys().next().map_or(i64::MAX, |s| s - 1);
                        spawn_fill(&state, &filled_tx, vec![(*id, delivered)], Some(until));
                    }
                }
                if now - last_sweep >= SWEEP_EVERY {
                    last_sweep = now;
                    let watched_too = now - last_watched_sweep >= WATCHED_SWEEP_EVERY;
                    if watched_too {
                        last_watched_sweep = now;
                    }
                    let due: Vec<(Uuid, i64)> = tracks
                        .iter_mut()
                        .filter(|(_, t)| {
                            !t.filling
                                && t.pending.is_empty()
                                && (now - t.active <= ACTIVE_FOR || (watched_too && t.watched(now)))
                        })
                        .filter_map(|(id, t)| {
                            let delivered = t.delivered?;
                            t.filling = true;
                            Some((*id, delivered))
                        })
                        .collect();
                    if !due.is_empty() {
                        spawn_fill(&state, &filled_tx, due, None);
                    }
                }
            }
        }
    }
}

fn seq_of(event: &Event) -> Option<i64> {
    (event.kind == EventKind::MessageCreated)
        .then(|| event.data["seq"].as_i64())
        .flatten()
}

/// One event in: anything but a message passes straight on; a message is queued in its
/// conversation's track and handed on when its turn has come.
fn accept(events: &Events, tracks: &mut HashMap<Uuid, Track>, event: Arc<Event>) {
    let Some(seq) = seq_of(&event) else {
        events.forward(event);
        return;
    };
    let now = Instant::now();
    let track = tracks
        .entry(event.conversation_id)
        .or_insert_with(|| Track::new(now));
    track.active = now;
    queue(track, seq, event);
    flush(events, track, now);
}

fn queue(track: &mut Track, seq: i64, event: Arc<Event>) {
    if track.delivered.is_some_and(|d| seq <= d) || track.pending.contains_key(&seq) {
        crate::metrics::delivery_duplicate();
        return;
    }
    track.pending.insert(seq, event);
}

/// Hands on every pending message whose turn has come; notes when a gap starts waiting.
fn flush(events: &Events, track: &mut Track, now: Instant) {
    let Some(mut delivered) = track.delivered else {
        return;
    };
    while let Some(entry) = track.pending.first_entry() {
        if *entry.key() != delivered + 1 {
            break;
        }
        delivered += 1;
        events.forward(entry.remove());
    }
    track.delivered = Some(delivered);
    track.gap_since = if track.pending.is_empty() {
        None
    } else {
        track.gap_since.or(Some(now))
    };
}

/// A stored message as the `MessageCreated` event its writer announced. Who sent it is
/// not in the log: everyone, the sender included, gets it.
pub fn from_log(message: &Message) -> Arc<Event> {
    Arc::new(Event::new(
        EventKind::MessageCreated,
        message.conversation_id,
        message.platform_context.room_id.clone(),
        serde_json::to_value(message).unwrap_or(Value::Null),
        Origin {
            socket_id: None,
            echo: true,
        },
    ))
}

/// Reads from the log, in its own task, the messages after each `(conversation, seq)`
/// (up to `until` for a gap; for a sweep, those old enough not to race their wake-up).
fn spawn_fill(
    state: &AppState,
    filled: &mpsc::Sender<Filled>,
    from: Vec<(Uuid, i64)>,
    until: Option<i64>,
) {
    let db = state.delivery_db.clone();
    let filled = filled.clone();
    tokio::spawn(async move {
        let ids: Vec<Uuid> = from.iter().map(|(id, _)| *id).collect();
        let after: Vec<i64> = from.iter().map(|(_, seq)| *seq).collect();
        let rows = read_after(&db, &ids, &after, until).await;
        let gap_read = rows.is_ok() && until.is_some();
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "could not read missed messages from the log; retrying");
                vec![]
            }
        };
        let mut by_conversation: HashMap<Uuid, Vec<Arc<Event>>> =
            ids.iter().map(|id| (*id, vec![])).collect();
        for row in rows {
            let event = from_log(&row.into());
            by_conversation
                .entry(event.conversation_id)
                .or_default()
                .push(event);
        }
        for (conversation_id, events) in by_conversation {
            let _ = filled
                .send(Filled {
                    conversation_id,
                    events,
                    gap_read,
                })
                .await;
        }
    });
}

/// The messages after each `(conversation, seq)`: for a gap up to `until`, for a sweep
/// only those old enough not to race their own wake-up.
async fn read_after(
    db: &sqlx::PgPool,
    ids: &[Uuid],
    after: &[i64],
    until: Option<i64>,
) -> Result<Vec<Row>, sqlx::Error> {
    let mut tx = db.begin().await?;
    // The planner's estimate for this query crosses the JIT threshold, and compiling it
    // costs ~100 ms of CPU for a query that reads a handful of rows: measured as a 7 %
    // drop of `steady` when the sweep ran every second.
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    // One index range scan per conversation (`(conversation_id, seq)`), never a pass
    // over the whole table: the log grows without bound.
    let rows = sqlx::query_as(concat!(
        "SELECT x.* FROM unnest($1::uuid[], $2::bigint[]) AS t(conversation_id, after) \
         CROSS JOIN LATERAL (",
        message_select!(),
        r#"
            WHERE m.conversation_id = t.conversation_id AND m.seq > t.after
              AND ($3::bigint IS NULL OR m.seq <= $3)
              AND ($3::bigint IS NOT NULL
                   OR m.created_at < now() - make_interval(secs => $4::double precision / 1000))
            ORDER BY m.seq
            LIMIT $5
        ) x
        ORDER BY x.conversation_id, x.seq
        "#
    ))
    .bind(ids)
    .bind(after)
    .bind(until)
    .bind(SWEEP_MIN_AGE_MS as f64)
    .bind(FILL_LIMIT)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}
