//! Group commit for sends.
//!
//! Every send becomes a [`Draft`] queued to a few writer tasks. A writer takes whatever
//! has queued up (up to [`MAX_BATCH`]) and stores it with **one statement**: the drafts'
//! conversations are locked in id order, each gets `last_seq + n`, every row is inserted
//! and each sender's read horizon moves. The statement commits or fails as a whole, and
//! each caller hears back only after that commit. Under no load a batch is one draft, so
//! nothing waits for company.
//!
//! Anything the batch statement does not store — a draft whose sender may not write, an
//! archived conversation, a repeated `client_message_id`, or any error — is sent again on
//! its own (the same statement with one draft), whose answer (row, nothing, or the unique
//! violation) the caller turns into the usual result. So batching changes throughput,
//! never outcomes.
//!
//! The writer itself announces every message it committed (`MessageCreated`), before it
//! answers the caller: a caller that is gone (a timed-out request, a dropped socket) does
//! not take the broadcast with it, and nothing is announced that was not committed.

use std::{collections::HashMap, sync::Arc};

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{
    events::{Event, EventKind, Events, Origin},
    messages::{Message, Row},
};

/// Drafts stored by one statement at most.
pub const MAX_BATCH: usize = 128;
/// Writer tasks (each holds at most one pooled connection at a time). Two measured best on
/// two cores: one more batch can form while the other commits; more split the batches.
pub const WRITERS: usize = 2;

/// One message to store, with what its write check needs.
#[derive(Debug)]
pub struct Draft {
    pub conversation_id: Uuid,
    pub id: Uuid,
    pub sender_id: String,
    pub sender_name: Option<String>,
    pub sender_type: String,
    pub text: String,
    pub client_message_id: Option<String>,
    pub platform_context: Value,
    pub attachments: Value,
    pub metadata: Value,
    pub thread_id: Option<String>,
    /// The caller: must be a participant unless `privileged`.
    pub principal_id: String,
    pub privileged: bool,
    /// Who sent it, for the transports' echo rules (where from is in `platform_context`).
    pub origin: Origin,
}

/// A stored message and its conversation's room.
#[derive(sqlx::FromRow)]
pub(crate) struct SentRow {
    #[sqlx(flatten)]
    pub(crate) row: Row,
    pub(crate) room: String,
}

/// What a caller hears: the stored message (already announced), or `None` when nothing
/// was written.
pub(crate) type WriteResult = Result<Option<Message>, sqlx::Error>;

struct Job {
    draft: Draft,
    reply: oneshot::Sender<WriteResult>,
}

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer tasks on `db`; they announce what they store on `events`.
    /// Stored messages also go to `responders` (agents that answer by themselves).
    pub fn spawn(
        db: PgPool,
        events: Events,
        responders: crate::responder::Registry,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let (queue, rx) = mpsc::channel::<Job>(MAX_BATCH * WRITERS * 4);
        let rx = Arc::new(Mutex::new(rx));
        let tasks = (0..WRITERS)
            .map(|_| {
                tokio::spawn(run(
                    db.clone(),
                    events.clone(),
                    responders.clone(),
                    rx.clone(),
                ))
            })
            .collect();
        (Self { queue }, tasks)
    }

    /// Stores `draft`; answers after the commit. `Ok(None)`: nothing was written (the
    /// sender may not write, or the conversation is archived or gone).
    pub(crate) async fn write(&self, draft: Draft) -> WriteResult {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { draft, reply })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        // A writer that stopped mid-batch (shutdown) never answers: not acknowledged, and
        // a retry with the same client id is safe either way.
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

/// Whether an error says the database cannot be reached (rather than rejecting a row).
fn unreachable_database(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57") || c.starts_with("53")),
        _ => false,
    }
}

