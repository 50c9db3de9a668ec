//! Search, the unread inbox and agent ownership.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    Page,
    conversations::{self, Conversation, ListConversations},
    messages::{Message, Row},
    validate,
};
use crate::{
    auth::{Principal, PrincipalKind},
    error::{AppError, AppResult},
    state::AppState,
};

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words, "quoted phrases", `or`, `-excluded` (web-search syntax).
    #[param(
        required = true,
        max_length = 500,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    pub q: Option<String>,
    pub conversation_id: Option<Uuid>,
    /// 1..=100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    #[param(minimum = 0, maximum = 1000000000)]
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    pub message: Message,
    pub rank: f32,
    /// Raw message text around the matches, matches wrapped in `<mark>…</mark>`.
    /// Escape it before rendering, then restore the marks.
    pub snippet: String,
}

#[derive(sqlx::FromRow)]
struct HitRow {
    #[sqlx(flatten)]
    message: Row,
    rank: f32,
    snippet: String,
}

/// Conversations `$n` may read: as participant, or as the owner of an agent in it.
macro_rules! readable {
    ($n:literal) => {
        concat!(
            "(SELECT p.conversation_id FROM participants p WHERE p.participant_id = ",
            $n,
            " UNION SELECT ap.conversation_id FROM participants ap JOIN agents a ON a.agent_id = ap.participant_id AND ap.participant_type = 'agent' WHERE a.owner_id = ",
            $n,
            ")"
        )
    };
}

