//! Profiles: what principals' tokens say about them (`name`, `preferred_username`,
//! `picture`), remembered so others see them where the seeds show profiles (contract §2, §7).

use std::collections::HashMap;

use serde::Serialize;
use sqlx::PgExecutor;

use crate::{auth::Principal, error::AppResult, state::AppState};

/// A principal as others see it (seed 002's `sender_info`, `other_participant`).
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub user_id: String,
    pub handle: String,
    pub display_name: String,
    pub avatar_url: Option<String>,
}

impl Profile {
    /// Someone with no stored profile: their id stands in for handle and name.
    pub fn bare(id: &str) -> Self {
        Self {
            user_id: id.to_owned(),
            handle: id.to_owned(),
            display_name: id.to_owned(),
            avatar_url: None,
        }
    }

    /// What a principal's own token says, when it names the principal (the stored row
    /// holds the same, written by [`remember_claims`]).
    pub fn claimed(principal: &Principal) -> Option<Self> {
        let name = principal.name.clone()?;
        Some(Self {
            user_id: principal.id.clone(),
            handle: principal
                .handle
                .clone()
                .unwrap_or_else(|| principal.id.clone()),
            display_name: name,
            avatar_url: principal.picture.clone(),
        })
    }
}

/// The profile rows this process already wrote, by principal, so a principal's every
/// request does not write it again. Bounded: cleared when large.
#[derive(Clone, Default)]
pub struct Written(std::sync::Arc<std::sync::Mutex<HashMap<String, u64>>>);

impl Written {
    const MAX: usize = 100_000;

    fn fresh(&self, id: &str, fingerprint: u64) -> bool {
        self.0
            .lock()
            .map(|m| m.get(id) != Some(&fingerprint))
            .unwrap_or(true)
    }

    fn remember(&self, id: &str, fingerprint: u64) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= Self::MAX {
                m.clear();
            }
            m.insert(id.to_owned(), fingerprint);
        }
    }
}

/// Records what a verified token says about its principal: an agent's signed `owner`
/// claim and the profile claims. Every transport calls this once it knows the caller.
pub async fn remember_claims(state: &AppState, principal: &Principal) -> AppResult<()> {
    super::insights::record_owner_claim(state, principal).await?;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &principal.name,
        &principal.handle,
        &principal.picture,
        principal.kind.sender_type(),
    )
        .hash(&mut h);
    let fingerprint = h.finish();
    if !state.profiles.fresh(&principal.id, fingerprint) {
        return Ok(());
    }
    let kind = match principal.kind {
        crate::auth::PrincipalKind::User => "user",
        crate::auth::PrincipalKind::Agent => "agent",
        crate::auth::PrincipalKind::Service => "service",
    };
    sqlx::query(
        r#"
        INSERT INTO profiles (principal_id, kind, display_name, handle, avatar_url)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (principal_id) DO UPDATE
        SET kind = excluded.kind, display_name = excluded.display_name,
            handle = excluded.handle, avatar_url = excluded.avatar_url, updated_at = now()
        WHERE (profiles.kind, profiles.display_name, profiles.handle, profiles.avatar_url)
              IS DISTINCT FROM (excluded.kind, excluded.display_name, excluded.handle, excluded.avatar_url)
        "#,
    )
    .bind(&principal.id)
    .bind(kind)
    .bind(&principal.name)
    .bind(&principal.handle)
    .bind(&principal.picture)
    .execute(&state.db)
    .await?;
    state.profiles.remember(&principal.id, fingerprint);
    Ok(())
}

/// The profiles of `ids` (a bare one for anyone never seen), falling back to the name a
/// participant was given, or an agent's registered name.
pub async fn of(db: impl PgExecutor<'_>, ids: &[String]) -> AppResult<HashMap<String, Profile>> {
    let rows: Vec<ProfileRow> = sqlx::query_as(
        r#"
        SELECT i.id,
               coalesce(p.display_name, a.name,
                        (SELECT pa.display_name FROM participants pa
                         WHERE pa.participant_id = i.id AND pa.display_name IS NOT NULL LIMIT 1))
                   AS display_name,
               p.handle, p.avatar_url
        FROM unnest($1::text[]) AS i(id)
        LEFT JOIN profiles p ON p.principal_id = i.id
        LEFT JOIN agents a ON a.agent_id = i.id
        "#,
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id.clone(), r.into())).collect())
}

/// The first agent taking part (as an agent) in each of `conversations`, as others see it.
pub async fn agents_in(
    db: impl PgExecutor<'_>,
    conversations: &[uuid::Uuid],
) -> AppResult<HashMap<uuid::Uuid, Profile>> {
    let rows: Vec<AgentRow> = sqlx::query_as(
        r#"
        SELECT DISTINCT ON (p.conversation_id) p.conversation_id, p.participant_id AS id,
               coalesce(a.name, pr.display_name, p.display_name) AS display_name,
               pr.handle, pr.avatar_url
        FROM participants p
        LEFT JOIN profiles pr ON pr.principal_id = p.participant_id
        LEFT JOIN agents a ON a.agent_id = p.participant_id
        WHERE p.conversation_id = ANY($1) AND p.participant_type = 'agent'
        ORDER BY p.conversation_id, p.joined_at, p.participant_id
        "#,
    )
    .bind(conversations)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.conversation_id, r.profile.into()))
        .collect())
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    id: String,
    display_name: Option<String>,
    handle: Option<String>,
    avatar_url: Option<String>,
}

impl From<ProfileRow> for Profile {
    fn from(r: ProfileRow) -> Self {
        Self {
            handle: r.handle.unwrap_or_else(|| r.id.clone()),
            display_name: r.display_name.unwrap_or_else(|| r.id.clone()),
            avatar_url: r.avatar_url,
            user_id: r.id,
        }
    }
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    conversation_id: uuid::Uuid,
    #[sqlx(flatten)]
    profile: ProfileRow,
}
