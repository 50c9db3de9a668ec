//! Sends the webhook outbox (contract §8).
//!
//! Every process runs one dispatcher. A dispatcher **claims** work in a short transaction
//! under a cluster-wide advisory lock: for each (endpoint, conversation) queue whose head
//! is due and not leased, it leases the head (the queue's lock) and takes up to
//! [`PER_QUEUE`] consecutive deliveries. One task per claimed queue then sends them in
//! order; a failure gives that delivery its backoff, so the queue waits (in order) while
//! other queues and endpoints go on. A batch's delivered rows are deleted together, head
//! included, so the queue stays locked until none of them is left. A process that dies
//! mid-send leaves a lease that expires: the deliveries go out again with the same id (at
//! least once, never two processes at a time).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use tokio::sync::{Notify, Semaphore, mpsc};
use uuid::Uuid;

use crate::{
    core::{
        events::{Event, EventKind},
        messages::{Message, Row, message_select},
    },
    state::AppState,
};

/// Queues (endpoint × conversation) sending at once on one process.
const QUEUES_IN_FLIGHT: usize = 32;
/// Of those, at most this many for one endpoint: a slow endpoint cannot take every slot.
const QUEUES_PER_ENDPOINT: usize = 8;
/// Deliveries leased from one queue per claim.
const PER_QUEUE: i64 = 100;
/// Most events one request carries (an endpoint's `batch_size`).
pub const MAX_BATCH: i32 = 100;
/// Shortest gap between two claims while work keeps arriving (batches form meanwhile).
const CLAIM_SPACING: Duration = Duration::from_millis(50);
/// Looks for due retries and other processes' work at least this often.
const POLL: Duration = Duration::from_secs(1);
/// New messages kept as committed, for `message.created` deliveries (the rest are read
/// from the log when sent).
const RECENT_MESSAGES: usize = 20_000;
/// Messages are kept while endpoints have had deliveries this recently.
const RECENT_WHILE: Duration = Duration::from_secs(60);
/// The cluster-wide lock claims take (one short transaction each).
const CLAIM_LOCK: i64 = 0x636f_6c6c_6f71_7701;

/// Signs `body` as sent at `t`: `t=<unix>,v1=<hex HMAC-SHA256(secret, "t.body")>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(sqlx::FromRow)]
struct Claimed {
    pos: i64,
    id: Uuid,
    webhook_id: Uuid,
    conversation_id: Uuid,
    event_type: String,
    message_id: Option<Uuid>,
    data: Option<sqlx::types::Json<Box<RawValue>>>,
    occurred_at: DateTime<Utc>,
    attempts: i32,
    created_at: DateTime<Utc>,
}

/// Where a claim's deliveries go, read once per claim.
#[derive(sqlx::FromRow)]
struct Endpoint {
    id: Uuid,
    url: String,
    secret: String,
    batch_size: i32,
}

impl Claimed {
    /// A new message's delivery: its data is the message as committed.
    fn is_created(&self) -> bool {
        self.event_type == "message.created"
    }
}

impl Endpoint {
    /// Gets arrays of events rather than one event per request.
    fn batched(&self) -> bool {
        self.batch_size > 1
    }
}

/// One event as its endpoint receives it (contract §8); `data` is rendered JSON.
#[derive(Serialize)]
struct Envelope<'a> {
    id: Uuid,
    #[serde(rename = "type")]
    kind: &'a str,
    conversation_id: Uuid,
    occurred_at: DateTime<Utc>,
    data: Data<'a>,
}

/// An event's `data`.
#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    /// Already JSON: a new message as committed, a message read back, or the event's
    /// stored data.
    Rendered(&'a RawValue),
    /// The message is gone with its conversation.
    Gone {
        id: Uuid,
        conversation_id: Uuid,
    },
    Null,
}

/// One claim's messages, shared by its senders.
#[derive(Default)]
struct Rendered {
    /// New messages as this process heard them committed (for `message.created`), by
    /// id: the JSON text the bus sent, copied into each request's body as it is.
    committed: HashMap<Uuid, Arc<RawValue>>,
    /// Messages as they are now (read back), rendered once, by id.
    current: HashMap<Uuid, Box<RawValue>>,
}

