//! Conversations: create (get-or-create on a platform id), read, list, update, archive, pin.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    Page,
    access::Access,
    events::{Event, EventKind},
    participants::NewParticipant,
    validate,
};
use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

/// Preview of a conversation's newest message.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LastMessage {
    pub id: Uuid,
    pub seq: i64,
    pub sender_id: String,
    pub sender_name: Option<String>,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Conversation {
    pub id: Uuid,
    pub name: Option<String>,
    pub description: Option<String>,
    /// `websocket|telegram|discord|x|whatsapp`
    pub platform: String,
    pub platform_conversation_id: String,
    pub platform_metadata: Value,
    /// Participant ids, in joining order.
    pub participants: Vec<String>,
    pub created_by: String,
    pub message_count: i64,
    pub last_message_at: Option<DateTime<Utc>>,
    pub last_seq: i64,
    pub is_active: bool,
    pub archived_at: Option<DateTime<Utc>>,
    pub metadata: Value,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Per caller: messages after the caller's read horizon (null when not a participant).
    pub unread_count: Option<i64>,
    pub last_read_seq: Option<i64>,
    pub is_pinned: bool,
    pub last_message: Option<LastMessage>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: Option<String>,
    description: Option<String>,
    platform: String,
    platform_conversation_id: String,
    platform_metadata: Value,
    participants: Vec<String>,
    created_by: String,
    message_count: i64,
    last_message_at: Option<DateTime<Utc>>,
    last_seq: i64,
    archived_at: Option<DateTime<Utc>>,
    metadata: Value,
    tags: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    my_last_read_seq: Option<i64>,
    my_is_pinned: Option<bool>,
    lm_id: Option<Uuid>,
    lm_sender_id: Option<String>,
    lm_sender_name: Option<String>,
    lm_text: Option<String>,
    lm_created_at: Option<DateTime<Utc>>,
    lm_deleted: Option<bool>,
}

impl From<Row> for Conversation {
    fn from(r: Row) -> Self {
        let last_message = match (r.lm_id, r.lm_sender_id, r.lm_created_at) {
            (Some(id), Some(sender_id), Some(created_at)) => Some(LastMessage {
                id,
                seq: r.last_seq,
                sender_id,
                sender_name: r.lm_sender_name,
                text: if r.lm_deleted == Some(true) {
                    String::new()
                } else {
                    r.lm_text.unwrap_or_default()
                },
                created_at,
            }),
            _ => None,
        };
        Self {
            id: r.id,
            name: r.name,
            description: r.description,
            platform: r.platform,
            platform_conversation_id: r.platform_conversation_id,
            platform_metadata: r.platform_metadata,
            participants: r.participants,
            created_by: r.created_by,
            message_count: r.message_count,
            last_message_at: r.last_message_at,
            last_seq: r.last_seq,
            is_active: r.archived_at.is_none(),
            archived_at: r.archived_at,
            metadata: r.metadata,
            tags: r.tags,
            created_at: r.created_at,
            updated_at: r.updated_at,
            unread_count: r.my_last_read_seq.map(|read| (r.last_seq - read).max(0)),
            last_read_seq: r.my_last_read_seq,
            is_pinned: r.my_is_pinned.unwrap_or(false),
            last_message,
        }
    }
}

/// The columns of a conversation as seen by caller `$1`.
macro_rules! conversation_select {
    () => {
        r#"
        SELECT c.id, c.name, c.description, c.platform, c.platform_conversation_id,
               c.platform_metadata, c.created_by, c.message_count, c.last_message_at,
               c.last_seq, c.archived_at, c.metadata, c.tags, c.created_at, c.updated_at,
               ARRAY(SELECT p.participant_id FROM participants p
                     WHERE p.conversation_id = c.id
                     ORDER BY p.joined_at, p.participant_id) AS participants,
               me.last_read_seq AS my_last_read_seq,
               me.is_pinned AS my_is_pinned,
               lm.id AS lm_id, lm.sender_id AS lm_sender_id, lm.sender_name AS lm_sender_name,
               lm.text AS lm_text, lm.created_at AS lm_created_at,
               (lm.deleted_at IS NOT NULL) AS lm_deleted
        FROM conversations c
        LEFT JOIN participants me ON me.conversation_id = c.id AND me.participant_id = $1
        LEFT JOIN messages lm ON lm.conversation_id = c.id AND lm.seq = c.last_seq
        "#
    };
}