/// The matching, readable, undeleted messages: `$1` query text, `$2` conversation,
/// `$3` privileged caller, `$4` caller id.
macro_rules! search_from_where {
    () => {
        concat!(
            r#"
            FROM messages m, websearch_to_tsquery('english', $1) query
            WHERE m.search @@ query AND m.deleted_at IS NULL
              AND ($2::uuid IS NULL OR m.conversation_id = $2)
              AND ($3 OR m.conversation_id IN "#,
            readable!("$4"),
            ")"
        )
    };
}

pub async fn search(
    state: &AppState,
    principal: &Principal,
    q: SearchQuery,
) -> AppResult<Page<SearchHit>> {
    // The limit applies to what was sent, before trimming.
    validate::max_chars("q", q.q.as_deref().unwrap_or_default(), 500)?;
    let text =
        q.q.as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AppError::invalid_field("q", "is required"))?;
    let limit = validate::limit(q.limit, 20, 100)?;
    let offset = validate::offset(q.offset)?;
    let rows: Vec<HitRow> = sqlx::query_as(concat!(
        r#"
        SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.sender_name, m.sender_type, m.text,
               m.client_message_id, m.platform_context, m.attachments, m.metadata, m.thread_id,
               m.reactions, m.edit_history, m.created_at, m.updated_at, m.deleted_at,
               NULL::bigint AS read_horizon,
               ts_rank(m.search, query) AS rank,
               ts_headline('english', m.text, query, 'StartSel=<mark>, StopSel=</mark>, MaxFragments=2') AS snippet
        "#,
        search_from_where!(),
        r#"
        ORDER BY rank DESC, m.created_at DESC
        LIMIT $5 OFFSET $6
        "#
    ))
    .bind(text)
    .bind(q.conversation_id)
    .bind(principal.is_privileged())
    .bind(&principal.id)
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.db)
    .await?;
    let (total,): (i64,) = sqlx::query_as(concat!("SELECT count(*) ", search_from_where!()))
        .bind(text)
        .bind(q.conversation_id)
        .bind(principal.is_privileged())
        .bind(&principal.id)
        .fetch_one(&state.db)
        .await?;
    let items = rows
        .into_iter()
        .map(|r| SearchHit {
            message: r.message.into(),
            rank: r.rank,
            snippet: r.snippet,
        })
        .collect();
    Ok(Page::new(items, total, limit, offset))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct UnreadConversation {
    pub conversation_id: Uuid,
    pub unread_count: i64,
    pub last_read_seq: i64,
    pub last_seq: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Inbox {
    pub total_unread: i64,
    /// Conversations with unread messages, most unread first (archived ones left out).
    pub conversations: Vec<UnreadConversation>,
}

pub async fn unread(state: &AppState, principal: &Principal) -> AppResult<Inbox> {
    let conversations: Vec<UnreadConversation> = sqlx::query_as(
        r#"
        SELECT p.conversation_id, c.last_seq - p.last_read_seq AS unread_count,
               p.last_read_seq, c.last_seq
        FROM participants p JOIN conversations c ON c.id = p.conversation_id
        WHERE p.participant_id = $1 AND c.archived_at IS NULL AND c.last_seq > p.last_read_seq
        ORDER BY unread_count DESC, c.last_message_at DESC
        "#,
    )
    .bind(&principal.id)
    .fetch_all(&state.db)
    .await?;
    Ok(Inbox {
        total_unread: conversations.iter().map(|c| c.unread_count).sum(),
        conversations,
    })
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct RegisterAgent {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub agent_id: String,
    #[schema(max_length = 200)]
    pub name: Option<String>,
    /// Who owns the agent. Admins and services name anyone (default: themselves); the
    /// agent itself must name it unless its token carries a signed `owner` claim.
    #[serde(alias = "ownerId")]
    pub owner_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Agent {
    pub agent_id: String,
    pub owner_id: String,
    pub name: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Records who owns an agent. Ownership is granted only by a party that controls the
/// agent id (contract §3): an admin or a service (any owner), or the agent itself (its own
/// token, naming `owner_id` or carrying a signed `owner` claim). Anyone else gets 403, so no
/// one can claim another principal's id, used or not yet used. `(agent, is_new)`.
pub async fn register_agent(
    state: &AppState,
    principal: &Principal,
    input: RegisterAgent,
) -> AppResult<(Agent, bool)> {
    validate::id("agent_id", &input.agent_id)?;
    if let Some(n) = &input.name {
        validate::max_chars("name", n, validate::MAX_NAME_CHARS)?;
    }
    let is_the_agent = principal.kind == PrincipalKind::Agent && principal.id == input.agent_id;
    let owner_id = if principal.is_privileged() {
        input.owner_id.unwrap_or_else(|| principal.id.clone())
    } else if is_the_agent {
        input
            .owner_id
            .or_else(|| principal.owner.clone())
            .ok_or_else(|| AppError::invalid_field("owner_id", "is required"))?
    } else {
        return Err(AppError::Forbidden(
            "only the agent itself (an agent token for agent_id), an admin or a service may \
             grant ownership of an agent id"
                .into(),
        ));
    };
    validate::id("owner_id", &owner_id)?;
    if owner_id == input.agent_id {
        return Err(AppError::invalid_field(
            "owner_id",
            "an agent cannot own itself",
        ));
    }
    upsert_owner(&state.db, &input.agent_id, &owner_id, input.name.as_deref()).await
}

async fn upsert_owner(
    db: &sqlx::PgPool,
    agent_id: &str,
    owner_id: &str,
    name: Option<&str>,
) -> AppResult<(Agent, bool)> {
    #[derive(sqlx::FromRow)]
    struct Upserted {
        #[sqlx(flatten)]
        agent: Agent,
        is_new: bool,
    }
    let row: Upserted = sqlx::query_as(
        r#"
        INSERT INTO agents (agent_id, owner_id, name) VALUES ($1, $2, $3)
        ON CONFLICT (agent_id) DO UPDATE
            SET owner_id = EXCLUDED.owner_id, name = coalesce(EXCLUDED.name, agents.name)
        RETURNING agent_id, owner_id, name, created_at, (xmax = 0) AS is_new
        "#,
    )
    .bind(agent_id)
    .bind(owner_id)
    .bind(name)
    .fetch_one(db)
    .await?;
    // Webhooks a former owner registered for this agent stop with the ownership.
    super::webhooks::deactivate_for_new_owner(db, agent_id, owner_id).await?;
    super::responders::disable_for_new_owner(db, agent_id, owner_id).await?;
    Ok((row.agent, row.is_new))
}

/// Records an agent token's signed `owner` claim (contract §2) when no ownership is
/// recorded yet; this process checks each (agent, owner) pair once, later calls cost a map
/// lookup.
pub async fn record_owner_claim(state: &AppState, principal: &Principal) -> AppResult<()> {
    let Some(owner) = principal.owner.as_deref() else {
        return Ok(());
    };
    if owner == principal.id || state.owner_claims.seen(&principal.id, owner) {
        return Ok(());
    }
    // Recorded when the agent first shows up; an ownership granted explicitly (POST
    // /agents by an admin, a service or the agent) is never overwritten by a claim.
    sqlx::query(
        "INSERT INTO agents (agent_id, owner_id, name) VALUES ($1, $2, $3)
         ON CONFLICT (agent_id) DO NOTHING",
    )
    .bind(&principal.id)
    .bind(owner)
    .bind(principal.name.as_deref())
    .execute(&state.db)
    .await?;
    state.owner_claims.remember(&principal.id, owner);
    Ok(())
}

/// Who owns `agent_id`, if anyone is recorded.
pub async fn owner_of(state: &AppState, agent_id: &str) -> AppResult<Option<String>> {
    let owner: Option<(String,)> =
        sqlx::query_as("SELECT owner_id FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&state.db)
            .await?;
    Ok(owner.map(|(o,)| o))
}

/// Whether `principal` controls `agent_id`: it is the agent (an agent token for that id),
/// or its recorded owner. Webhooks and responders for an agent need this.
pub async fn controls_agent(
    state: &AppState,
    principal: &Principal,
    agent_id: &str,
) -> AppResult<bool> {
    if principal.kind == PrincipalKind::Agent && principal.id == agent_id {
        return Ok(true);
    }
    Ok(owner_of(state, agent_id).await?.as_deref() == Some(principal.id.as_str()))
}

/// The owner's read-only view of every conversation the agent is in.
pub async fn agent_conversations(
    state: &AppState,
    principal: &Principal,
    agent_id: &str,
    query: ListConversations,
) -> AppResult<Page<Conversation>> {
    match owner_of(state, agent_id).await? {
        Some(owner) if owner == principal.id || principal.admin => {}
        _ => return Err(AppError::NotFound("agent")),
    }
    let scope = conversations::Scope {
        participant: Some(agent_id.to_owned()),
        as_agent: true,
    };
    conversations::list_scoped(state, principal, scope, query).await
}

/// The agents `owner_id` owns, by id.
pub async fn agents_owned_by(state: &AppState, owner_id: &str) -> AppResult<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT agent_id FROM agents WHERE owner_id = $1 ORDER BY agent_id")
            .bind(owner_id)
            .fetch_all(&state.db)
            .await?;
    Ok(rows.into_iter().map(|(a,)| a).collect())
}