async fn run(
    db: PgPool,
    events: Events,
    responders: crate::responder::Registry,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
                return;
            }
        }
        // A caller that gave up on a send without a client id cannot retry it safely:
        // storing it now would duplicate its retry. (With a client id, storing it is
        // harmless — the retry finds it — and it is delivered.)
        jobs.retain(|j| !(j.reply.is_closed() && j.draft.client_message_id.is_none()));
        if jobs.is_empty() {
            continue;
        }
        crate::metrics::write_batch(jobs.len());
        let mut stored: HashMap<Uuid, SentRow> = HashMap::new();
        if jobs.len() > 1 {
            let drafts: Vec<&Draft> = jobs.iter().map(|j| &j.draft).collect();
            match insert_batch(&db, &drafts).await {
                Ok(rows) => stored.extend(rows.into_iter().map(|r| (r.row.id, r))),
                Err(e) if unreachable_database(&e) => {
                    // One by one would wait for a connection once per draft: everyone
                    // hears at once instead, and retries with their client ids.
                    tracing::warn!(error = %e, batch = jobs.len(), "database unreachable; batch not stored");
                    for job in jobs.drain(..) {
                        let _ = job.reply.send(Err(sqlx::Error::PoolTimedOut));
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, batch = jobs.len(), "batch not stored; sending one by one");
                }
            }
        }
        // What the batch stored is answered; everything else is stored alone, whose
        // answer (row, nothing, or the unique violation) is the caller's outcome.
        for job in jobs.drain(..) {
            let result = match stored.remove(&job.draft.id) {
                Some(row) => Ok(Some(row)),
                None => insert_one(&db, &job.draft).await,
            };
            let result = result.map(|row| row.map(|row| announce(&events, &job.draft, row)));
            if let Ok(Some(message)) = &result {
                responders.stored(message);
            }
            let _ = job.reply.send(result);
        }
    }
}

/// Publishes a committed message, as the REST API shows it (`messageBroadcast` takes its
/// `source` from `platform_context.metadata`).
fn announce(events: &Events, draft: &Draft, SentRow { row, room }: SentRow) -> Message {
    let message: Message = row.into();
    crate::metrics::message_persisted();
    let data = serde_json::to_value(&message).unwrap_or(Value::Null);
    events.publish(Event::new(
        EventKind::MessageCreated,
        message.conversation_id,
        room,
        data,
        draft.origin.clone(),
    ));
    message
}

/// One draft alone, in its own transaction: a single row lock needs no ordering.
async fn insert_one(db: &PgPool, d: &Draft) -> Result<Option<SentRow>, sqlx::Error> {
    Ok(store(db, &[d]).await?.pop())
}

