//! Webhook endpoints and their outbox (contract §8).
//!
//! An endpoint names a URL, the event types it wants and optionally one conversation or
//! one agent (the conversations that agent takes part in). Every change that is an event
//! writes one delivery row per matching endpoint **in the transaction that commits the
//! change** ([`record`]; message sends do it inside the group-commit statement), so exactly
//! the committed events go out. `crate::dispatch` sends them.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    events::{Event, EventKind},
    validate,
};
use crate::{
    auth::Principal,
    dispatch::MAX_BATCH,
    error::{AppError, AppResult},
    state::AppState,
};

/// Event types an endpoint may ask for, besides `*`.
pub const EVENT_TYPES: [&str; 8] = [
    "message.created",
    "message.updated",
    "message.deleted",
    "reaction.updated",
    "messages.read",
    "participant.joined",
    "participant.left",
    "conversation.updated",
];

/// Endpoints one principal may register (admins and services: any number).
const MAX_PER_PRINCIPAL: i64 = 25;

/// The webhook event type of a domain event, when it is one.
pub fn event_type(kind: EventKind) -> Option<&'static str> {
    Some(match kind {
        EventKind::MessageCreated => "message.created",
        EventKind::MessageUpdated => "message.updated",
        EventKind::MessageDeleted => "message.deleted",
        EventKind::ReactionUpdated => "reaction.updated",
        EventKind::MessagesRead => "messages.read",
        EventKind::ParticipantJoined => "participant.joined",
        EventKind::ParticipantLeft => "participant.left",
        EventKind::ConversationUpdated => "conversation.updated",
        _ => return None,
    })
}

/// SQL condition: endpoint `w` wants event type `$type` in conversation `$conv`, where
/// `$member` (if any) is the participant the event is about. An agent filter matches while
/// the agent takes part (read in the committing transaction), and for its own leaving.
macro_rules! endpoint_matches {
    ($type:literal, $conv:literal, $member:literal) => {
        concat!(
            "w.active AND w.events && ARRAY[",
            $type,
            ", '*']::text[] AND (w.conversation_id IS NULL OR w.conversation_id = ",
            $conv,
            ") AND (w.agent_id IS NULL OR w.agent_id = ",
            $member,
            " OR EXISTS (SELECT 1 FROM participants wp WHERE wp.conversation_id = ",
            $conv,
            " AND wp.participant_id = w.agent_id AND wp.participant_type = 'agent'))"
        )
    };
}
pub(crate) use endpoint_matches;

/// The outbox rows of the messages a send statement inserts (its CTE `m`): one per
/// matching endpoint, whose delivery id is the message's (one `message.created` per
/// message and endpoint, and no random id to draw per row). The caller orders them.
macro_rules! message_created_deliveries {
    () => {
        concat!(
            "INSERT INTO webhook_deliveries
                 (id, webhook_id, conversation_id, event_type, message_id, occurred_at)
             SELECT m.id, w.id, m.conversation_id, 'message.created', m.id, m.created_at
             FROM m JOIN webhooks w ON ",
            $crate::core::webhooks::endpoint_matches!(
                "'message.created'",
                "m.conversation_id",
                "NULL"
            ),
        )
    };
}
pub(crate) use message_created_deliveries;

