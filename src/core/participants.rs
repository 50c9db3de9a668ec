//! Participants of a conversation: who is in it, with which role and read horizon.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    access::Access,
    events::{Event, EventKind},
    validate,
};
use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

#[derive(Clone, Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Participant {
    pub participant_id: String,
    /// `user|agent|system`
    pub participant_type: String,
    /// `owner|member`
    pub role: String,
    pub display_name: Option<String>,
    pub joined_at: DateTime<Utc>,
    pub last_read_seq: i64,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewParticipant {
    pub participant_id: String,
    /// `user` (default), `agent` or `system`.
    pub participant_type: Option<String>,
    /// `member` (default) or `owner`.
    pub role: Option<String>,
    pub display_name: Option<String>,
}

impl NewParticipant {
    pub fn member(participant_id: String) -> Self {
        Self {
            participant_id,
            participant_type: None,
            role: None,
            display_name: None,
        }
    }

    pub fn validate(&self) -> AppResult<()> {
        validate::id("participant_id", &self.participant_id)?;
        if let Some(t) = &self.participant_type {
            validate::one_of("participant_type", t, validate::PARTICIPANT_TYPES)?;
        }
        if let Some(r) = &self.role {
            validate::one_of("role", r, validate::ROLES)?;
        }
        if let Some(n) = &self.display_name {
            validate::max_chars("display_name", n, validate::MAX_ID_CHARS)?;
        }
        Ok(())
    }
}

/// Inserts a participant; returns `None` when they were already in.
pub async fn insert(
    conn: &mut PgConnection,
    conversation_id: Uuid,
    p: &NewParticipant,
) -> AppResult<Option<Participant>> {
    Ok(sqlx::query_as(
        r#"
        INSERT INTO participants (conversation_id, participant_id, participant_type, role, display_name)
        VALUES ($1, $2, coalesce($3, 'user'), coalesce($4, 'member'), $5)
        ON CONFLICT (conversation_id, participant_id) DO NOTHING
        RETURNING participant_id, participant_type, role, display_name, joined_at, last_read_seq
        "#,
    )
    .bind(conversation_id)
    .bind(&p.participant_id)
    .bind(&p.participant_type)
    .bind(&p.role)
    .bind(&p.display_name)
    .fetch_optional(conn)
    .await?)
}

pub async fn list(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> AppResult<Vec<Participant>> {
    let access = Access::load(&state.db, principal, id).await?;
    Ok(sqlx::query_as(
        r#"
        SELECT participant_id, participant_type, role, display_name, joined_at, last_read_seq
        FROM participants WHERE conversation_id = $1
        ORDER BY joined_at, participant_id
        "#,
    )
    .bind(access.conversation_id)
    .fetch_all(&state.db)
    .await?)
}

pub struct Added {
    pub participant: Participant,
    pub is_new: bool,
}

/// Adds a participant (owner, admin or service); adding someone already in returns them.
pub async fn add(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    input: NewParticipant,
) -> AppResult<Added> {
    input.validate()?;
    let access = Access::load(&state.db, principal, id).await?;
    access.require_manage("add participants")?;
    let mut conn = state.db.acquire().await?;
    if let Some(participant) = insert(&mut conn, id, &input).await? {
        state.events.publish(Event {
            kind: EventKind::ParticipantJoined,
            conversation_id: id,
            room: access.room,
            data: json!({ "conversation_id": id, "participant": participant }),
            origin: Default::default(),
        });
        return Ok(Added {
            participant,
            is_new: true,
        });
    }
    let participant = sqlx::query_as(
        r#"
        SELECT participant_id, participant_type, role, display_name, joined_at, last_read_seq
        FROM participants WHERE conversation_id = $1 AND participant_id = $2
        "#,
    )
    .bind(id)
    .bind(&input.participant_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Added {
        participant,
        is_new: false,
    })
}

/// Removes a participant: the owner, an admin or service, or the participant themselves.
pub async fn remove(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    participant_id: &str,
) -> AppResult<()> {
    let access = Access::load(&state.db, principal, id).await?;
    if participant_id != principal.id {
        access.require_manage("remove other participants")?;
    }
    let removed =
        sqlx::query("DELETE FROM participants WHERE conversation_id = $1 AND participant_id = $2")
            .bind(id)
            .bind(participant_id)
            .execute(&state.db)
            .await?
            .rows_affected();
    if removed == 0 {
        return Err(AppError::NotFound("participant"));
    }
    state.events.publish(Event {
        kind: EventKind::ParticipantLeft,
        conversation_id: id,
        room: access.room,
        data: json!({ "conversation_id": id, "participant_id": participant_id }),
        origin: Default::default(),
    });
    Ok(())
}