/// Many drafts in one transaction: the conversations are locked in id order (so
/// concurrent batches, here or in other processes, cannot deadlock), then [`store`]
/// writes them. Drafts not allowed, or in archived conversations, are simply not returned.
async fn insert_batch(db: &PgPool, drafts: &[&Draft]) -> Result<Vec<SentRow>, sqlx::Error> {
    let mut tx = db.begin().await?;
    // Lock order is id order, whatever order the statement below updates in.
    sqlx::query("SELECT 1 FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(drafts.iter().map(|d| d.conversation_id).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    let rows = store(&mut *tx, drafts).await?;
    tx.commit().await?;
    Ok(rows)
}

/// The one statement that stores drafts: keeps those whose caller may write, takes
/// `last_seq + n` per (unarchived) conversation, numbers the drafts in queue order,
/// inserts them and moves each sender's read horizon to their last message. It commits
/// or fails as a whole, so `seq` never has a gap.
async fn store<'e>(
    db: impl sqlx::PgExecutor<'e>,
    drafts: &[&Draft],
) -> Result<Vec<SentRow>, sqlx::Error> {
    macro_rules! column {
        ($field:ident) => {
            drafts.iter().map(|d| d.$field.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query_as(concat!(
        r#"
        WITH input AS (
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::text[], $8::jsonb[], $9::jsonb[], $10::jsonb[],
                                 $11::text[], $12::text[], $13::bool[])
                WITH ORDINALITY AS t(conv, id, sender_id, sender_name, sender_type, body,
                                     client_id, platform_context, attachments, metadata,
                                     thread_id, principal_id, privileged, ord)
        ), allowed AS (
            SELECT i.* FROM input i
            WHERE i.privileged OR EXISTS (SELECT 1 FROM participants p
                                          WHERE p.conversation_id = i.conv
                                            AND p.participant_id = i.principal_id)
        ), counts AS (
            SELECT conv, count(*) AS n FROM allowed GROUP BY conv
        ), c AS (
            UPDATE conversations
            SET last_seq = last_seq + counts.n, message_count = message_count + counts.n,
                last_message_at = now(), updated_at = now()
            FROM counts
            WHERE conversations.id = counts.conv AND conversations.archived_at IS NULL
            RETURNING conversations.id, conversations.last_seq - counts.n AS base,
                      conversations.platform, conversations.platform_conversation_id AS room
        ), numbered AS (
            SELECT a.*, c.base + row_number() OVER (PARTITION BY a.conv ORDER BY a.ord) AS seq,
                   c.platform, c.room
            FROM allowed a JOIN c ON c.id = a.conv
        ), m AS (
            INSERT INTO messages
                (id, conversation_id, seq, sender_id, sender_name, sender_type, text,
                 client_message_id, platform_context, attachments, metadata, thread_id)
            SELECT id, conv, seq, sender_id, sender_name, sender_type, body, client_id,
                   platform_context || jsonb_build_object('platform', platform,
                       'room_id', room, 'channel_id', room),
                   attachments, metadata, thread_id
            FROM numbered
            ORDER BY conv, seq
            RETURNING *
        ), horizon AS (
            -- Participants' own sends move their read horizon. Only an update: a send
            -- racing the sender's removal must never insert them back.
            UPDATE participants SET last_read_seq = greatest(participants.last_read_seq, n.seq)
            FROM (SELECT DISTINCT ON (conv, sender_id) conv, sender_id, seq
                  FROM numbered WHERE NOT privileged
                  ORDER BY conv, sender_id, seq DESC) n
            WHERE participants.conversation_id = n.conv AND participants.participant_id = n.sender_id
        ), joined AS (
            -- A service (or admin) sending for someone makes that sender a participant.
            INSERT INTO participants
                (conversation_id, participant_id, participant_type, display_name, last_read_seq)
            SELECT DISTINCT ON (conv, sender_id) conv, sender_id, sender_type, sender_name, seq
            FROM numbered WHERE privileged
            ORDER BY conv, sender_id, seq DESC
            ON CONFLICT (conversation_id, participant_id)
            DO UPDATE SET last_read_seq = greatest(participants.last_read_seq, excluded.last_read_seq)
        ), hooks AS (
            -- The webhook outbox (contract §8): one delivery per matching endpoint, in the
            -- statement that commits the message. Numbered in seq order while the
            -- conversation row is locked, so each endpoint's queue follows the log.
            "#,
        crate::core::webhooks::message_created_deliveries!(),
        r#"
            ORDER BY m.conversation_id, m.seq, w.id
        )
        SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.sender_name, m.sender_type, m.text,
               m.client_message_id, m.platform_context, m.attachments, m.metadata, m.thread_id,
               m.reactions, m.edit_history, m.created_at, m.updated_at, m.deleted_at,
               NULL::bigint AS read_horizon, numbered.room
        FROM m JOIN numbered ON numbered.id = m.id
        "#
    ))
    .bind(column!(conversation_id))
    .bind(column!(id))
    .bind(column!(sender_id))
    .bind(column!(sender_name))
    .bind(column!(sender_type))
    .bind(column!(text))
    .bind(column!(client_message_id))
    .bind(column!(platform_context))
    .bind(column!(attachments))
    .bind(column!(metadata))
    .bind(column!(thread_id))
    .bind(column!(principal_id))
    .bind(column!(privileged))
    .fetch_all(db)
    .await
}
