//! Messages: send (idempotent, gapless `seq`), read one, edit, soft delete.
//! History paging lives in `history.rs`, reactions in `reactions.rs`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::PgExecutor;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    access::Access,
    events::{Event, EventKind, Origin},
    validate,
    writer::Draft,
};
use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

/// The server id elizaOS clients expect in every broadcast.
pub const SERVER_ID: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Attachment {
    /// Generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// e.g. `image`, `file`, `audio`.
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 64)]
    pub kind: String,
    #[schema(min_length = 1, max_length = 4096)]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 512)]
    pub filename: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "validate::whole_number"
    )]
    #[schema(minimum = 0)]
    pub size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PlatformContext {
    pub platform: String,
    pub room_id: String,
    pub channel_id: String,
    pub thread_id: Option<String>,
    pub server_id: String,
    pub metadata: Value,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    /// 1, 2, 3… per conversation, without gaps.
    pub seq: i64,
    pub platform_context: PlatformContext,
    /// Stored verbatim; empty once deleted. Escape it when rendering as HTML.
    pub text: String,
    pub attachments: Vec<Attachment>,
    pub sender_id: String,
    /// The sender's display name; its id when none was given.
    pub sender_name: Option<String>,
    /// `user|agent|system`
    pub sender_type: String,
    /// `sent|delivered|read`: `read` once another participant's read horizon covers it.
    pub status: String,
    pub client_message_id: Option<String>,
    pub metadata: Value,
    pub thread_id: Option<String>,
    pub reaction_count: i64,
    /// `{emoji: count}`
    pub reactions: Map<String, Value>,
    pub is_edited: bool,
    /// Earlier versions: `[{text, edited_at}]`.
    pub edit_history: Vec<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct Row {
    pub(crate) id: Uuid,
    conversation_id: Uuid,
    pub(crate) seq: i64,
    sender_id: String,
    sender_name: Option<String>,
    sender_type: String,
    text: String,
    client_message_id: Option<String>,
    platform_context: Value,
    attachments: Value,
    metadata: Value,
    thread_id: Option<String>,
    reactions: Value,
    edit_history: Value,
    pub(crate) created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    /// Highest read horizon among the other participants.
    read_horizon: Option<i64>,
}

impl From<Row> for Message {
    fn from(r: Row) -> Self {
        let deleted = r.deleted_at.is_some();
        // Seed 000 reads `sender_name: string`: without a stored name, the sender's id.
        let sender_name = r.sender_name.unwrap_or_else(|| r.sender_id.clone());
        let reactions = match r.reactions {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let reaction_count = reactions.values().filter_map(Value::as_i64).sum();
        let edit_history: Vec<Value> = serde_json::from_value(r.edit_history).unwrap_or_default();
        let platform_context =
            serde_json::from_value(r.platform_context).unwrap_or(PlatformContext {
                platform: String::new(),
                room_id: String::new(),
                channel_id: String::new(),
                thread_id: None,
                server_id: SERVER_ID.into(),
                metadata: json!({}),
            });
        Self {
            id: r.id,
            conversation_id: r.conversation_id,
            seq: r.seq,
            platform_context,
            text: if deleted { String::new() } else { r.text },
            attachments: if deleted {
                vec![]
            } else {
                serde_json::from_value(r.attachments).unwrap_or_default()
            },
            sender_id: r.sender_id,
            sender_name: Some(sender_name),
            sender_type: r.sender_type,
            status: if r.read_horizon.is_some_and(|h| h >= r.seq) {
                "read"
            } else {
                "sent"
            }
            .into(),
            client_message_id: r.client_message_id,
            metadata: r.metadata,
            thread_id: r.thread_id,
            reaction_count,
            reactions,
            is_edited: !edit_history.is_empty(),
            edit_history: if deleted { vec![] } else { edit_history },
            created_at: r.created_at,
            updated_at: r.updated_at,
            deleted_at: r.deleted_at,
        }
    }
}

/// Message columns plus `read_horizon`; the FROM clause is `messages m`.
macro_rules! message_select {
    () => {
        r#"
        SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.sender_name, m.sender_type, m.text,
               m.client_message_id, m.platform_context, m.attachments, m.metadata, m.thread_id,
               m.reactions, m.edit_history, m.created_at, m.updated_at, m.deleted_at,
               (SELECT max(p.last_read_seq) FROM participants p
                WHERE p.conversation_id = m.conversation_id AND p.participant_id <> m.sender_id)
                   AS read_horizon
        FROM messages m
        "#
    };
}
pub(crate) use message_select;

pub async fn fetch(db: impl PgExecutor<'_>, id: Uuid) -> AppResult<Message> {
    let row: Option<Row> = sqlx::query_as(concat!(message_select!(), "WHERE m.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(Into::into).ok_or(AppError::NotFound("message"))
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct SendMessage {
    #[schema(
        min_length = 1,
        max_length = 10000,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    pub text: String,
    /// Idempotency key: a retry with the same key returns the stored message.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub client_message_id: Option<String>,
    /// Services only: the sender they act for.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub sender_id: Option<String>,
    #[schema(max_length = 128)]
    pub sender_name: Option<String>,
    /// Services only: `user|agent|system`.
    pub sender_type: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub thread_id: Option<String>,
    #[serde(default)]
    #[schema(max_items = 20)]
    pub attachments: Vec<Attachment>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// How a transport wants the fan-out of a new message done.
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    pub origin: Origin,
    /// Where it came from (`api`, `socketio`, `ws`, or the client's `source`).
    pub source: Option<String>,
}

pub struct Sent {
    pub message: Message,
    /// `false` when a retry returned the message stored earlier.
    pub created: bool,
}

struct Sender {
    id: String,
    name: Option<String>,
    kind: String,
}

fn resolve_sender(principal: &Principal, input: &SendMessage) -> AppResult<Sender> {
    let acting_for = input.sender_id.as_deref().filter(|s| *s != principal.id);
    if let Some(other) = acting_for {
        if !principal.is_service() {
            return Err(AppError::Forbidden(
                "sender_id may name someone else only for service principals".into(),
            ));
        }
        validate::id("sender_id", other)?;
    }
    let kind = match (&input.sender_type, principal.is_service()) {
        (Some(t), true) => {
            validate::one_of("sender_type", t, validate::PARTICIPANT_TYPES)?;
            t.clone()
        }
        (_, true) if acting_for.is_some() => "user".into(),
        _ => principal.kind.sender_type().into(),
    };
    let name = input.sender_name.clone().or_else(|| {
        if acting_for.is_none() {
            principal.name.clone()
        } else {
            None
        }
    });
    if let Some(n) = &name {
        validate::max_chars("sender_name", n, validate::MAX_ID_CHARS)?;
    }
    Ok(Sender {
        id: acting_for.unwrap_or(&principal.id).to_owned(),
        name,
        kind,
    })
}

fn validate_send(state: &AppState, input: &mut SendMessage) -> AppResult<()> {
    validate::text(&input.text, state.config.max_message_chars)?;
    if let Some(c) = &input.client_message_id {
        validate::id("client_message_id", c)?;
    }
    if let Some(t) = &input.thread_id {
        validate::id("thread_id", t)?;
    }
    if let Some(m) = &input.metadata {
        validate::json_object("metadata", m)?;
    }
    if input.attachments.len() > validate::MAX_ATTACHMENTS {
        return Err(AppError::invalid_field(
            "attachments",
            format!("at most {} attachments", validate::MAX_ATTACHMENTS),
        ));
    }
    for a in &mut input.attachments {
        validate::max_chars("attachments.type", &a.kind, 64)?;
        if a.kind.is_empty() || a.url.is_empty() {
            return Err(AppError::invalid_field(
                "attachments",
                "type and url are required",
            ));
        }
        validate::max_chars("attachments.url", &a.url, 4096)?;
        if let Some(f) = &a.filename {
            validate::max_chars("attachments.filename", f, 512)?;
        }
        if let Some(m) = &a.metadata {
            validate::json_object("attachments.metadata", m)?;
        }
        if a.size.is_some_and(|s| s < 0) {
            return Err(AppError::invalid_field(
                "attachments.size",
                "must not be negative",
            ));
        }
        a.id.get_or_insert_with(|| Uuid::now_v7().to_string());
    }
    Ok(())
}

/// How long a send waits for its commit before it is answered `UNAVAILABLE`.
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Persists a message and only then announces it.
///
/// One statement takes the next `seq` (row-locking the conversation), inserts the message
/// and moves the sender's read horizon, so it commits or fails as a whole: a failure, or a
/// retried `client_message_id`, never leaves a gap in `seq`.
#[tracing::instrument(skip_all, fields(conversation_id = %conversation_id), err(level = "debug", Display))]
pub async fn send(
    state: &AppState,
    principal: &Principal,
    conversation_id: Uuid,
    input: SendMessage,
    options: SendOptions,
) -> AppResult<Sent> {
    // Under database trouble the caller hears back in bounded time, whatever step waits
    // (the write, or the reads that explain a refusal or find a retried original). The
    // send may still commit (and is then delivered): a retry with the same client id is
    // safe.
    let attempt = send_once(state, principal, conversation_id, input, options);
    match tokio::time::timeout(SEND_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(AppError::Unavailable(anyhow::anyhow!(
            "the database did not answer in time; send again with the same client_message_id"
        ))),
    }
}

async fn send_once(
    state: &AppState,
    principal: &Principal,
    conversation_id: Uuid,
    mut input: SendMessage,
    options: SendOptions,
) -> AppResult<Sent> {
    if state.shutdown.is_cancelled() {
        return Err(AppError::Unavailable(anyhow::anyhow!(
            "the server is shutting down; send again (to another server)"
        )));
    }
    let _in_flight = state.send_in_flight();
    validate_send(state, &mut input)?;
    let sender = resolve_sender(principal, &input)?;
    let metadata = input.metadata.clone().unwrap_or_else(|| json!({}));
    let platform_context = json!({
        "thread_id": input.thread_id,
        "server_id": SERVER_ID,
        "metadata": { "source": options.source },
    });
    let attachments = serde_json::to_value(&input.attachments).map_err(anyhow::Error::from)?;
    // The write check rides in the statement (the caller is a participant, or privileged);
    // only when nothing was written does `Access::load` run, to say why.
    let write = state.writer.write(Draft {
        conversation_id,
        id: Uuid::now_v7(),
        sender_id: sender.id.clone(),
        sender_name: sender.name.clone(),
        sender_type: sender.kind.clone(),
        text: input.text.clone(),
        client_message_id: input.client_message_id.clone(),
        platform_context,
        attachments,
        metadata,
        thread_id: input.thread_id.clone(),
        principal_id: principal.id.clone(),
        privileged: principal.is_privileged(),
        origin: options.origin,
    });
    let inserted = write.await;

    let message = match inserted {
        Ok(Some(row)) => row,
        Ok(None) => {
            // Nothing written: unknown or unreadable (404), read-only (403) or archived (409).
            let access = Access::load(&state.db, principal, conversation_id).await?;
            access.require_write()?;
            return Err(AppError::archived());
        }
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("messages_client_id_key") => {
            // The original was written by this sender, who was allowed to then.
            let existing = find_by_client_id(
                &state.db,
                conversation_id,
                &sender.id,
                input.client_message_id.as_deref().unwrap_or_default(),
            )
            .await?;
            return Ok(Sent {
                message: existing,
                created: false,
            });
        }
        Err(e) => return Err(e.into()),
    };
    // The writer announced it after the commit (see `writer`).
    Ok(Sent {
        message,
        created: true,
    })
}

async fn find_by_client_id(
    db: impl PgExecutor<'_>,
    conversation_id: Uuid,
    sender_id: &str,
    client_message_id: &str,
) -> AppResult<Message> {
    let row: Option<Row> = sqlx::query_as(concat!(
        message_select!(),
        "WHERE m.conversation_id = $1 AND m.sender_id = $2 AND m.client_message_id = $3"
    ))
    .bind(conversation_id)
    .bind(sender_id)
    .bind(client_message_id)
    .fetch_optional(db)
    .await?;
    row.map(Into::into).ok_or(AppError::NotFound("message"))
}

/// Reads one message; the caller must be able to read its conversation.
pub async fn get(state: &AppState, principal: &Principal, id: Uuid) -> AppResult<Message> {
    let message = fetch(&state.db, id).await?;
    Access::load(&state.db, principal, message.conversation_id)
        .await
        .map_err(|e| match e {
            AppError::NotFound(_) => AppError::NotFound("message"),
            other => other,
        })?;
    Ok(message)
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct EditMessage {
    #[schema(
        min_length = 1,
        max_length = 10000,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    pub text: String,
}

/// Edits the text (the author, or a service); the previous text goes to `edit_history`.
pub async fn edit(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    input: EditMessage,
) -> AppResult<Message> {
    validate::text(&input.text, state.config.max_message_chars)?;
    let current = get(state, principal, id).await?;
    if current.sender_id != principal.id && !principal.is_service() {
        return Err(AppError::Forbidden(
            "only the author may edit a message".into(),
        ));
    }
    let access = Access::load(&state.db, principal, current.conversation_id).await?;
    access.require_active()?;
    let mut tx = state.db.begin().await?;
    let updated = sqlx::query(
        r#"
        UPDATE messages
        SET edit_history = edit_history || jsonb_build_array(
                jsonb_build_object('text', text, 'edited_at', now())),
            text = $2,
            updated_at = now()
        WHERE id = $1 AND deleted_at IS NULL
        "#,
    )
    .bind(id)
    .bind(&input.text)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(AppError::Conflict {
            code: "MESSAGE_DELETED",
            message: "a deleted message cannot be edited".into(),
        });
    }
    let message = fetch(&mut *tx, id).await?;
    let event = event(EventKind::MessageUpdated, &access.room, &message);
    super::webhooks::record_event(&mut tx, &event, None).await?;
    tx.commit().await?;
    state.events.publish(event);
    Ok(message)
}

/// Delete (author, conversation owner, admin or service): the row and its `seq` stay as a
/// tombstone; its content is erased.
pub async fn delete(state: &AppState, principal: &Principal, id: Uuid) -> AppResult<Message> {
    let current = get(state, principal, id).await?;
    let access = Access::load(&state.db, principal, current.conversation_id).await?;
    if current.sender_id != principal.id {
        access.require_manage("delete other people's messages")?;
    }
    // A tombstone keeps id, seq, sender and timestamps; the content is erased from storage
    // (contract §3), not just hidden: text (and so its search vector), attachments,
    // metadata, edit history and reactions.
    let mut tx = state.db.begin().await?;
    sqlx::query(
        r#"
        UPDATE messages
        SET deleted_at = coalesce(deleted_at, now()), updated_at = now(),
            text = '', attachments = '[]', metadata = '{}', edit_history = '[]', reactions = '{}'
        WHERE id = $1
        "#,
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM reactions WHERE message_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let message = fetch(&mut *tx, id).await?;
    let event = event(EventKind::MessageDeleted, &access.room, &message);
    super::webhooks::record_event(&mut tx, &event, None).await?;
    tx.commit().await?;
    state.events.publish(event);
    Ok(message)
}

/// The event announcing a change to `message` (publish it after the commit).
pub(crate) fn event(kind: EventKind, room: &str, message: &Message) -> Event {
    Event::new(
        kind,
        message.conversation_id,
        room.to_owned(),
        serde_json::to_value(message).unwrap_or(Value::Null),
        Origin::default(),
    )
}