impl Rendered {
    fn get(&self, row: &Claimed, id: Uuid) -> Option<Data<'_>> {
        row.is_created()
            .then(|| self.committed.get(&id))
            .flatten()
            .map(|json| Data::Rendered(json))
            .or_else(|| self.current.get(&id).map(|raw| Data::Rendered(raw)))
    }
}

struct Dispatcher {
    state: AppState,
    client: reqwest::Client,
    lease: Duration,
    slots: Arc<Semaphore>,
    busy: Arc<Mutex<HashMap<Uuid, usize>>>,
    /// Each sent batch's delivered rows, as one message: they are deleted together.
    delivered: mpsc::Sender<Vec<(i64, Uuid)>>,
    recent: Mutex<Recent>,
    /// A sender finished or delivered rows left the outbox: queues a claim passed over
    /// (their endpoint had all its slots) may be due now.
    freed: Arc<Notify>,
}

/// The messages this process heard committed (here or, through the bus, elsewhere), so
/// that a `message.created` delivery need not read its message back: the last
/// [`RECENT_MESSAGES`], kept only while deliveries flow, each as its JSON text (written
/// once, shared with the bus; one buffer to free when it is dropped, where a tree of
/// values gone cold cost about 2 µs a message).
#[derive(Default)]
struct Recent {
    messages: HashMap<Uuid, Arc<RawValue>>,
    order: std::collections::VecDeque<Uuid>,
    /// Deliveries were claimed at this time: keep messages until [`RECENT_WHILE`] after.
    wanted_at: Option<Instant>,
}

impl Recent {
    fn heard(&mut self, event: &Arc<Event>) {
        if event.kind != EventKind::MessageCreated
            || self.wanted_at.is_none_or(|at| at.elapsed() > RECENT_WHILE)
        {
            return;
        }
        let Some(id) = event.data.get("id").and_then(|v| v.as_str()) else {
            return;
        };
        let Ok(id) = Uuid::parse_str(id) else {
            return;
        };
        if self
            .messages
            .insert(id, event.data_json().clone())
            .is_none()
        {
            self.order.push_back(id);
        }
        while self.order.len() > RECENT_MESSAGES {
            if let Some(old) = self.order.pop_front() {
                self.messages.remove(&old);
            }
        }
    }

    fn wanted(&mut self) {
        self.wanted_at = Some(Instant::now());
    }

    /// Forgets everything once deliveries have stopped.
    fn idle(&mut self) {
        if self.wanted_at.is_some_and(|at| at.elapsed() > RECENT_WHILE) {
            self.wanted_at = None;
            self.messages = HashMap::new();
            self.order = Default::default();
        }
    }
}

/// Starts the dispatcher, its finisher (deletes delivered rows in batches) and the queue
/// gauges.
pub fn spawn(state: &AppState) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let timeout = Duration::from_secs(state.config.webhook_timeout_seconds.max(1));
    let client = state.outbound.client(Some(timeout))?;
    let (delivered, finished) = mpsc::channel(1024);
    let freed = Arc::new(Notify::new());
    let dispatcher = Arc::new(Dispatcher {
        state: state.clone(),
        client,
        lease: (timeout * 3).max(Duration::from_secs(30)),
        slots: Arc::new(Semaphore::new(QUEUES_IN_FLIGHT)),
        busy: Default::default(),
        delivered,
        recent: Default::default(),
        freed: freed.clone(),
    });
    Ok(vec![
        tokio::spawn(run(dispatcher)),
        tokio::spawn(finish(state.clone(), finished, freed)),
        tokio::spawn(gauges(state.clone())),
    ])
}

