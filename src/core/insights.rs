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
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words, "quoted phrases", `or`, `-excluded` (web-search syntax).
    pub q: Option<String>,
    pub conversation_id: Option<Uuid>,
    /// 1..=100, default 20.
    pub limit: Option<i64>,
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
            " UNION SELECT ap.conversation_id FROM participants ap JOIN agents a ON a.agent_id = ap.participant_id WHERE a.owner_id = ",
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
    let text =
        q.q.as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AppError::invalid_field("q", "is required"))?;
    validate::max_chars("q", text, 500)?;
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
#[serde(deny_unknown_fields)]
pub struct RegisterAgent {
    pub agent_id: String,
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Agent {
    pub agent_id: String,
    pub owner_id: String,
    pub name: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Registers an agent id for the caller; `(agent, is_new)`. Someone else's id is a conflict.
pub async fn register_agent(
    state: &AppState,
    principal: &Principal,
    input: RegisterAgent,
) -> AppResult<(Agent, bool)> {
    validate::id("agent_id", &input.agent_id)?;
    if let Some(n) = &input.name {
        validate::max_chars("name", n, validate::MAX_NAME_CHARS)?;
    }
    if input.agent_id == principal.id {
        return Err(AppError::invalid_field(
            "agent_id",
            "must differ from your own id",
        ));
    }
    let inserted: Option<Agent> = sqlx::query_as(
        "INSERT INTO agents (agent_id, owner_id, name) VALUES ($1, $2, $3)
         ON CONFLICT (agent_id) DO NOTHING RETURNING agent_id, owner_id, name, created_at",
    )
    .bind(&input.agent_id)
    .bind(&principal.id)
    .bind(&input.name)
    .fetch_optional(&state.db)
    .await?;
    if let Some(agent) = inserted {
        return Ok((agent, true));
    }
    let existing: Agent = sqlx::query_as(
        "SELECT agent_id, owner_id, name, created_at FROM agents WHERE agent_id = $1",
    )
    .bind(&input.agent_id)
    .fetch_one(&state.db)
    .await?;
    if existing.owner_id != principal.id {
        return Err(AppError::Conflict {
            code: "AGENT_TAKEN",
            message: "this agent id is registered by someone else".into(),
        });
    }
    Ok((existing, false))
}

/// The owner's read-only view of every conversation the agent is in.
pub async fn agent_conversations(
    state: &AppState,
    principal: &Principal,
    agent_id: &str,
    query: ListConversations,
) -> AppResult<Page<Conversation>> {
    let owner: Option<(String,)> =
        sqlx::query_as("SELECT owner_id FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&state.db)
            .await?;
    match owner {
        Some((owner,)) if owner == principal.id || principal.admin => {}
        _ => return Err(AppError::NotFound("agent")),
    }
    conversations::list_scoped(state, principal, Some(agent_id.to_owned()), query).await
}
