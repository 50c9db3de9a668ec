//! Data in and out (contract §3): bulk history import, a principal's export, erasure.
//! Also the transcript append behind seed 003's `messages` arrays (the localStorage
//! migration path), which is an import that must extend, never rewrite, stored history.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::mpsc;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    access::Access,
    events::{Event, EventKind},
    messages::{self, Message, Row, SERVER_ID, message_select},
    validate,
};
use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

/// Messages one import call takes at most.
pub const MAX_IMPORT: usize = 1000;
/// Longest transcript (seed 003's `messages` array) one request may carry.
pub const MAX_TRANSCRIPT: usize = 5000;
/// The senders of transcript lines without a principal of their own: ids in the reserved
/// `colloquy:` namespace, which no token may carry (`auth`), so no one exports or erases
/// them as their own.
pub const ASSISTANT: &str = "colloquy:assistant";
pub const SYSTEM: &str = "colloquy:system";

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ImportMessage {
    /// The original sender. Imported senders are not made participants.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub sender_id: String,
    /// `user|agent|system`, default `user`.
    pub sender_type: Option<String>,
    #[schema(max_length = 128)]
    pub sender_name: Option<String>,
    /// May be empty (history is kept as it was); at most `MAX_MESSAGE_CHARS`.
    #[serde(alias = "content")]
    #[schema(max_length = 10000)]
    pub text: String,
    /// When it was originally sent (kept as `created_at`).
    #[serde(alias = "timestamp")]
    pub created_at: DateTime<Utc>,
    /// Required: a re-run of the same import skips what is already stored by (sender, id).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub client_message_id: String,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ImportRequest {
    /// In order; at most 1000 per call.
    #[schema(max_items = 1000)]
    pub messages: Vec<ImportMessage>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Imported {
    /// Messages stored by this call.
    pub imported: usize,
    /// Messages already stored by an earlier run (same sender and client id).
    pub skipped: usize,
    /// The conversation's `last_seq` after the import.
    pub last_seq: i64,
}

/// One message of history to append, already validated.
pub(crate) struct Entry {
    pub sender_id: String,
    pub sender_type: String,
    pub sender_name: Option<String>,
    pub text: String,
    pub client_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub metadata: Value,
}

fn entry_text(state: &AppState, index: usize, text: &str) -> AppResult<()> {
    let field = format!("messages[{index}].text");
    validate::no_nul(&field, text)?;
    let max = state.config.max_message_chars;
    if text.chars().count() > max {
        return Err(AppError::invalid_field(
            &field,
            format!("must be at most {max} characters (MAX_MESSAGE_CHARS)"),
        ));
    }
    Ok(())
}

/// Appends history with its original senders and timestamps (owner, admin or service):
/// idempotent on (sender, client id), in the order given, `seq` continuing the log.
pub async fn import(
    state: &AppState,
    principal: &Principal,
    conversation_id: Uuid,
    input: ImportRequest,
) -> AppResult<Imported> {
    if input.messages.len() > MAX_IMPORT {
        return Err(AppError::invalid_field(
            "messages",
            format!("at most {MAX_IMPORT} messages per call; import in batches"),
        ));
    }
    let mut entries = Vec::with_capacity(input.messages.len());
    for (i, m) in input.messages.into_iter().enumerate() {
        validate::id(&format!("messages[{i}].sender_id"), &m.sender_id)?;
        validate::id(
            &format!("messages[{i}].client_message_id"),
            &m.client_message_id,
        )?;
        let sender_type = m.sender_type.unwrap_or_else(|| "user".into());
        validate::one_of(
            &format!("messages[{i}].sender_type"),
            &sender_type,
            validate::PARTICIPANT_TYPES,
        )?;
        if let Some(n) = &m.sender_name {
            validate::max_chars(
                &format!("messages[{i}].sender_name"),
                n,
                validate::MAX_ID_CHARS,
            )?;
        }
        entry_text(state, i, &m.text)?;
        validate::date(&format!("messages[{i}].created_at"), Some(&m.created_at))?;
        let metadata = m.metadata.unwrap_or_else(|| json!({}));
        validate::json_object(&format!("messages[{i}].metadata"), &metadata)?;
        entries.push(Entry {
            sender_id: m.sender_id,
            sender_type,
            sender_name: m.sender_name,
            text: m.text,
            client_message_id: Some(m.client_message_id),
            created_at: m.created_at,
            metadata,
        });
    }
    let access = Access::load(&state.db, principal, conversation_id).await?;
    access.require_manage("import history")?;
    let total = entries.len();
    let mut tx = state.db.begin().await?;
    let last_seq = lock_active(&mut tx, conversation_id).await?;
    let stored = append(&mut tx, conversation_id, &entries, "import").await?;
    finish(state, tx, &access, &stored).await?;
    Ok(Imported {
        imported: stored.len(),
        skipped: total - stored.len(),
        last_seq: stored.last().map_or(last_seq, |m| m.seq),
    })
}

/// One message of a client-kept transcript (seed 003's `{role, content, timestamp}`).
pub struct TranscriptEntry {
    pub role: String,
    pub content: String,
    /// Epoch milliseconds; `None`: now.
    pub timestamp: Option<i64>,
}

/// How transcript roles map onto senders: `user` is the conversation's user, `assistant`
/// its agent, anything else a system message that keeps its role.
pub struct Voices<'a> {
    pub user: &'a str,
    pub assistant: &'a str,
}