async fn run(d: Arc<Dispatcher>) {
    let mut events = d.state.events.subscribe();
    let mut last_claim = Instant::now() - CLAIM_SPACING;
    let mut more = true;
    loop {
        if !more {
            // Wait for a committed event (here or, through the bus, elsewhere) or the poll.
            let poll = tokio::time::sleep(POLL);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    _ = d.state.shutdown.cancelled() => return,
                    // Without this, a backlog over more queues than an endpoint may send
                    // at once drained one claim per poll once new events stopped coming.
                    _ = d.freed.notified() => break,
                    event = events.recv() => match event {
                        // Typing and stream deltas write no deliveries.
                        Ok(e) if crate::core::webhooks::event_type(e.kind).is_none() => continue,
                        Ok(e) => {
                            d.heard(&e);
                            break;
                        }
                        Err(_) => break,
                    },
                    _ = &mut poll => {
                        if let Ok(mut recent) = d.recent.lock() {
                            recent.idle();
                        }
                        break;
                    }
                }
            }
        }
        if d.state.shutdown.is_cancelled() {
            return;
        }
        let since = last_claim.elapsed();
        if since < CLAIM_SPACING {
            tokio::time::sleep(CLAIM_SPACING - since).await;
        }
        // Everything announced so far is covered by this claim.
        loop {
            match events.try_recv() {
                Ok(e) => d.heard(&e),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        last_claim = Instant::now();
        if !d.state.is_ready() {
            more = false;
            continue;
        }
        more = match d.clone().claim_and_send().await {
            Ok(full) => full,
            Err(e) => {
                tracing::warn!(error = %e, "webhook claim failed; retrying");
                tokio::time::sleep(POLL).await;
                false
            }
        };
    }
}