/// Reads one conversation as `caller` sees it (no access check).
pub async fn fetch(db: &mut PgConnection, caller: &str, id: Uuid) -> AppResult<Conversation> {
    let row: Option<Row> = sqlx::query_as(concat!(conversation_select!(), "WHERE c.id = $2"))
        .bind(caller)
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(Into::into)
        .ok_or(AppError::NotFound("conversation"))
}

/// A participant named in a create request: a bare id or a full object.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ParticipantSpec {
    Id(String),
    Full(NewParticipant),
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct CreateConversation {
    /// The id to give a new conversation (a UUID the client chose, seed 000). Ignored when
    /// `platform_conversation_id` names an existing conversation. Not a name-based
    /// (version 5) UUID: those are reserved for migrated conversations.
    #[serde(alias = "conversationId")]
    #[schema(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-46-9a-fA-F][0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub conversation_id: Option<Uuid>,
    /// Who creates the conversation and becomes its owner. A user may only name
    /// themselves; a service or admin creates on behalf of anyone.
    #[serde(alias = "creatorId")]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub creator_id: Option<String>,
    #[schema(max_length = 200)]
    pub name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// Defaults to `websocket`.
    pub platform: Option<String>,
    /// Unique per platform; defaults to the new conversation's id.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub platform_conversation_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub platform_metadata: Option<Value>,
    /// Other participants; the creator always joins as owner. `null` is an empty list.
    #[serde(default, deserialize_with = "validate::null_as_default")]
    #[schema(nullable, max_items = 500)]
    pub participants: Vec<ParticipantSpec>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default, deserialize_with = "validate::null_as_default")]
    #[schema(nullable, max_items = 20)]
    pub tags: Vec<String>,
    /// Set by the core's own callers only: the platform id is a reserved `dm:` one (a
    /// direct conversation of the messaging API, one per pair).
    #[serde(skip)]
    pub direct: bool,
    /// Set by the core's own callers only: `conversation_id` is a name-based (version 5)
    /// id the CRUD API derives from its user and the client's own id. No one else may
    /// claim one (and so take the id a user's migration will ask for).
    #[serde(skip)]
    pub migrated: bool,
}

/// Platform ids the messaging API derives for direct conversations; no one else may
/// claim one (and so plant a conversation two people will later start).
pub const DIRECT_PREFIX: &str = "dm:";

pub struct Created {
    pub conversation: Conversation,
    pub is_new: bool,
}