/// Writes the deliveries of events, in the caller's transaction, in the order given.
/// Message events name the message (rendered when sent); the others carry the event's
/// data. An event's `member` is the participant a participant event is about.
pub async fn record(conn: &mut PgConnection, events: &[(&Event, Option<&str>)]) -> AppResult<()> {
    let mut kinds = Vec::with_capacity(events.len());
    let mut conversations = Vec::with_capacity(events.len());
    let mut subjects: Vec<Option<Uuid>> = Vec::with_capacity(events.len());
    let mut datas: Vec<Option<&Value>> = Vec::with_capacity(events.len());
    let mut members = Vec::with_capacity(events.len());
    for (event, member) in events {
        let Some(kind) = event_type(event.kind) else {
            continue;
        };
        let is_message = matches!(
            event.kind,
            EventKind::MessageCreated
                | EventKind::MessageUpdated
                | EventKind::MessageDeleted
                | EventKind::ReactionUpdated
        );
        kinds.push(kind);
        conversations.push(event.conversation_id);
        subjects.push(if is_message {
            event
                .data
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        } else {
            None
        });
        datas.push((!is_message).then_some(&event.data));
        members.push(*member);
    }
    if kinds.is_empty() {
        return Ok(());
    }
    sqlx::query(concat!(
        "INSERT INTO webhook_deliveries (webhook_id, conversation_id, event_type, message_id, data)
         SELECT w.id, t.conv, t.kind, t.subject, t.data
         FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::jsonb[], $5::text[])
             WITH ORDINALITY AS t(kind, conv, subject, data, member, ord)
         JOIN webhooks w ON ",
        endpoint_matches!("t.kind", "t.conv", "t.member"),
        " ORDER BY t.ord, w.id"
    ))
    .bind(&kinds)
    .bind(&conversations)
    .bind(&subjects)
    .bind(&datas)
    .bind(&members)
    .execute(conn)
    .await?;
    Ok(())
}

/// [`record`] for one event about to be published (before the commit; publish after).
pub async fn record_event(
    conn: &mut PgConnection,
    event: &Event,
    member: Option<&str>,
) -> AppResult<()> {
    record(conn, &[(event, member)]).await
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    /// Event types delivered (`*`: all).
    pub events: Vec<String>,
    /// Only this conversation's events, when set.
    pub conversation_id: Option<Uuid>,
    /// Only events of conversations this agent takes part in, when set.
    pub agent_id: Option<String>,
    pub description: Option<String>,
    pub created_by: String,
    /// Inactive endpoints get nothing (an agent's ownership moved away from its creator).
    pub active: bool,
    /// Most events per request. 1: each event is its own request (the body is the
    /// event). Above 1: the body is a JSON array of one conversation's next events, in
    /// order, as many as are waiting up to this number.
    pub batch_size: i32,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Deliveries waiting (or retrying).
    pub pending: i64,
    /// Deliveries that gave up (dead letters), replayable.
    pub dead: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A registered endpoint with its signing secret: shown once, on creation and rotation.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// HMAC-SHA256 key for `X-Colloquy-Signature`; not shown again.
    pub secret: String,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct NewWebhook {
    /// `http(s)://` URL; loopback, private and link-local targets are refused unless
    /// `WEBHOOK_ALLOW_PRIVATE` allows them.
    #[schema(min_length = 1, max_length = 2048)]
    pub url: String,
    /// One or more of `message.created`, `message.updated`, `message.deleted`,
    /// `reaction.updated`, `messages.read`, `participant.joined`, `participant.left`,
    /// `conversation.updated`, or `*`.
    #[schema(min_items = 1, max_items = 9, value_type = Vec<EventName>)]
    pub events: Vec<String>,
    pub conversation_id: Option<Uuid>,
    /// Required unless the caller is an admin or a service: an agent the caller owns (or
    /// is).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub agent_id: Option<String>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// Most events per request, 1 (the default: one event per request) to 100. Above 1,
    /// each request carries a JSON array of one conversation's waiting events, in order.
    #[serde(default, deserialize_with = "validate::whole_number")]
    #[schema(minimum = 1, maximum = 100)]
    pub batch_size: Option<i64>,
}

/// A webhook event type (documentation of `events`).
#[derive(ToSchema)]
#[schema(as = WebhookEvent)]
#[allow(dead_code)]
pub enum EventName {
    #[schema(rename = "*")]
    All,
    #[schema(rename = "message.created")]
    MessageCreated,
    #[schema(rename = "message.updated")]
    MessageUpdated,
    #[schema(rename = "message.deleted")]
    MessageDeleted,
    #[schema(rename = "reaction.updated")]
    ReactionUpdated,
    #[schema(rename = "messages.read")]
    MessagesRead,
    #[schema(rename = "participant.joined")]
    ParticipantJoined,
    #[schema(rename = "participant.left")]
    ParticipantLeft,
    #[schema(rename = "conversation.updated")]
    ConversationUpdated,
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct UpdateWebhook {
    #[schema(min_length = 1, max_length = 2048)]
    pub url: Option<String>,
    #[schema(min_items = 1, max_items = 9, value_type = Option<Vec<EventName>>)]
    pub events: Option<Vec<String>>,
    pub active: Option<bool>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "validate::whole_number")]
    #[schema(minimum = 1, maximum = 100)]
    pub batch_size: Option<i64>,
}