impl Dispatcher {
    fn heard(&self, event: &Arc<Event>) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.heard(event);
        }
    }

    /// Claims due queues and starts their senders; `true` when there may be more now.
    async fn claim_and_send(self: Arc<Self>) -> anyhow::Result<bool> {
        let free = self.slots.available_permits();
        if free == 0 {
            // Senders are all busy; one finishing wakes the dispatcher.
            return Ok(false);
        }
        let busy: Vec<Uuid> = self
            .busy
            .lock()
            .map(|b| {
                b.iter()
                    .filter(|(_, n)| **n >= QUEUES_PER_ENDPOINT)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        let (rows, endpoints) = self.claim(&busy, free as i64).await?;
        if rows.is_empty() {
            return Ok(false);
        }
        let endpoints: HashMap<Uuid, Arc<Endpoint>> =
            endpoints.into_iter().map(|e| (e.id, Arc::new(e))).collect();
        let mut queues: Vec<Vec<Claimed>> = Vec::new();
        let mut index: HashMap<(Uuid, Uuid), usize> = HashMap::new();
        let messages = self.render(&rows).await?;
        let messages = Arc::new(messages);
        for row in rows {
            let key = (row.webhook_id, row.conversation_id);
            let at = *index.entry(key).or_insert_with(|| {
                queues.push(Vec::new());
                queues.len() - 1
            });
            queues[at].push(row);
        }
        let full = queues.len() >= free;
        for mut queue in queues {
            queue.sort_by_key(|r| r.pos);
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                // Not sent now: give the lease back so the queue is due again at once.
                self.release(&[queue[0].pos]).await;
                continue;
            };
            let webhook = queue[0].webhook_id;
            let Some(endpoint) = endpoints.get(&webhook).cloned() else {
                // Deleted meanwhile: its deliveries go with the sweep of orphans.
                drop(permit);
                continue;
            };
            if let Ok(mut busy) = self.busy.lock() {
                *busy.entry(webhook).or_default() += 1;
            }
            let d = self.clone();
            let messages = messages.clone();
            tokio::spawn(async move {
                d.send_queue(&endpoint, queue, &messages).await;
                if let Ok(mut busy) = d.busy.lock()
                    && let Some(n) = busy.get_mut(&webhook)
                {
                    *n -= 1;
                    if *n == 0 {
                        busy.remove(&webhook);
                    }
                }
                drop(permit);
                d.freed.notify_one();
            });
        }
        Ok(full)
    }

    /// Leases the due queues' next deliveries, under the cluster-wide claim lock: a claim
    /// sees every earlier claim's leases, so no queue is ever sent by two processes.
    async fn claim(
        &self,
        busy: &[Uuid],
        queues: i64,
    ) -> sqlx::Result<(Vec<Claimed>, Vec<Endpoint>)> {
        let mut tx = self.state.db.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        let rows: Vec<Claimed> = sqlx::query_as(
            r#"
            WITH RECURSIVE heads AS (
                -- Each queue's first pending row, one index descent per queue (a loose
                -- index scan): a claim costs the number of queues, not the backlog.
                (SELECT webhook_id, conversation_id, pos, next_attempt_at, leased_until
                 FROM webhook_deliveries WHERE state = 'pending'
                 ORDER BY webhook_id, conversation_id, pos LIMIT 1)
                UNION ALL
                SELECT n.webhook_id, n.conversation_id, n.pos, n.next_attempt_at, n.leased_until
                FROM heads h CROSS JOIN LATERAL (
                    SELECT d.webhook_id, d.conversation_id, d.pos, d.next_attempt_at, d.leased_until
                    FROM webhook_deliveries d
                    WHERE d.state = 'pending'
                      AND (d.webhook_id, d.conversation_id) > (h.webhook_id, h.conversation_id)
                    ORDER BY d.webhook_id, d.conversation_id, d.pos LIMIT 1
                ) n
            ), due AS (
                SELECT h.webhook_id, h.conversation_id, h.next_attempt_at, h.pos,
                       row_number() OVER (PARTITION BY h.webhook_id
                                          ORDER BY h.next_attempt_at, h.pos) AS rank
                FROM heads h
                JOIN webhooks w ON w.id = h.webhook_id AND w.active
                WHERE h.next_attempt_at <= now()
                  AND NOT (h.webhook_id = ANY($1))
                  -- A queue in flight has its head leased: leases cover a prefix of the
                  -- queue (a replayed dead letter joins at the back).
                  AND (h.leased_until IS NULL OR h.leased_until < now())
            ), ready AS (
                SELECT webhook_id, conversation_id, pos FROM due
                WHERE rank <= $5
                ORDER BY next_attempt_at, pos
                LIMIT $2
            ), leased AS (
                -- The head's lease locks its queue: rows only ever leave a queue from
                -- the front, and a batch's delivered rows are deleted together.
                UPDATE webhook_deliveries d
                SET leased_until = now() + $4 * interval '1 millisecond'
                FROM ready r WHERE d.pos = r.pos
            )
            SELECT q.* FROM ready r CROSS JOIN LATERAL (
                SELECT d.pos, d.id, d.webhook_id, d.conversation_id, d.event_type,
                       d.message_id, d.data, d.occurred_at, d.attempts, d.created_at
                FROM webhook_deliveries d
                WHERE d.state = 'pending' AND d.webhook_id = r.webhook_id
                  AND d.conversation_id = r.conversation_id
                ORDER BY d.pos LIMIT $3
            ) q
            "#,
        )
        .bind(busy)
        .bind(queues)
        .bind(PER_QUEUE)
        .bind(self.lease.as_millis() as f64)
        .bind(QUEUES_PER_ENDPOINT as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut ids: Vec<Uuid> = rows.iter().map(|r| r.webhook_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let endpoints = if ids.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as("SELECT id, url, secret, batch_size FROM webhooks WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?
        };
        tx.commit().await?;
        Ok((rows, endpoints))
    }

    /// The messages message events name: new ones as this process heard them committed,
    /// the others read back as the REST API shows them now (rendered once per claim).
    async fn render(&self, rows: &[Claimed]) -> sqlx::Result<Rendered> {
        let mut rendered = Rendered::default();
        let mut ids: Vec<Uuid> = Vec::new();
        if let Ok(mut recent) = self.recent.lock() {
            recent.wanted();
            for row in rows {
                let Some(id) = row.message_id else { continue };
                match recent.messages.get(&id) {
                    Some(json) if row.is_created() => {
                        rendered.committed.insert(id, json.clone());
                    }
                    _ => ids.push(id),
                }
            }
        }
        if ids.is_empty() {
            return Ok(rendered);
        }
        let found: Vec<Row> = sqlx::query_as(concat!(message_select!(), "WHERE m.id = ANY($1)"))
            .bind(&ids)
            .fetch_all(&self.state.db)
            .await?;
        rendered.current.extend(found.into_iter().filter_map(|row| {
            let message = Message::from(row);
            let raw = serde_json::value::to_raw_value(&message).ok()?;
            Some((message.id, raw))
        }));
        Ok(rendered)
    }

    /// Sends a claimed queue in order, `batch_size` events per request, and stops at the
    /// first failure (its backoff then holds the queue).
    async fn send_queue(&self, endpoint: &Endpoint, queue: Vec<Claimed>, messages: &Rendered) {
        let started = Instant::now();
        let mut delivered = Vec::with_capacity(queue.len());
        let batch_size = usize::try_from(endpoint.batch_size.clamp(1, MAX_BATCH)).unwrap_or(1);
        let url = reqwest::Url::parse(&endpoint.url);
        for batch in queue.chunks(batch_size) {
            if self.state.shutdown.is_cancelled() || started.elapsed() > self.lease / 2 {
                // The rest goes in a later claim (by any process), still in order.
                break;
            }
            let head = &batch[0];
            let result = match &url {
                Ok(url) => match body(batch, endpoint.batched(), messages) {
                    Ok(body) => {
                        self.post(endpoint, url.clone(), head, batch.len(), body)
                            .await
                    }
                    Err(e) => Err((None, format!("could not render the event: {e}"))),
                },
                Err(e) => Err((None, format!("invalid URL: {e}"))),
            };
            match result {
                Ok(()) => {
                    for row in batch {
                        crate::metrics::webhook_delivered(
                            (Utc::now() - row.occurred_at).to_std().unwrap_or_default(),
                        );
                        delivered.push((row.pos, row.webhook_id));
                    }
                }
                Err((status, error)) => {
                    // Its backoff holds the queue (in order) until it is due again.
                    self.failed(head, status, &error).await;
                    break;
                }
            }
        }
        if delivered.is_empty() {
            // Nothing left the queue: unlock it (a failed head is unlocked already).
            if let Some(head) = queue.first() {
                self.release(&[head.pos]).await;
            }
        } else {
            // The delivered rows, head first, are deleted together: the queue stays locked
            // by its head until they are gone. Should that fail, the lease runs out and
            // they go again with the same ids.
            let _ = self.delivered.send(delivered).await;
        }
    }

    /// One request: a single event (its delivery id and type in the headers), or for a
    /// batching endpoint a JSON array of `count` events.
    async fn post(
        &self,
        endpoint: &Endpoint,
        url: reqwest::Url,
        head: &Claimed,
        count: usize,
        body: Vec<u8>,
    ) -> Result<(), (Option<i32>, String)> {
        let t = Utc::now().timestamp();
        let signature = signature(&endpoint.secret, t, &body);
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-colloquy-signature", signature);
        request = if endpoint.batched() {
            request.header("x-colloquy-batch", count)
        } else {
            request
                .header("x-colloquy-delivery", head.id.to_string())
                .header("x-colloquy-event", &head.event_type)
        };
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| (None, describe(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err((
                Some(i32::from(status.as_u16())),
                format!("the endpoint answered {status}"),
            ))
        }
    }

    /// Schedules the next attempt with backoff (about 1 s, doubling, jittered, at most
    /// `WEBHOOK_MAX_BACKOFF`), or parks the delivery as a dead letter once the next attempt
    /// would fall past `WEBHOOK_RETRY_FOR` after it was first due.
    async fn failed(&self, row: &Claimed, status: Option<i32>, error: &str) {
        let config = &self.state.config;
        let exponent = u32::try_from(row.attempts.clamp(0, 30)).unwrap_or(30);
        let base = Duration::from_secs(1).saturating_mul(2u32.saturating_pow(exponent));
        let base = base.min(config.webhook_max_backoff);
        let delay = base.mul_f64(rand::rng().random_range(0.75..1.25));
        let due = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        let retry_for = chrono::Duration::from_std(config.webhook_retry_for).unwrap_or_default();
        let dead = due > row.created_at + retry_for;
        crate::metrics::webhook_failed(dead);
        tracing::debug!(webhook = %row.webhook_id, delivery = %row.id, error, dead, "webhook delivery failed");
        let result = sqlx::query(
            r#"
            WITH d AS (
                UPDATE webhook_deliveries
                SET attempts = attempts + 1, last_status = $2, last_error = $3,
                    leased_until = NULL, next_attempt_at = $4,
                    state = CASE WHEN $5 THEN 'dead' ELSE 'pending' END
                WHERE pos = $1
                RETURNING webhook_id
            )
            UPDATE webhooks SET last_failure_at = now(), last_error = $3
            WHERE id IN (SELECT webhook_id FROM d)
            "#,
        )
        .bind(row.pos)
        .bind(status)
        .bind(error)
        .bind(due)
        .bind(dead)
        .execute(&self.state.db)
        .await;
        if let Err(e) = result {
            // The lease runs out and the delivery is tried again then.
            tracing::warn!(error = %e, "could not record a webhook failure");
        }
    }

    async fn release(&self, positions: &[i64]) {
        if positions.is_empty() {
            return;
        }
        let result =
            sqlx::query("UPDATE webhook_deliveries SET leased_until = NULL WHERE pos = ANY($1)")
                .bind(positions)
                .execute(&self.state.db)
                .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not release webhook deliveries; their lease runs out");
        }
    }
}

/// Room reserved per event in a request's body.
const BODY_PER_EVENT: usize = 1024;

/// A request's body: one event's envelope, or (`batched`) an array of them.
fn body(rows: &[Claimed], batched: bool, messages: &Rendered) -> serde_json::Result<Vec<u8>> {
    let envelopes: Vec<Envelope> = rows
        .iter()
        .map(|row| Envelope {
            id: row.id,
            kind: &row.event_type,
            conversation_id: row.conversation_id,
            occurred_at: row.occurred_at,
            data: match (row.message_id, &row.data) {
                (Some(id), _) => messages.get(row, id).unwrap_or(Data::Gone {
                    id,
                    conversation_id: row.conversation_id,
                }),
                (None, Some(data)) => Data::Rendered(&data.0),
                (None, None) => Data::Null,
            },
        })
        .collect();
    // One allocation for the whole body (a message renders to well under 1 KiB
    // typically): no copies as it grows.
    let mut out = Vec::with_capacity(BODY_PER_EVENT * rows.len() + 2);
    match (batched, envelopes.as_slice()) {
        (false, [one]) => serde_json::to_writer(&mut out, one)?,
        _ => serde_json::to_writer(&mut out, &envelopes)?,
    }
    Ok(out)
}

/// What went wrong, without the URL's query (it may carry a token).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_redirect() {
        "redirect refused"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {detail}")
    }
}