/// The role a stored message has in a transcript.
pub fn role_of(message: &Message) -> String {
    if let Some(role) = message.metadata.get("role").and_then(Value::as_str) {
        return role.to_owned();
    }
    match message.sender_type.as_str() {
        "agent" => "assistant",
        "system" => "system",
        _ => "user",
    }
    .to_owned()
}

/// Brings the stored log up to a client's transcript: the entries past what is stored
/// are appended with their timestamps. The transcript must extend the stored history
/// (its deleted messages left out): an entry that differs from the stored one at its
/// index is `HISTORY_CONFLICT` naming that index, and nothing is stored. Returns the
/// number of messages appended.
pub async fn append_transcript(
    state: &AppState,
    principal: &Principal,
    conversation_id: Uuid,
    transcript: Vec<TranscriptEntry>,
    voices: Voices<'_>,
) -> AppResult<usize> {
    if transcript.len() > MAX_TRANSCRIPT {
        return Err(AppError::invalid_field(
            "messages",
            format!("at most {MAX_TRANSCRIPT} messages per conversation through this API"),
        ));
    }
    for (i, e) in transcript.iter().enumerate() {
        validate::id(&format!("messages[{i}].role"), &e.role)?;
        validate::max_chars(&format!("messages[{i}].role"), &e.role, 32)?;
        entry_text(state, i, &e.content)?;
        if let Some(ts) = e.timestamp
            && DateTime::<Utc>::from_timestamp_millis(ts)
                .is_none_or(|d| validate::date("timestamp", Some(&d)).is_err())
        {
            return Err(AppError::invalid_field(
                &format!("messages[{i}].timestamp"),
                "must be epoch milliseconds between years 1 and 9999",
            ));
        }
    }
    // The transcript speaks for everyone in it (the agent's lines too): its owner's to write.
    let access = Access::load(&state.db, principal, conversation_id).await?;
    access.require_manage("write its transcript")?;
    let mut tx = state.db.begin().await?;
    lock_active(&mut tx, conversation_id).await?;
    let stored = visible_log(&mut tx, conversation_id).await?;
    for (i, (have, want)) in stored.iter().zip(&transcript).enumerate() {
        let same = role_of(have) == want.role
            && have.text == want.content
            && want
                .timestamp
                .is_none_or(|ts| have.created_at.timestamp_millis() == ts);
        if !same {
            return Err(AppError::HistoryDiffers { index: i });
        }
    }
    if transcript.len() < stored.len() {
        return Err(AppError::HistoryDiffers {
            index: transcript.len(),
        });
    }
    let now = Utc::now();
    let entries: Vec<Entry> = transcript
        .into_iter()
        .skip(stored.len())
        .map(|e| {
            let (sender_id, sender_type) = match e.role.as_str() {
                "user" => (voices.user, "user"),
                "assistant" => (voices.assistant, "agent"),
                _ => (SYSTEM, "system"),
            };
            Entry {
                sender_id: sender_id.to_owned(),
                sender_type: sender_type.to_owned(),
                sender_name: None,
                text: e.content,
                client_message_id: None,
                created_at: e
                    .timestamp
                    .and_then(DateTime::<Utc>::from_timestamp_millis)
                    .unwrap_or(now),
                metadata: json!({ "role": e.role }),
            }
        })
        .collect();
    let stored = append(&mut tx, conversation_id, &entries, "transcript").await?;
    finish(state, tx, &access, &stored).await?;
    Ok(stored.len())
}