const WEBHOOK_COLUMNS: &str = r#"
    SELECT w.id, w.url, w.events, w.conversation_id, w.agent_id, w.description, w.created_by,
           w.active, w.batch_size, w.last_success_at, w.last_failure_at, w.last_error, w.created_at, w.updated_at,
           (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.state = 'pending') AS pending,
           (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.state = 'dead') AS dead
    FROM webhooks w
"#;

fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", hex::encode(bytes))
}

fn check_events(events: &[String]) -> AppResult<Vec<String>> {
    if events.is_empty() || events.len() > EVENT_TYPES.len() + 1 {
        return Err(AppError::invalid_field(
            "events",
            "must name 1 to 9 event types (or `*`)",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(events.len());
    for e in events {
        if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
            return Err(AppError::invalid_field(
                "events",
                format!(
                    "`{}` is not an event type; use `*` or any of: {}",
                    e.chars().take(64).collect::<String>(),
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

async fn check_url(state: &AppState, url: &str) -> AppResult<String> {
    validate::max_chars("url", url, 2048)?;
    let parsed = state
        .outbound
        .check_url(url)
        .map_err(|why| AppError::invalid_field("url", why))?;
    state
        .outbound
        .check_resolved(&parsed)
        .await
        .map_err(|why| AppError::invalid_field("url", why))?;
    Ok(parsed.to_string())
}

/// Registers an endpoint (admin, service, or for an agent: the agent or its owner).
pub async fn create(
    state: &AppState,
    principal: &Principal,
    input: NewWebhook,
) -> AppResult<WebhookWithSecret> {
    let events = check_events(&input.events)?;
    let batch_size = validate::within("batch_size", input.batch_size, 1, MAX_BATCH)?.unwrap_or(1);
    if let Some(d) = &input.description {
        validate::max_chars("description", d, 500)?;
    }
    if let Some(agent) = &input.agent_id {
        validate::id("agent_id", agent)?;
    }
    let privileged = principal.is_privileged();
    if !privileged {
        let Some(agent) = &input.agent_id else {
            return Err(AppError::Forbidden(
                "only admins and services may register webhooks without agent_id; name an \
                 agent you own"
                    .into(),
            ));
        };
        if !super::insights::controls_agent(state, principal, agent).await? {
            return Err(AppError::Forbidden(format!(
                "only the agent {agent}, its owner, an admin or a service may follow its conversations"
            )));
        }
        if let Some(conversation) = input.conversation_id {
            let takes_part: Option<(i32,)> = sqlx::query_as(
                "SELECT 1 FROM participants WHERE conversation_id = $1 AND participant_id = $2 \
                 AND participant_type = 'agent'",
            )
            .bind(conversation)
            .bind(agent)
            .fetch_optional(&state.db)
            .await?;
            if takes_part.is_none() {
                return Err(AppError::NotFound("conversation"));
            }
        }
        let (count,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM webhooks WHERE created_by = $1")
                .bind(&principal.id)
                .fetch_one(&state.db)
                .await?;
        if count >= MAX_PER_PRINCIPAL {
            return Err(AppError::Conflict {
                code: "WEBHOOK_LIMIT",
                message: format!("at most {MAX_PER_PRINCIPAL} webhooks per principal"),
            });
        }
    } else if let Some(conversation) = input.conversation_id {
        let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM conversations WHERE id = $1")
            .bind(conversation)
            .fetch_optional(&state.db)
            .await?;
        if exists.is_none() {
            return Err(AppError::NotFound("conversation"));
        }
    }
    let url = check_url(state, &input.url).await?;
    let id = Uuid::now_v7();
    let secret = new_secret();
    sqlx::query(
        r#"
        INSERT INTO webhooks (id, url, events, conversation_id, agent_id, description, secret,
                              created_by, created_by_privileged, batch_size)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        "#,
    )
    .bind(id)
    .bind(&url)
    .bind(&events)
    .bind(input.conversation_id)
    .bind(&input.agent_id)
    .bind(&input.description)
    .bind(&secret)
    .bind(&principal.id)
    .bind(privileged)
    .bind(batch_size)
    .execute(&state.db)
    .await?;
    Ok(WebhookWithSecret {
        webhook: fetch(state, id).await?,
        secret,
    })
}

async fn fetch(state: &AppState, id: Uuid) -> AppResult<Webhook> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{WEBHOOK_COLUMNS} WHERE w.id = $1"
    )))
    .bind(id)
    .fetch_optional(&state.db)
    .await?
    .ok_or(AppError::NotFound("webhook"))
}

/// An endpoint the caller may see and manage: its creator, or an admin or service. Anyone
/// else is told it does not exist.
pub async fn get(state: &AppState, principal: &Principal, id: Uuid) -> AppResult<Webhook> {
    let webhook = fetch(state, id).await?;
    if principal.is_privileged() || webhook.created_by == principal.id {
        Ok(webhook)
    } else {
        Err(AppError::NotFound("webhook"))
    }
}

/// The caller's endpoints (admins and services: all).
pub async fn list(state: &AppState, principal: &Principal) -> AppResult<Vec<Webhook>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{WEBHOOK_COLUMNS} WHERE $1 OR w.created_by = $2 ORDER BY w.created_at, w.id LIMIT 500"
    )))
    .bind(principal.is_privileged())
    .bind(&principal.id)
    .fetch_all(&state.db)
    .await?)
}

pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    input: UpdateWebhook,
) -> AppResult<Webhook> {
    let current = get(state, principal, id).await?;
    let events = input.events.as_deref().map(check_events).transpose()?;
    let batch_size = validate::within("batch_size", input.batch_size, 1, MAX_BATCH)?;
    if let Some(d) = &input.description {
        validate::max_chars("description", d, 500)?;
    }
    let url = match &input.url {
        Some(u) => Some(check_url(state, u).await?),
        None => None,
    };
    if input.active == Some(true)
        && !current.active
        && !principal.is_privileged()
        && let Some(agent) = &current.agent_id
        && !super::insights::controls_agent(state, principal, agent).await?
    {
        return Err(AppError::Forbidden(format!(
            "you no longer own agent {agent}"
        )));
    }
    sqlx::query(
        r#"
        UPDATE webhooks SET url = coalesce($2, url), events = coalesce($3, events),
               active = coalesce($4, active), description = coalesce($5, description),
               batch_size = coalesce($6, batch_size), updated_at = now()
        WHERE id = $1
        "#,
    )
    .bind(id)
    .bind(url)
    .bind(events)
    .bind(input.active)
    .bind(&input.description)
    .bind(batch_size)
    .execute(&state.db)
    .await?;
    fetch(state, id).await
}

/// Deletes the endpoint and everything still queued for it.
pub async fn delete(state: &AppState, principal: &Principal, id: Uuid) -> AppResult<()> {
    get(state, principal, id).await?;
    sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(id)
        .execute(&state.db)
        .await?;
    // No foreign key ties deliveries to their endpoint (sends would wait on its row
    // lock): the backlog goes now, and rows a racing send still wrote go with the
    // dispatcher's sweep of orphans.
    sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
        .bind(id)
        .execute(&state.db)
        .await?;
    Ok(())
}