pub async fn create(
    state: &AppState,
    principal: &Principal,
    input: CreateConversation,
) -> AppResult<Created> {
    let platform = input.platform.as_deref().unwrap_or("websocket");
    validate::one_of("platform", platform, validate::PLATFORMS)?;
    if let Some(pcid) = &input.platform_conversation_id {
        validate::id("platform_conversation_id", pcid)?;
        if pcid.starts_with(DIRECT_PREFIX) != input.direct {
            return Err(AppError::invalid_field(
                "platform_conversation_id",
                "ids starting with `dm:` are reserved for direct conversations",
            ));
        }
    }
    if let Some(id) = input.conversation_id
        && (id.get_version_num() == 5) != input.migrated
    {
        return Err(AppError::invalid_field(
            "conversation_id",
            "name-based (version 5) UUIDs are reserved for migrated conversations",
        ));
    }
    if let Some(name) = &input.name {
        validate::max_chars("name", name, validate::MAX_NAME_CHARS)?;
    }
    if let Some(d) = &input.description {
        validate::max_chars("description", d, validate::MAX_DESCRIPTION_CHARS)?;
    }
    let metadata = input.metadata.unwrap_or_else(|| json!({}));
    validate::json_object("metadata", &metadata)?;
    let platform_metadata = input.platform_metadata.unwrap_or_else(|| json!({}));
    validate::json_object("platform_metadata", &platform_metadata)?;
    validate::tags(&input.tags)?;
    let mut others = Vec::with_capacity(input.participants.len());
    for spec in input.participants {
        let p = match spec {
            ParticipantSpec::Id(id) => NewParticipant::member(id),
            ParticipantSpec::Full(p) => p,
        };
        p.validate()?;
        others.push(p);
    }
    if others.len() > super::participants::MAX_BATCH {
        return Err(AppError::invalid_field(
            "participants",
            format!(
                "at most {} participants at creation; add more in batches with POST /conversations/{{id}}/participants {{\"participants\": [...]}}",
                super::participants::MAX_BATCH
            ),
        ));
    }

    // Who creates it: the caller, or (services and admins only) the named creator.
    let creator_id = match input.creator_id.as_deref() {
        Some(c) if c != principal.id => {
            validate::id("creator_id", c)?;
            if !principal.is_privileged() {
                return Err(AppError::Forbidden(
                    "creator_id must be your own id; only services and admins create on behalf of others".into(),
                ));
            }
            c.to_owned()
        }
        _ => principal.id.clone(),
    };
    let id = input.conversation_id.unwrap_or_else(Uuid::now_v7);
    let pcid = input
        .platform_conversation_id
        .unwrap_or_else(|| id.to_string());
    let mut tx = state.db.begin().await?;
    let inserted: Option<(Uuid,)> = sqlx::query_as(
        r#"
        INSERT INTO conversations
            (id, name, description, platform, platform_conversation_id, platform_metadata,
             created_by, metadata, tags)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT DO NOTHING
        RETURNING id
        "#,
    )
    .bind(id)
    .bind(&input.name)
    .bind(&input.description)
    .bind(platform)
    .bind(&pcid)
    .bind(&platform_metadata)
    .bind(&creator_id)
    .bind(&metadata)
    .bind(&input.tags)
    .fetch_optional(&mut *tx)
    .await?;

    let Some((id,)) = inserted else {
        // Get-or-create: the platform id (or the client's chosen id, on a retry) is taken;
        // hand back the existing conversation to whoever may read it.
        tx.rollback().await?;
        if input.conversation_id.is_some() {
            return retried_create(state, principal, id, &creator_id, platform, &pcid).await;
        }
        let existing: Option<(Uuid,)> = sqlx::query_as(
            r#"
            SELECT id FROM conversations
            WHERE (platform = $1 AND platform_conversation_id = $2) OR id = $3
            ORDER BY (platform = $1 AND platform_conversation_id = $2) DESC
            LIMIT 1
            "#,
        )
        .bind(platform)
        .bind(&pcid)
        .bind(id)
        .fetch_optional(&state.db)
        .await?;
        let Some((existing,)) = existing else {
            // Deleted between our insert and this read: the client may simply retry.
            return Err(AppError::Conflict {
                code: "CONFLICT",
                message: "the conversation changed while it was being created; retry".into(),
            });
        };
        let access = Access::load(&state.db, principal, existing).await.map_err(|e| match e {
            AppError::NotFound(_) => AppError::Forbidden(
                "a conversation with this platform_conversation_id or conversation_id exists and you are not a participant".into(),
            ),
            other => other,
        })?;
        let mut conn = state.db.acquire().await?;
        let conversation = fetch(&mut conn, &principal.id, access.conversation_id).await?;
        return Ok(Created {
            conversation,
            is_new: false,
        });
    };

    // Someone created on behalf of is described by the participants list, if at all.
    let named = others.iter().find(|p| p.participant_id == creator_id);
    let creator = if creator_id != principal.id {
        NewParticipant {
            participant_id: creator_id.clone(),
            participant_type: Some(
                named
                    .and_then(|p| p.participant_type.clone())
                    .unwrap_or_else(|| "user".into()),
            ),
            role: Some("owner".into()),
            display_name: named.and_then(|p| p.display_name.clone()),
        }
    } else {
        NewParticipant {
            participant_id: creator_id.clone(),
            participant_type: Some(principal.kind.sender_type().to_owned()),
            role: Some("owner".into()),
            display_name: principal.name.clone(),
        }
    };
    // The creator comes first, so it is the one kept when the list names it too.
    let mut everyone = Vec::with_capacity(others.len() + 1);
    everyone.push(creator);
    everyone.extend(others);
    let (added, _) = super::participants::insert_many(&mut tx, id, &everyone).await?;
    let conversation = fetch(&mut tx, &principal.id, id).await?;
    let joined = super::participants::joined_events(
        &mut tx,
        id,
        &conversation.platform_conversation_id,
        &added,
    )
    .await?;
    tx.commit().await?;
    // Each participant's devices hear of it (the inbox channel's `conversationAdded`).
    for event in joined {
        state.events.publish(event);
    }
    Ok(Created {
        conversation,
        is_new: true,
    })
}

