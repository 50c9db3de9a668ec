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
pub struct NewParticipant {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub participant_id: String,
    /// `user` (default), `agent` or `system`.
    pub participant_type: Option<String>,
    /// `member` (default) or `owner`.
    pub role: Option<String>,
    #[schema(max_length = 128)]
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
    let mut tx = state.db.begin().await?;
    if let Some(participant) = insert(&mut tx, id, &input).await? {
        let joined = joined_events(
            &mut tx,
            id,
            &access.room,
            std::slice::from_ref(&participant),
        )
        .await?;
        tx.commit().await?;
        for event in joined {
            state.events.publish(event);
        }
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
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Added {
        participant,
        is_new: false,
    })
}

/// Most participants one request may add (create or batch); larger conversations grow in
/// batches of this size.
pub const MAX_BATCH: usize = 500;

/// `POST /participants` takes one participant, or `{participants: [...]}` for a batch.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum AddRequest {
    Many(AddParticipants),
    One(NewParticipant),
}

/// One participant (`201` added, `200` already in), or a batch's outcome.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AddOutcome {
    One(Participant),
    Many(AddedBatch),
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct AddParticipants {
    /// 1 to 500 participants; ids already in the conversation are left as they are.
    #[schema(min_items = 1, max_items = 500)]
    pub participants: Vec<NewParticipant>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AddedBatch {
    /// Participants this call added (ids already in are not repeated here).
    pub added: Vec<Participant>,
    /// How many of the named ids were already participants.
    pub already_present: usize,
}

/// Adds up to [`MAX_BATCH`] participants in one statement (owner, admin or service).
pub async fn add_many(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    input: AddParticipants,
) -> AppResult<AddedBatch> {
    if input.participants.is_empty() || input.participants.len() > MAX_BATCH {
        return Err(AppError::invalid_field(
            "participants",
            format!("must name 1 to {MAX_BATCH} participants; add more in further batches"),
        ));
    }
    for p in &input.participants {
        p.validate()?;
    }
    let access = Access::load(&state.db, principal, id).await?;
    access.require_manage("add participants")?;
    let mut tx = state.db.begin().await?;
    let (added, named) = insert_many(&mut tx, id, &input.participants).await?;
    let joined = joined_events(&mut tx, id, &access.room, &added).await?;
    tx.commit().await?;
    for event in joined {
        state.events.publish(event);
    }
    Ok(AddedBatch {
        already_present: named.saturating_sub(added.len()),
        added,
    })
}

/// Inserts participants with one statement; returns those that were not in yet, and how
/// many distinct ids were named. One row per id (the first mention wins), in id order:
/// two overlapping batches then take their row locks in the same order and cannot
/// deadlock.
pub async fn insert_many(
    conn: &mut PgConnection,
    conversation_id: Uuid,
    participants: &[NewParticipant],
) -> AppResult<(Vec<Participant>, usize)> {
    let mut unique: Vec<&NewParticipant> = Vec::with_capacity(participants.len());
    let mut seen = std::collections::HashSet::new();
    for p in participants {
        if seen.insert(p.participant_id.as_str()) {
            unique.push(p);
        }
    }
    unique.sort_by(|a, b| a.participant_id.cmp(&b.participant_id));
    let ids: Vec<&str> = unique.iter().map(|p| p.participant_id.as_str()).collect();
    let types: Vec<Option<&str>> = unique
        .iter()
        .map(|p| p.participant_type.as_deref())
        .collect();
    let roles: Vec<Option<&str>> = unique.iter().map(|p| p.role.as_deref()).collect();
    let names: Vec<Option<&str>> = unique.iter().map(|p| p.display_name.as_deref()).collect();
    let added: Vec<Participant> = sqlx::query_as(
        r#"
        INSERT INTO participants (conversation_id, participant_id, participant_type, role, display_name)
        SELECT $1, t.id, coalesce(t.kind, 'user'), coalesce(t.role, 'member'), t.name
        FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS t(id, kind, role, name)
        ON CONFLICT (conversation_id, participant_id) DO NOTHING
        RETURNING participant_id, participant_type, role, display_name, joined_at, last_read_seq
        "#,
    )
    .bind(conversation_id)
    .bind(&ids)
    .bind(&types)
    .bind(&roles)
    .bind(&names)
    .fetch_all(conn)
    .await?;
    Ok((added, ids.len()))
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
    // Sends lock the conversation row before their statement takes its snapshot; taking
    // the same lock here orders a removal against in-flight sends: a send either commits
    // before it (while the sender was a participant) or sees the removal and is refused.
    let mut tx = state.db.begin().await?;
    sqlx::query("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let removed =
        sqlx::query("DELETE FROM participants WHERE conversation_id = $1 AND participant_id = $2")
            .bind(id)
            .bind(participant_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if removed == 0 {
        return Err(AppError::NotFound("participant"));
    }
    let event = Event::new(
        EventKind::ParticipantLeft,
        id,
        access.room,
        json!({ "conversation_id": id, "participant_id": participant_id }),
        Default::default(),
    );
    super::webhooks::record_event(&mut tx, &event, Some(participant_id)).await?;
    tx.commit().await?;
    state.events.publish(event);
    Ok(())
}

/// The `participant.joined` events for `added`, recorded for webhooks in the caller's
/// transaction; publish them after it commits.
pub(crate) async fn joined_events(
    conn: &mut PgConnection,
    conversation_id: Uuid,
    room: &str,
    added: &[Participant],
) -> AppResult<Vec<Event>> {
    let events: Vec<Event> = added
        .iter()
        .map(|participant| {
            Event::new(
                EventKind::ParticipantJoined,
                conversation_id,
                room.to_owned(),
                json!({ "conversation_id": conversation_id, "participant": participant }),
                Default::default(),
            )
        })
        .collect();
    let recorded: Vec<(&Event, Option<&str>)> = events
        .iter()
        .zip(added)
        .map(|(e, p)| (e, Some(p.participant_id.as_str())))
        .collect();
    super::webhooks::record(conn, &recorded).await?;
    Ok(events)
}