/// A new signing secret; the old one stops signing at once.
pub async fn rotate_secret(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> AppResult<WebhookWithSecret> {
    get(state, principal, id).await?;
    let secret = new_secret();
    sqlx::query("UPDATE webhooks SET secret = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(&secret)
        .execute(&state.db)
        .await?;
    Ok(WebhookWithSecret {
        webhook: fetch(state, id).await?,
        secret,
    })
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Delivery {
    /// The delivery id receivers de-duplicate by (`X-Colloquy-Delivery`, body `id`).
    pub id: Uuid,
    #[serde(rename = "type")]
    #[sqlx(rename = "event_type")]
    pub kind: String,
    pub conversation_id: Uuid,
    /// `pending` (waiting or retrying) or `dead` (gave up; replayable).
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
pub struct ListDeliveries {
    /// `pending` or `dead`; both when absent.
    pub state: Option<String>,
    /// 1–500, default 100.
    pub limit: Option<i64>,
}

/// Undelivered deliveries (delivered ones are not kept), oldest first.
pub async fn deliveries(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    query: ListDeliveries,
) -> AppResult<Vec<Delivery>> {
    get(state, principal, id).await?;
    if let Some(s) = &query.state
        && s != "pending"
        && s != "dead"
    {
        return Err(AppError::invalid_field(
            "state",
            "must be `pending` or `dead`",
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(AppError::invalid_field("limit", "must be 1 to 500"));
    }
    Ok(sqlx::query_as(
        r#"
        SELECT id, event_type, conversation_id, state, attempts, next_attempt_at, last_status,
               last_error, occurred_at
        FROM webhook_deliveries
        WHERE webhook_id = $1 AND ($2::text IS NULL OR state = $2)
        ORDER BY pos LIMIT $3
        "#,
    )
    .bind(id)
    .bind(&query.state)
    .bind(limit)
    .fetch_all(&state.db)
    .await?)
}

/// Sends a dead letter (or a waiting delivery) again now, with the same delivery id.
pub async fn replay(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    delivery_id: Uuid,
) -> AppResult<Delivery> {
    get(state, principal, id).await?;
    let replayed: Option<Delivery> = sqlx::query_as(
        r#"
        UPDATE webhook_deliveries
        SET state = 'pending', attempts = 0, next_attempt_at = now(), created_at = now(),
            last_error = NULL, last_status = NULL, leased_until = NULL,
            -- At the back of its queue: what is already queued (perhaps in flight) goes
            -- first, and only a queue's first rows are ever leased.
            pos = nextval(pg_get_serial_sequence('webhook_deliveries', 'pos'))
        WHERE webhook_id = $1 AND id = $2 AND state = 'dead'
        RETURNING id, event_type, conversation_id, state, attempts, next_attempt_at, last_status,
                  last_error, occurred_at
        "#,
    )
    .bind(id)
    .bind(delivery_id)
    .fetch_optional(&state.db)
    .await?;
    if let Some(delivery) = replayed {
        return Ok(delivery);
    }
    let pending: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2")
            .bind(id)
            .bind(delivery_id)
            .fetch_optional(&state.db)
            .await?;
    match pending {
        Some(_) => Err(AppError::Conflict {
            code: "DELIVERY_PENDING",
            message: "the delivery is still pending; only dead letters are replayed".into(),
        }),
        None => Err(AppError::NotFound("delivery")),
    }
}

/// When an agent changes owner, endpoints its former owners registered for it stop.
pub async fn deactivate_for_new_owner(
    db: impl sqlx::PgExecutor<'_>,
    agent_id: &str,
    owner_id: &str,
) -> AppResult<()> {
    sqlx::query(
        r#"
        UPDATE webhooks SET active = false, updated_at = now()
        WHERE agent_id = $1 AND active AND NOT created_by_privileged
          AND created_by <> $1 AND created_by <> $2
        "#,
    )
    .bind(agent_id)
    .bind(owner_id)
    .execute(db)
    .await?;
    Ok(())
}