/// How often the finisher vacuums the outbox while it deletes, and analyzes it.
const VACUUM_EVERY: Duration = Duration::from_secs(2);
const ANALYZE_EVERY: Duration = Duration::from_secs(30);

/// Deletes delivered rows in batches (and notes the endpoints' last success), and keeps
/// the outbox's indexes clean: every delivery leaves dead index entries at the front of its
/// queue, which each claim would otherwise walk until autovacuum (a minute or more) came.
async fn finish(
    state: AppState,
    mut delivered: mpsc::Receiver<Vec<(i64, Uuid)>>,
    freed: Arc<Notify>,
) {
    let mut batches = Vec::with_capacity(64);
    let mut batch = Vec::with_capacity(1024);
    let mut vacuumed = Instant::now();
    let mut analyzed = Instant::now();
    let mut deleted_since = 0usize;
    loop {
        if delivered.recv_many(&mut batches, 64).await == 0 {
            return;
        }
        batch.extend(batches.drain(..).flatten());
        deleted_since += batch.len();
        if deleted_since >= 1000 && vacuumed.elapsed() >= VACUUM_EVERY {
            let statement = if analyzed.elapsed() >= ANALYZE_EVERY {
                analyzed = Instant::now();
                "VACUUM (ANALYZE) webhook_deliveries"
            } else {
                "VACUUM webhook_deliveries"
            };
            if let Err(e) = sqlx::query(statement).execute(&state.delivery_db).await {
                tracing::debug!(error = %e, "could not vacuum the webhook outbox");
            }
            vacuumed = Instant::now();
            deleted_since = 0;
        }
        let positions: Vec<i64> = batch.iter().map(|(p, _)| *p).collect();
        let mut endpoints: Vec<Uuid> = batch.iter().map(|(_, w)| *w).collect();
        endpoints.sort();
        endpoints.dedup();
        batch.clear();
        let result = sqlx::query(
            r#"
            WITH gone AS (DELETE FROM webhook_deliveries WHERE pos = ANY($1))
            UPDATE webhooks SET last_success_at = now()
            WHERE id = ANY($2) AND (last_success_at IS NULL OR last_success_at < now() - interval '5 seconds')
            "#,
        )
        .bind(&positions)
        .bind(&endpoints)
        .execute(&state.db)
        .await;
        if let Err(e) = result {
            // Their leases run out and they are sent again, with the same ids.
            tracing::warn!(error = %e, count = positions.len(), "could not record delivered webhooks");
        }
        // Their queues are unlocked: what waits behind them is due.
        freed.notify_one();
    }
}

