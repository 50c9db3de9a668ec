//! The one place that decides who may do what to a conversation.

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::{
    auth::Principal,
    error::{AppError, AppResult},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// An agent's owner: reads the agent's conversations, writes nothing.
    Read,
    /// A participant: reads and writes messages.
    Participant,
    /// Owner, admin or service: also changes the conversation itself.
    Manage,
}

/// A caller's standing in one conversation, plus what every check needs to know.
#[derive(Clone, Debug)]
pub struct Access {
    pub conversation_id: Uuid,
    pub room: String,
    pub archived: bool,
    pub is_participant: bool,
    pub level: Level,
    /// The conversation's `last_seq` when access was checked.
    pub last_seq: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    platform_conversation_id: String,
    archived: bool,
    last_seq: i64,
    role: Option<String>,
    agent_owned: bool,
}

/// SQL: whether principal `$owner` owns an agent that takes part, as an agent, in
/// conversation `$conv` — the one rule behind an owner's read-only access.
macro_rules! owns_an_agent_in {
    ($conv:literal, $owner:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM agents a JOIN participants ap ON ap.conversation_id = ",
            $conv,
            " AND ap.participant_id = a.agent_id AND ap.participant_type = 'agent' \
             WHERE a.owner_id = ",
            $owner,
            ")"
        )
    };
}

/// Which of `ids` may still read the conversation as a participant or as the owner of an
/// agent taking part in it (admins and services are not asked: they read everything).
pub async fn readers_among(
    db: impl PgExecutor<'_>,
    conversation_id: Uuid,
    ids: &[String],
) -> AppResult<std::collections::HashSet<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(concat!(
        r#"
        SELECT pid FROM unnest($2::text[]) AS pid
        WHERE EXISTS (SELECT 1 FROM participants p
                      WHERE p.conversation_id = $1 AND p.participant_id = pid)
           OR "#,
        owns_an_agent_in!("$1", "pid"),
    ))
    .bind(conversation_id)
    .bind(ids)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

impl Access {
    /// Loads the caller's access; a conversation the caller may not read is `NotFound`,
    /// so its existence does not leak.
    pub async fn load(
        db: impl PgExecutor<'_>,
        principal: &Principal,
        conversation_id: Uuid,
    ) -> AppResult<Self> {
        let row: Option<Row> = sqlx::query_as(concat!(
            r#"
            SELECT c.id,
                   c.platform_conversation_id,
                   c.archived_at IS NOT NULL AS archived,
                   c.last_seq,
                   p.role,
            "#,
            owns_an_agent_in!("c.id", "$2"),
            r#" AS agent_owned
            FROM conversations c
            LEFT JOIN participants p
              ON p.conversation_id = c.id AND p.participant_id = $2
            WHERE c.id = $1
            "#,
        ))
        .bind(conversation_id)
        .bind(&principal.id)
        .fetch_optional(db)
        .await?;
        let row = row.ok_or(AppError::NotFound("conversation"))?;
        let level = if principal.is_privileged() || row.role.as_deref() == Some("owner") {
            Level::Manage
        } else if row.role.is_some() {
            Level::Participant
        } else if row.agent_owned {
            Level::Read
        } else {
            return Err(AppError::NotFound("conversation"));
        };
        Ok(Self {
            conversation_id: row.id,
            room: row.platform_conversation_id,
            archived: row.archived,
            is_participant: row.role.is_some(),
            level,
            last_seq: row.last_seq,
        })
    }

    pub fn require_write(&self) -> AppResult<()> {
        if self.level < Level::Participant {
            return Err(AppError::Forbidden(
                "agent owners have read-only access to their agents' conversations".into(),
            ));
        }
        Ok(())
    }

    pub fn require_manage(&self, action: &str) -> AppResult<()> {
        if self.level < Level::Manage {
            return Err(AppError::Forbidden(format!(
                "only the conversation's owner or an admin may {action}"
            )));
        }
        Ok(())
    }

    pub fn require_active(&self) -> AppResult<()> {
        if self.archived {
            return Err(AppError::archived());
        }
        Ok(())
    }
}