/// Every message of a conversation that is not deleted, oldest first.
pub async fn visible_log(
    conn: &mut PgConnection,
    conversation_id: Uuid,
) -> AppResult<Vec<Message>> {
    let mut logs = visible_logs(conn, &[conversation_id]).await?;
    Ok(logs.remove(&conversation_id).unwrap_or_default())
}

/// The visible logs of several conversations (for adapters that show whole transcripts).
pub async fn visible_logs(
    db: impl sqlx::PgExecutor<'_>,
    conversations: &[Uuid],
) -> AppResult<std::collections::HashMap<Uuid, Vec<Message>>> {
    let rows: Vec<Row> = sqlx::query_as(concat!(
        message_select!(),
        "WHERE m.conversation_id = ANY($1) AND m.deleted_at IS NULL ORDER BY m.conversation_id, m.seq"
    ))
    .bind(conversations)
    .fetch_all(db)
    .await?;
    let mut logs: std::collections::HashMap<Uuid, Vec<Message>> = Default::default();
    for row in rows {
        let m: Message = row.into();
        logs.entry(m.conversation_id).or_default().push(m);
    }
    Ok(logs)
}

/// Locks the conversation row (as sends do) and checks it takes messages; its `last_seq`.
async fn lock_active(tx: &mut Transaction<'_, Postgres>, conversation_id: Uuid) -> AppResult<i64> {
    let row: Option<(i64, bool)> = sqlx::query_as(
        "SELECT last_seq, archived_at IS NOT NULL FROM conversations WHERE id = $1 FOR UPDATE",
    )
    .bind(conversation_id)
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        None => Err(AppError::NotFound("conversation")),
        Some((_, true)) => Err(AppError::archived()),
        Some((last_seq, false)) => Ok(last_seq),
    }
}