/// Queue depth, oldest undelivered age and dead letters, every few seconds.
async fn gauges(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        if !state.is_ready() {
            continue;
        }
        let row: Result<(i64, Option<f64>, i64), _> = sqlx::query_as(
            r#"
            SELECT count(*) FILTER (WHERE state = 'pending'),
                   extract(epoch FROM now() - min(occurred_at) FILTER (WHERE state = 'pending'))::float8,
                   count(*) FILTER (WHERE state = 'dead')
            FROM webhook_deliveries
            "#,
        )
        .fetch_one(&state.delivery_db)
        .await;
        if let Ok((pending, oldest, dead)) = row {
            crate::metrics::webhook_queue(pending, oldest.unwrap_or(0.0), dead);
        }
        // Rows a racing send wrote for an endpoint deleted meanwhile.
        // `= ANY(ARRAY(…))` runs the search once, whatever the planner believes about a
        // table that goes from empty to thousands of rows between analyses (as `IN (…)` it
        // could be re-run per row: seconds of CPU under load).
        let _ = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE pos = ANY(ARRAY(
                 SELECT d.pos FROM webhook_deliveries d LEFT JOIN webhooks w ON w.id = d.webhook_id
                 WHERE w.id IS NULL LIMIT 10000))",
        )
        .execute(&state.delivery_db)
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_t_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            signature("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    fn claimed(event_type: &str, message_id: Option<Uuid>, data: Option<&str>) -> Claimed {
        Claimed {
            pos: 1,
            id: Uuid::nil(),
            webhook_id: Uuid::nil(),
            conversation_id: Uuid::max(),
            event_type: event_type.into(),
            message_id,
            data: data.map(|d| sqlx::types::Json(RawValue::from_string(d.into()).unwrap())),
            occurred_at: DateTime::UNIX_EPOCH,
            attempts: 0,
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn bodies_carry_rendered_stored_gone_or_null_data() {
        let kept = Uuid::now_v7();
        let gone = Uuid::now_v7();
        let mut messages = Rendered::default();
        let committed = Event::new(
            EventKind::MessageCreated,
            Uuid::max(),
            String::new(),
            serde_json::json!({"text": "as committed \"quoted\""}),
            Default::default(),
        );
        messages
            .committed
            .insert(kept, committed.data_json().clone());
        messages.current.insert(
            kept,
            RawValue::from_string(r#"{"text":"now"}"#.into()).unwrap(),
        );
        let rows = [
            claimed("message.created", Some(kept), None),
            claimed("message.updated", Some(kept), None),
            claimed("message.deleted", Some(gone), None),
            claimed("messages.read", None, Some(r#"{"last_read_seq":3}"#)),
            claimed("conversation.updated", None, None),
        ];
        let batch: serde_json::Value =
            serde_json::from_slice(&body(&rows, true, &messages).unwrap()).unwrap();
        let data: Vec<&serde_json::Value> = batch
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["data"])
            .collect();
        assert_eq!(
            *data[0],
            serde_json::json!({"text": "as committed \"quoted\""}),
            "as committed"
        );
        assert_eq!(data[1]["text"], "now");
        assert_eq!(
            *data[2],
            serde_json::json!({"id": gone, "conversation_id": Uuid::max()})
        );
        assert_eq!(data[3]["last_read_seq"], 3);
        assert!(data[4].is_null());
        assert_eq!(batch[0]["type"], "message.created");
        let one: serde_json::Value =
            serde_json::from_slice(&body(&rows[..1], false, &messages).unwrap()).unwrap();
        assert_eq!(one, batch[0], "a single event is the bare envelope");
    }
}