/// A create naming its own `conversation_id` that did not insert: only the same creator
/// retrying the same (id, platform, platform id) gets the conversation back (200). Any
/// other collision — the id, or the platform id it implies, already used by another
/// conversation — is a 409 whoever asks, so a client-chosen id can neither be hijacked
/// (an attacker creating it first, or squatting its default platform id) nor tell a
/// stranger more than "taken".
async fn retried_create(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    creator_id: &str,
    platform: &str,
    pcid: &str,
) -> AppResult<Created> {
    let same: Option<(bool,)> = sqlx::query_as(
        r#"
        SELECT created_by = $2 AND platform = $3 AND platform_conversation_id = $4
        FROM conversations WHERE id = $1
        "#,
    )
    .bind(id)
    .bind(creator_id)
    .bind(platform)
    .bind(pcid)
    .fetch_optional(&state.db)
    .await?;
    if same != Some((true,)) {
        return Err(AppError::Conflict {
            code: "CONVERSATION_ID_TAKEN",
            message: "conversation_id (or the platform_conversation_id it implies) is already used by another conversation".into(),
        });
    }
    Ok(Created {
        conversation: get(state, principal, id).await?,
        is_new: false,
    })
}

pub async fn get(state: &AppState, principal: &Principal, id: Uuid) -> AppResult<Conversation> {
    let access = Access::load(&state.db, principal, id).await?;
    let mut conn = state.db.acquire().await?;
    fetch(&mut conn, &principal.id, access.conversation_id).await
}

/// Finds a conversation by platform id; without `platform`, the id must be unique across platforms.
pub async fn resolve_platform_id(
    state: &AppState,
    platform: Option<&str>,
    platform_conversation_id: &str,
) -> AppResult<Uuid> {
    let ids: Vec<(Uuid,)> = sqlx::query_as(
        r#"
        SELECT id FROM conversations
        WHERE platform_conversation_id = $1 AND ($2::text IS NULL OR platform = $2)
        LIMIT 2
        "#,
    )
    .bind(platform_conversation_id)
    .bind(platform)
    .fetch_all(&state.db)
    .await?;
    match ids.as_slice() {
        [(id,)] => Ok(*id),
        [] => Err(AppError::NotFound("conversation")),
        _ => Err(AppError::invalid_field(
            "platform",
            "this platform_conversation_id exists on several platforms; name the platform",
        )),
    }
}

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListConversations {
    /// Conversations of this participant (admins and services; others may only name themselves).
    pub participant_id: Option<String>,
    /// Only conversations that also include this participant (e.g. one agent).
    pub with_participant: Option<String>,
    /// Alias of `with_participant`.
    pub bot_id: Option<String>,
    pub platform: Option<String>,
    pub platform_conversation_id: Option<String>,
    /// `active` or `archived`.
    pub status: Option<String>,
    /// Include archived conversations (default false).
    pub include_archived: Option<bool>,
    pub tag: Option<String>,
    /// Case-insensitive match on name and description.
    pub q: Option<String>,
    /// `true`: pinned conversations first (then newest activity).
    pub pinned: Option<bool>,
    /// `true`: only pinned conversations; `false`: only unpinned.
    pub pinned_only: Option<bool>,
    /// 1..=100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    #[param(minimum = 0, maximum = 1000000000)]
    pub offset: Option<i64>,
}