/// Inserts `entries` after the log's end (the conversation row is locked), skipping those
/// whose (sender, client id) is already stored, and records them for webhooks. Senders
/// that are participants have their read horizon moved past their own messages.
async fn append(
    tx: &mut Transaction<'_, Postgres>,
    conversation_id: Uuid,
    entries: &[Entry],
    source: &str,
) -> AppResult<Vec<Message>> {
    if entries.is_empty() {
        return Ok(vec![]);
    }
    macro_rules! column {
        ($field:ident) => {
            entries.iter().map(|e| e.$field.clone()).collect::<Vec<_>>()
        };
    }
    let ids: Vec<Uuid> = entries.iter().map(|_| Uuid::now_v7()).collect();
    let rows: Vec<Row> = sqlx::query_as(concat!(
        r#"
        WITH input AS (
            SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::text[], $8::timestamptz[], $9::jsonb[])
                WITH ORDINALITY AS t(id, sender_id, sender_type, sender_name, body, client_id,
                                     created_at, metadata, ord)
        ), fresh AS (
            SELECT DISTINCT ON (i.sender_id, coalesce(i.client_id, i.id::text)) i.*
            FROM input i
            WHERE i.client_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM messages x
                WHERE x.conversation_id = $1 AND x.sender_id = i.sender_id
                  AND x.client_message_id = i.client_id)
            ORDER BY i.sender_id, coalesce(i.client_id, i.id::text), i.ord
        ), numbered AS (
            SELECT f.*, c.last_seq + row_number() OVER (ORDER BY f.ord) AS seq,
                   c.platform, c.platform_conversation_id AS room
            FROM fresh f CROSS JOIN conversations c WHERE c.id = $1
        ), m AS (
            INSERT INTO messages
                (id, conversation_id, seq, sender_id, sender_name, sender_type, text,
                 client_message_id, platform_context, metadata, created_at, updated_at)
            SELECT id, $1, seq, sender_id, sender_name, sender_type, body, client_id,
                   jsonb_build_object('platform', platform, 'room_id', room, 'channel_id', room,
                       'thread_id', NULL, 'server_id', $10::text,
                       'metadata', jsonb_build_object('source', $11::text)),
                   metadata, created_at, created_at
            FROM numbered
            ORDER BY seq
            RETURNING *
        ), c AS (
            UPDATE conversations
            SET last_seq = last_seq + (SELECT count(*) FROM m),
                message_count = message_count + (SELECT count(*) FROM m),
                last_message_at = greatest(last_message_at, (SELECT max(created_at) FROM m)),
                updated_at = now()
            WHERE id = $1 AND EXISTS (SELECT 1 FROM m)
        ), horizon AS (
            UPDATE participants SET last_read_seq = greatest(participants.last_read_seq, n.seq)
            FROM (SELECT sender_id, max(seq) AS seq FROM numbered GROUP BY sender_id) n
            WHERE participants.conversation_id = $1 AND participants.participant_id = n.sender_id
        ), hooks AS (
            "#,
        super::webhooks::message_created_deliveries!(),
        r#"
            ORDER BY m.seq, w.id
        )
        SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.sender_name, m.sender_type, m.text,
               m.client_message_id, m.platform_context, m.attachments, m.metadata, m.thread_id,
               m.reactions, m.edit_history, m.created_at, m.updated_at, m.deleted_at,
               NULL::bigint AS read_horizon
        FROM m ORDER BY m.seq
        "#
    ))
    .bind(conversation_id)
    .bind(&ids)
    .bind(column!(sender_id))
    .bind(column!(sender_type))
    .bind(column!(sender_name))
    .bind(column!(text))
    .bind(column!(client_message_id))
    .bind(column!(created_at))
    .bind(column!(metadata))
    .bind(SERVER_ID)
    .bind(source)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Commits an append and wakes the transports: one event for the newest message is
/// enough, the delivery stage reads the rest from the log.
async fn finish(
    state: &AppState,
    tx: Transaction<'_, Postgres>,
    access: &Access,
    stored: &[Message],
) -> AppResult<()> {
    tx.commit().await?;
    if let Some(last) = stored.last() {
        crate::metrics::message_persisted();
        state.events.publish(messages::event(
            EventKind::MessageCreated,
            &access.room,
            last,
        ));
    }
    Ok(())
}

/// What one erasure removed.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct Erased {
    pub principal_id: String,
    /// Messages it sent, now tombstones.
    pub messages: u64,
    pub participations: u64,
    pub reactions: u64,
    /// Agent records it owned, or that were it.
    pub agents: u64,
    pub webhooks: u64,
    pub profile: bool,
}

fn self_or_admin(principal: &Principal, id: &str) -> AppResult<()> {
    validate::id("id", id)?;
    if principal.id != id && !principal.admin {
        return Err(AppError::Forbidden(
            "only the principal itself or an admin may do this".into(),
        ));
    }
    Ok(())
}

