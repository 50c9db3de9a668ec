//! Agent responder settings (contract §8): Colloquy answers as the agent through an
//! OpenAI-compatible `/chat/completions`. The runtime is `crate::responder`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::validate;
use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

/// Messages of history a reply sees at most.
pub const MAX_HISTORY: i32 = 100;
const MAX_PROMPT_CHARS: usize = 20_000;

/// A responder as the API shows it: the key is never returned.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Responder {
    pub agent_id: String,
    pub model: String,
    pub system_prompt: String,
    pub temperature: Option<f64>,
    /// Earlier messages sent with each reply's request.
    pub max_history: i32,
    /// The provider's base URL (`…/v1`); `OPENAI_BASE_URL` when absent.
    pub base_url: Option<String>,
    /// Whether a key of its own is stored (else `OPENAI_API_KEY` is used).
    pub has_api_key: bool,
    pub enabled: bool,
    pub updated_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct SetResponder {
    #[schema(min_length = 1, max_length = 200)]
    pub model: String,
    #[serde(default)]
    #[schema(max_length = 20000)]
    pub system_prompt: Option<String>,
    /// 0 to 2.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    /// 0 to 100, default 20.
    #[serde(default, deserialize_with = "validate::whole_number")]
    #[schema(minimum = 0, maximum = 100)]
    pub max_history: Option<i64>,
    #[schema(max_length = 2048)]
    pub base_url: Option<String>,
    /// Stored, used for this agent's requests, never returned nor logged.
    #[schema(max_length = 1000)]
    pub api_key: Option<String>,
    /// Default `true`; `false` keeps the settings but stops answering.
    pub enabled: Option<bool>,
}

const COLUMNS: &str = "SELECT agent_id, model, system_prompt, temperature, max_history, base_url, \
     api_key IS NOT NULL AS has_api_key, enabled, updated_by, created_at, updated_at \
     FROM agent_responders";

/// The agent itself, its owner, an admin or a service.
async fn require_control(state: &AppState, principal: &Principal, agent_id: &str) -> AppResult<()> {
    validate::id("agent_id", agent_id)?;
    if principal.is_privileged()
        || super::insights::controls_agent(state, principal, agent_id).await?
    {
        return Ok(());
    }
    Err(AppError::Forbidden(format!(
        "only the agent {agent_id}, its owner, an admin or a service may configure its responder"
    )))
}

pub async fn set(
    state: &AppState,
    principal: &Principal,
    agent_id: &str,
    input: SetResponder,
) -> AppResult<(Responder, bool)> {
    require_control(state, principal, agent_id).await?;
    if input.model.trim().is_empty() {
        return Err(AppError::invalid_field("model", "must not be blank"));
    }
    validate::max_chars("model", &input.model, 200)?;
    if let Some(p) = &input.system_prompt {
        validate::max_chars("system_prompt", p, MAX_PROMPT_CHARS)?;
    }
    if let Some(t) = input.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(AppError::invalid_field("temperature", "must be 0 to 2"));
    }
    let max_history = validate::within("max_history", input.max_history, 0, MAX_HISTORY)?;
    if let Some(key) = &input.api_key {
        validate::max_chars("api_key", key, 1000)?;
        if key.chars().any(char::is_control) {
            return Err(AppError::invalid_field(
                "api_key",
                "must not contain control characters",
            ));
        }
    }
    let base_url = match &input.base_url {
        Some(url) => {
            validate::max_chars("base_url", url, 2048)?;
            let parsed = state
                .outbound
                .check_url(url)
                .map_err(|why| AppError::invalid_field("base_url", why))?;
            state
                .outbound
                .check_resolved(&parsed)
                .await
                .map_err(|why| AppError::invalid_field("base_url", why))?;
            Some(url.trim_end_matches('/').to_owned())
        }
        None => None,
    };
    #[derive(sqlx::FromRow)]
    struct Upserted {
        is_new: bool,
    }
    let row: Upserted = sqlx::query_as(
        r#"
        INSERT INTO agent_responders
            (agent_id, model, system_prompt, temperature, max_history, base_url, api_key, enabled, updated_by)
        VALUES ($1, $2, coalesce($3, ''), $4, coalesce($5, 20), $6, $7, coalesce($8, true), $9)
        ON CONFLICT (agent_id) DO UPDATE SET
            model = EXCLUDED.model, system_prompt = EXCLUDED.system_prompt,
            temperature = EXCLUDED.temperature, max_history = EXCLUDED.max_history,
            base_url = EXCLUDED.base_url,
            -- A stored key follows its provider: a new base_url without a key drops it.
            api_key = CASE WHEN $7::text IS NOT NULL THEN $7
                           WHEN EXCLUDED.base_url IS NOT DISTINCT FROM agent_responders.base_url
                           THEN agent_responders.api_key END,
            enabled = EXCLUDED.enabled, updated_by = EXCLUDED.updated_by, updated_at = now()
        RETURNING (xmax = 0) AS is_new
        "#,
    )
    .bind(agent_id)
    .bind(input.model.trim())
    .bind(&input.system_prompt)
    .bind(input.temperature)
    .bind(max_history)
    .bind(&base_url)
    .bind(&input.api_key)
    .bind(input.enabled)
    .bind(&principal.id)
    .fetch_one(&state.db)
    .await?;
    state.responders.changed();
    Ok((fetch(state, agent_id).await?, row.is_new))
}

async fn fetch(state: &AppState, agent_id: &str) -> AppResult<Responder> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{COLUMNS} WHERE agent_id = $1"
    )))
    .bind(agent_id)
    .fetch_optional(&state.db)
    .await?
    .ok_or(AppError::NotFound("responder"))
}

pub async fn get(state: &AppState, principal: &Principal, agent_id: &str) -> AppResult<Responder> {
    require_control(state, principal, agent_id).await?;
    fetch(state, agent_id).await
}

pub async fn delete(state: &AppState, principal: &Principal, agent_id: &str) -> AppResult<()> {
    require_control(state, principal, agent_id).await?;
    let gone = sqlx::query("DELETE FROM agent_responders WHERE agent_id = $1")
        .bind(agent_id)
        .execute(&state.db)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(AppError::NotFound("responder"));
    }
    state.responders.changed();
    Ok(())
}

/// When an agent changes owner, a responder its former owner configured stops (its
/// provider and key were theirs) until the new owner, the agent or an admin sets it again.
pub async fn disable_for_new_owner(
    db: impl sqlx::PgExecutor<'_>,
    agent_id: &str,
    owner_id: &str,
) -> AppResult<()> {
    sqlx::query(
        "UPDATE agent_responders SET enabled = false, updated_at = now()
         WHERE agent_id = $1 AND enabled AND updated_by <> $1 AND updated_by <> $2",
    )
    .bind(agent_id)
    .bind(owner_id)
    .execute(db)
    .await?;
    Ok(())
}