macro_rules! list_where {
    () => {
        r#"
        WHERE ($2::text IS NULL OR EXISTS (SELECT 1 FROM participants s
                                           WHERE s.conversation_id = c.id AND s.participant_id = $2
                                             AND (NOT $11::bool OR s.participant_type = 'agent')))
          AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM participants w
                                           WHERE w.conversation_id = c.id AND w.participant_id = $3))
          AND ($4::text IS NULL OR c.platform = $4)
          AND ($5::text IS NULL OR c.platform_conversation_id = $5)
          AND (CASE $6::text
                 WHEN 'active' THEN c.archived_at IS NULL
                 WHEN 'archived' THEN c.archived_at IS NOT NULL
                 ELSE ($7::bool OR c.archived_at IS NULL)
               END)
          AND ($8::text IS NULL OR c.tags @> ARRAY[$8::text])
          AND ($9::text IS NULL OR c.name ILIKE $9 OR c.description ILIKE $9)
          AND ($10::bool IS NULL OR coalesce(me.is_pinned, false) = $10)
        "#
    };
}

pub async fn list(
    state: &AppState,
    principal: &Principal,
    query: ListConversations,
) -> AppResult<Page<Conversation>> {
    // Whose conversations: ordinary callers see their own; admins and services may name anyone
    // or, naming nobody, see all.
    let scope = match query.participant_id.clone() {
        Some(p) if p != principal.id && !principal.is_privileged() => {
            return Err(AppError::Forbidden(
                "you may only list your own conversations".into(),
            ));
        }
        Some(p) => Some(p),
        None if principal.is_privileged() => None,
        None => Some(principal.id.clone()),
    };
    let scope = Scope {
        participant: scope,
        as_agent: false,
    };
    list_scoped(state, principal, scope, query).await
}

/// Whose conversations a listing covers.
pub(crate) struct Scope {
    /// This participant's (everyone's when `None`).
    pub participant: Option<String>,
    /// Only those where `participant` takes part as an agent (the agent owner's view).
    pub as_agent: bool,
}

/// Lists conversations of `scope` as seen by `principal`; the caller has already decided
/// that `principal` may see them.
pub(crate) async fn list_scoped(
    state: &AppState,
    principal: &Principal,
    scope: Scope,
    query: ListConversations,
) -> AppResult<Page<Conversation>> {
    let limit = validate::limit(query.limit, 20, 100)?;
    let offset = validate::offset(query.offset)?;
    let with = query.with_participant.or(query.bot_id);
    if let Some(p) = &query.platform {
        validate::one_of("platform", p, validate::PLATFORMS)?;
    }
    if let Some(s) = &query.status {
        validate::one_of("status", s, &["active", "archived"])?;
    }
    let pattern = query
        .q
        .as_deref()
        .filter(|q| !q.is_empty())
        .map(validate::like_pattern);
    let include_archived = query.include_archived.unwrap_or(false);

    let mut conn = state.db.acquire().await?;
    let rows: Vec<Row> = sqlx::query_as(concat!(
        conversation_select!(),
        list_where!(),
        r#"
        ORDER BY CASE WHEN $12::bool THEN coalesce(me.is_pinned, false) ELSE false END DESC,
                 coalesce(c.last_message_at, c.created_at) DESC, c.id DESC
        LIMIT $13 OFFSET $14
        "#
    ))
    .bind(&principal.id)
    .bind(&scope.participant)
    .bind(&with)
    .bind(&query.platform)
    .bind(&query.platform_conversation_id)
    .bind(&query.status)
    .bind(include_archived)
    .bind(&query.tag)
    .bind(&pattern)
    .bind(query.pinned_only)
    .bind(scope.as_agent)
    .bind(query.pinned.unwrap_or(false))
    .bind(limit)
    .bind(offset)
    .fetch_all(&mut *conn)
    .await?;
    let (total,): (i64,) = sqlx::query_as(concat!(
        "SELECT count(*) FROM conversations c
         LEFT JOIN participants me ON me.conversation_id = c.id AND me.participant_id = $1",
        list_where!()
    ))
    .bind(&principal.id)
    .bind(&scope.participant)
    .bind(&with)
    .bind(&query.platform)
    .bind(&query.platform_conversation_id)
    .bind(&query.status)
    .bind(include_archived)
    .bind(&query.tag)
    .bind(&pattern)
    .bind(query.pinned_only)
    .bind(scope.as_agent)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Page::new(
        rows.into_iter().map(Into::into).collect(),
        total,
        limit,
        offset,
    ))
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct UpdateConversation {
    #[schema(max_length = 200)]
    pub name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[schema(max_items = 20)]
    pub tags: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub platform_metadata: Option<Value>,
}

pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    input: UpdateConversation,
) -> AppResult<Conversation> {
    let access = Access::load(&state.db, principal, id).await?;
    access.require_manage("update it")?;
    if let Some(name) = &input.name {
        validate::max_chars("name", name, validate::MAX_NAME_CHARS)?;
    }
    if let Some(d) = &input.description {
        validate::max_chars("description", d, validate::MAX_DESCRIPTION_CHARS)?;
    }
    if let Some(m) = &input.metadata {
        validate::json_object("metadata", m)?;
    }
    if let Some(m) = &input.platform_metadata {
        validate::json_object("platform_metadata", m)?;
    }
    if let Some(t) = &input.tags {
        validate::tags(t)?;
    }
    let mut tx = state.db.begin().await?;
    sqlx::query(
        r#"
        UPDATE conversations SET
            name = coalesce($2, name),
            description = coalesce($3, description),
            metadata = coalesce($4, metadata),
            tags = coalesce($5, tags),
            platform_metadata = coalesce($6, platform_metadata),
            updated_at = now()
        WHERE id = $1
        "#,
    )
    .bind(id)
    .bind(&input.name)
    .bind(&input.description)
    .bind(&input.metadata)
    .bind(&input.tags)
    .bind(&input.platform_metadata)
    .execute(&mut *tx)
    .await?;
    let conversation = fetch(&mut tx, &principal.id, id).await?;
    commit_updated(state, tx, &access, &conversation).await?;
    Ok(conversation)
}

/// Records `conversation.updated` for webhooks, commits, then announces it.
async fn commit_updated(
    state: &AppState,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    access: &Access,
    conversation: &Conversation,
) -> AppResult<()> {
    let event = Event::new(
        EventKind::ConversationUpdated,
        access.conversation_id,
        access.room.clone(),
        serde_json::to_value(conversation).unwrap_or(Value::Null),
        Default::default(),
    );
    super::webhooks::record_event(&mut tx, &event, None).await?;
    tx.commit().await?;
    state.events.publish(event);
    Ok(())
}

pub async fn delete(state: &AppState, principal: &Principal, id: Uuid) -> AppResult<()> {
    let access = Access::load(&state.db, principal, id).await?;
    access.require_manage("delete it")?;
    sqlx::query("DELETE FROM conversations WHERE id = $1")
        .bind(id)
        .execute(&state.db)
        .await?;
    state.events.publish(Event::new(
        EventKind::ConversationDeleted,
        id,
        access.room,
        json!({ "id": id, "conversation_id": id }),
        Default::default(),
    ));
    Ok(())
}

/// Archives (`true`) or restores (`false`); idempotent.
pub async fn set_archived(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    archived: bool,
) -> AppResult<Conversation> {
    let access = Access::load(&state.db, principal, id).await?;
    access.require_manage(if archived { "archive it" } else { "restore it" })?;
    let mut tx = state.db.begin().await?;
    sqlx::query(
        r#"
        UPDATE conversations
        SET archived_at = CASE WHEN $2 THEN coalesce(archived_at, now()) ELSE NULL END,
            updated_at = now()
        WHERE id = $1
        "#,
    )
    .bind(id)
    .bind(archived)
    .execute(&mut *tx)
    .await?;
    let conversation = fetch(&mut tx, &principal.id, id).await?;
    commit_updated(state, tx, &access, &conversation).await?;
    Ok(conversation)
}

/// Pins or unpins for the caller only.
pub async fn set_pinned(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    pinned: bool,
) -> AppResult<Conversation> {
    let access = Access::load(&state.db, principal, id).await?;
    if !access.is_participant {
        return Err(AppError::Forbidden(
            "only participants can pin a conversation".into(),
        ));
    }
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "UPDATE participants SET is_pinned = $3 WHERE conversation_id = $1 AND participant_id = $2",
    )
    .bind(id)
    .bind(&principal.id)
    .bind(pinned)
    .execute(&mut *tx)
    .await?;
    let conversation = fetch(&mut tx, &principal.id, id).await?;
    tx.commit().await?;
    Ok(conversation)
}