/// Erases a principal (self or admin): its messages become tombstones (content, name,
/// attachments, edit history and reactions gone), its participations (pins and read
/// state with them), reactions, agent records, webhooks and profile are removed. Live
/// subscribers hear of every change.
pub async fn erase(state: &AppState, principal: &Principal, id: &str) -> AppResult<Erased> {
    self_or_admin(principal, id)?;
    let mut tx = state.db.begin().await?;
    // Reactions it gave: removed, and the counts on those messages recomputed.
    let reacted: Vec<(Uuid,)> =
        sqlx::query_as("DELETE FROM reactions WHERE principal_id = $1 RETURNING message_id")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    let reacted_ids: Vec<Uuid> = reacted.iter().map(|(m,)| *m).collect();
    sqlx::query(
        r#"
        UPDATE messages m SET reactions = coalesce(
            (SELECT jsonb_object_agg(emoji, n) FROM
                (SELECT emoji, count(*) AS n FROM reactions r WHERE r.message_id = m.id GROUP BY emoji) x),
            '{}'::jsonb), updated_at = now()
        WHERE m.id = ANY($1)
        "#,
    )
    .bind(&reacted_ids)
    .execute(&mut *tx)
    .await?;
    // Its messages: tombstones, as a delete leaves them (contract §3), and nameless.
    let tombstoned: Vec<(Uuid,)> = sqlx::query_as(
        r#"
        WITH mine AS (
            -- Conversation by conversation through the (conversation, sender) index; the
            -- OFFSET keeps the planner from turning this into a scan of every message.
            SELECT x.id FROM conversations c CROSS JOIN LATERAL (
                SELECT m.id FROM messages m
                WHERE m.conversation_id = c.id AND m.sender_id = $1
                  AND (m.deleted_at IS NULL OR m.sender_name IS NOT NULL)
                OFFSET 0
            ) x
        )
        UPDATE messages
        SET deleted_at = coalesce(deleted_at, now()), updated_at = now(), sender_name = NULL,
            text = '', attachments = '[]', metadata = '{}', edit_history = '[]', reactions = '{}'
        WHERE id IN (SELECT id FROM mine)
        RETURNING id
        "#,
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let tombstoned: Vec<Uuid> = tombstoned.into_iter().map(|(m,)| m).collect();
    sqlx::query("DELETE FROM reactions WHERE message_id = ANY($1)")
        .bind(&tombstoned)
        .execute(&mut *tx)
        .await?;
    let left: Vec<(Uuid, String)> = sqlx::query_as(
        r#"
        DELETE FROM participants p USING conversations c
        WHERE p.participant_id = $1 AND c.id = p.conversation_id
        RETURNING p.conversation_id, c.platform_conversation_id
        "#,
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let agents: Vec<(String,)> = sqlx::query_as(
        "DELETE FROM agents WHERE owner_id = $1 OR agent_id = $1 RETURNING agent_id",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let agent_ids: Vec<String> = agents.iter().map(|(a,)| a.clone()).collect();
    // Responders its ownership configured go with it (an agent's own, too).
    sqlx::query("DELETE FROM agent_responders WHERE agent_id = ANY($1) OR agent_id = $2")
        .bind(&agent_ids)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let webhooks = sqlx::query("DELETE FROM webhooks WHERE created_by = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let profile = sqlx::query("DELETE FROM profiles WHERE principal_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;

    // What subscribers and webhooks hear: each changed message, each departure.
    let mut changed = tombstoned.clone();
    changed.extend(reacted_ids.iter().filter(|m| !tombstoned.contains(m)));
    let rows: Vec<super::writer::SentRow> = sqlx::query_as(concat!(
        r#"SELECT q.*, c.platform_conversation_id AS room FROM ("#,
        message_select!(),
        r#"WHERE m.id = ANY($1)) q JOIN conversations c ON c.id = q.conversation_id
        ORDER BY q.conversation_id, q.seq"#
    ))
    .bind(&changed)
    .fetch_all(&mut *tx)
    .await?;
    let mut events = Vec::with_capacity(rows.len() + left.len());
    for row in rows {
        let room = row.room.clone();
        let message: Message = row.row.into();
        let kind = if tombstoned.contains(&message.id) {
            EventKind::MessageDeleted
        } else {
            EventKind::ReactionUpdated
        };
        events.push((messages::event(kind, &room, &message), None));
    }
    for (conversation_id, room) in &left {
        events.push((
            Event::new(
                EventKind::ParticipantLeft,
                *conversation_id,
                room.clone(),
                json!({ "conversation_id": conversation_id, "participant_id": id }),
                Default::default(),
            ),
            Some(id),
        ));
    }
    let recorded: Vec<(&Event, Option<&str>)> = events.iter().map(|(e, m)| (e, *m)).collect();
    super::webhooks::record(&mut tx, &recorded).await?;
    tx.commit().await?;
    for (event, _) in events {
        state.events.publish(event);
    }
    Ok(Erased {
        principal_id: id.to_owned(),
        messages: tombstoned.len() as u64,
        participations: left.len() as u64,
        reactions: reacted_ids.len() as u64,
        agents: agent_ids.len() as u64,
        webhooks,
        profile,
    })
}

/// Output format of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Ndjson,
    Json,
}

/// Rows read per query while exporting.
const EXPORT_PAGE: i64 = 500;

/// Everything held about a principal (self or admin), as records `{type, …}` read page by
/// page: its profile, agents, participations (with each conversation), the messages it
/// sent (deleted ones hold nothing and are left out), its reactions and webhooks. A
/// failure mid-way ends the stream with an `error` record.
pub async fn export(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> AppResult<mpsc::Receiver<Value>> {
    self_or_admin(principal, id)?;
    let (tx, rx) = mpsc::channel(64);
    let state = state.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        if let Err(e) = export_records(&state, &id, &tx).await {
            let _ = tx
                .send(json!({ "type": "error", "code": e.code(), "message": e.to_string() }))
                .await;
        }
    });
    Ok(rx)
}

/// Sends each record; stops quietly when the reader went away.
async fn export_records(state: &AppState, id: &str, out: &mpsc::Sender<Value>) -> AppResult<()> {
    macro_rules! emit {
        ($v:expr) => {
            if out.send($v).await.is_err() {
                return Ok(());
            }
        };
    }
    emit!(json!({ "type": "principal", "principal_id": id, "exported_at": Utc::now() }));
    let profile: Option<ProfileRecord> = sqlx::query_as(
        "SELECT kind, display_name, handle, avatar_url, updated_at FROM profiles WHERE principal_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await?;
    if let Some(p) = profile {
        emit!(record("profile", &p));
    }
    let agents: Vec<AgentRecord> = sqlx::query_as(
        "SELECT agent_id, owner_id, name, created_at FROM agents
         WHERE owner_id = $1 OR agent_id = $1 ORDER BY agent_id",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    for a in agents {
        emit!(record("agent", &a));
    }
    let mut after = Uuid::nil();
    loop {
        let rows: Vec<ParticipationRecord> = sqlx::query_as(
            r#"
            SELECT conversation_id, participant_type, role, display_name, joined_at,
                   last_read_seq, is_pinned
            FROM participants WHERE participant_id = $1 AND conversation_id > $2
            ORDER BY conversation_id LIMIT $3
            "#,
        )
        .bind(id)
        .bind(after)
        .bind(EXPORT_PAGE)
        .fetch_all(&state.db)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.conversation_id;
        let mut conn = state.db.acquire().await?;
        for p in rows {
            let conversation = super::conversations::fetch(&mut conn, id, p.conversation_id)
                .await
                .ok();
            let mut v = record("participation", &p);
            // The conversation as it concerns this principal: not who else is in it, nor
            // what they last said.
            let mut c = serde_json::to_value(conversation).unwrap_or(Value::Null);
            if let Some(o) = c.as_object_mut() {
                o.remove("participants");
                o.remove("last_message");
            }
            v["conversation"] = c;
            emit!(v);
        }
    }
    // Its messages, conversation by conversation: found through the per-conversation
    // sender index, so the send path keeps no index of its own for this rare read.
    let mut after = Uuid::nil();
    loop {
        let conversations: Vec<(Uuid,)> = sqlx::query_as(
            r#"
            SELECT c.id FROM conversations c
            WHERE c.id > $2 AND EXISTS (SELECT 1 FROM messages m
                                        WHERE m.conversation_id = c.id AND m.sender_id = $1)
            ORDER BY c.id LIMIT $3
            "#,
        )
        .bind(id)
        .bind(after)
        .bind(EXPORT_PAGE)
        .fetch_all(&state.db)
        .await?;
        let Some(&(last,)) = conversations.last() else {
            break;
        };
        after = last;
        for (conversation,) in conversations {
            let mut seq = 0i64;
            loop {
                let rows: Vec<Row> = sqlx::query_as(concat!(
                    message_select!(),
                    "WHERE m.conversation_id = $1 AND m.sender_id = $2 AND m.seq > $3
                       AND m.deleted_at IS NULL ORDER BY m.seq LIMIT $4"
                ))
                .bind(conversation)
                .bind(id)
                .bind(seq)
                .bind(EXPORT_PAGE)
                .fetch_all(&state.db)
                .await?;
                let Some(last) = rows.last() else { break };
                seq = last.seq;
                for row in rows {
                    let message: Message = row.into();
                    let mut v = serde_json::to_value(&message).unwrap_or(Value::Null);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("type".into(), json!("message"));
                    }
                    emit!(v);
                }
            }
        }
    }
    let reactions: Vec<ReactionRecord> = sqlx::query_as(
        "SELECT message_id, emoji, created_at FROM reactions WHERE principal_id = $1
         ORDER BY created_at",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    for r in reactions {
        emit!(record("reaction", &r));
    }
    let hooks: Vec<WebhookRecord> = sqlx::query_as(
        "SELECT id, url, events, conversation_id, agent_id, active, created_at
         FROM webhooks WHERE created_by = $1 ORDER BY created_at",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    for h in hooks {
        emit!(record("webhook", &h));
    }
    emit!(json!({ "type": "end" }));
    Ok(())
}

/// One export record: the row's fields and its `type`.
fn record(kind: &str, row: &impl Serialize) -> Value {
    let mut v = serde_json::to_value(row).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), json!(kind));
    }
    v
}

#[derive(sqlx::FromRow, Serialize)]
struct ProfileRecord {
    kind: String,
    display_name: Option<String>,
    handle: Option<String>,
    avatar_url: Option<String>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow, Serialize)]
struct AgentRecord {
    agent_id: String,
    owner_id: String,
    name: Option<String>,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow, Serialize)]
struct ParticipationRecord {
    conversation_id: Uuid,
    participant_type: String,
    role: String,
    display_name: Option<String>,
    joined_at: DateTime<Utc>,
    last_read_seq: i64,
    is_pinned: bool,
}

#[derive(sqlx::FromRow, Serialize)]
struct ReactionRecord {
    message_id: Uuid,
    emoji: String,
    created_at: DateTime<Utc>,
}

/// A webhook the principal registered (its secret is not part of the export).
#[derive(sqlx::FromRow, Serialize)]
struct WebhookRecord {
    id: Uuid,
    url: String,
    events: Vec<String>,
    conversation_id: Option<Uuid>,
    agent_id: Option<String>,
    active: bool,
    created_at: DateTime<Utc>,
}
