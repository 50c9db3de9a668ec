//! Conversation summaries, cached per `covered_through_seq`.
//!
//! A cached summary is served while the conversation's `last_seq` has not moved past it
//! and nothing it covers was edited or deleted (a trigger drops the row then). A summary
//! that had to fall back from the configured provider is retried after
//! [`FALLBACK_RETRY`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::Access;
use crate::{
    auth::Principal,
    config::SummaryProvider,
    error::AppResult,
    state::AppState,
    summarize::{self, Digest, Sentiment, Utterance},
};

/// The newest messages a summary reads.
pub const WINDOW: i64 = 400;
/// How long a fallback summary is served before the provider is tried again.
const FALLBACK_RETRY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

pub const METHOD_EXTRACTIVE: &str = "extractive";
pub const METHOD_OPENAI: &str = "openai";
pub const METHOD_FALLBACK: &str = "extractive_fallback";

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    pub summary: String,
    /// Up to 5 of the conversation's most central sentences, in the order they were said
    /// (or the model's key points with `method: openai`).
    pub key_points: Vec<String>,
    /// Lexicon-based (VADER) over the summarised messages.
    pub sentiment: Sentiment,
    /// Mean VADER compound score, -1 (negative) … 1 (positive).
    pub sentiment_score: f64,
    /// `extractive`, `openai`, or `extractive_fallback` when the OpenAI-compatible
    /// provider failed (see `fallback_reason`).
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// Messages read: the newest (up to 400) undeleted ones with text.
    pub message_count: usize,
    /// The conversation's `last_seq` when the summary was made.
    pub covered_through_seq: i64,
    pub generated_at: DateTime<Utc>,
    /// Whether this answer came from the cache.
    #[serde(default)]
    pub cached: bool,
}

#[derive(sqlx::FromRow)]
struct Cached {
    covered_through_seq: i64,
    method: String,
    body: sqlx::types::Json<Summary>,
    generated_at: DateTime<Utc>,
}

fn provider_name(p: SummaryProvider) -> &'static str {
    match p {
        SummaryProvider::Extractive => METHOD_EXTRACTIVE,
        SummaryProvider::Openai => METHOD_OPENAI,
    }
}

pub async fn summary(state: &AppState, principal: &Principal, id: Uuid) -> AppResult<Summary> {
    let access = Access::load(&state.db, principal, id).await?;
    let provider = provider_name(state.config.summary_provider);
    let last_seq = access.last_seq;
    let cached: Option<Cached> = sqlx::query_as(
        "SELECT covered_through_seq, method, body, generated_at
         FROM conversation_summaries WHERE conversation_id = $1 AND provider = $2",
    )
    .bind(access.conversation_id)
    .bind(provider)
    .fetch_optional(&state.db)
    .await?;
    if let Some(c) = cached {
        let retry_due = c.method == METHOD_FALLBACK && Utc::now() - c.generated_at > FALLBACK_RETRY;
        if c.covered_through_seq == last_seq && !retry_due {
            let mut summary = c.body.0;
            summary.cached = true;
            return Ok(summary);
        }
    }

    let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
        r#"
        SELECT sender_id, sender_name, text FROM (
            SELECT seq, sender_id, sender_name, text FROM messages
            WHERE conversation_id = $1 AND seq <= $2 AND deleted_at IS NULL AND text <> ''
            ORDER BY seq DESC LIMIT $3
        ) newest ORDER BY seq
        "#,
    )
    .bind(access.conversation_id)
    .bind(last_seq)
    .bind(WINDOW)
    .fetch_all(&state.db)
    .await?;
    let messages: Vec<Utterance> = rows
        .into_iter()
        .map(|(id, name, text)| Utterance {
            sender: name.filter(|n| !n.trim().is_empty()).unwrap_or(id),
            text,
        })
        .collect();

    let summary = produce(state, messages, last_seq).await;
    sqlx::query(
        r#"
        INSERT INTO conversation_summaries
            (conversation_id, covered_through_seq, provider, method, body, generated_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (conversation_id) DO UPDATE SET
            covered_through_seq = excluded.covered_through_seq, provider = excluded.provider,
            method = excluded.method, body = excluded.body, generated_at = excluded.generated_at
        "#,
    )
    .bind(access.conversation_id)
    .bind(summary.covered_through_seq)
    .bind(provider)
    .bind(&summary.method)
    .bind(sqlx::types::Json(&summary))
    .bind(summary.generated_at)
    .execute(&state.db)
    .await?;
    Ok(summary)
}

/// Runs the configured summariser; CPU work runs off the async workers.
async fn produce(state: &AppState, messages: Vec<Utterance>, last_seq: i64) -> Summary {
    let count = messages.len();
    let model = match (&state.summariser, messages.is_empty()) {
        (Some(client), false) => Some(client.summarise(&messages).await),
        _ => None,
    };
    let digest = tokio::task::spawn_blocking(move || summarize::extractive(&messages))
        .await
        .unwrap_or_else(|_| Digest {
            summary: format!("{count} messages."),
            key_points: Vec::new(),
            sentiment: Sentiment::Neutral,
            sentiment_score: 0.0,
        });
    let (method, fallback_reason, summary, key_points) = match model {
        None if state.summariser.is_some() => {
            (METHOD_OPENAI, None, digest.summary, digest.key_points)
        }
        None => (METHOD_EXTRACTIVE, None, digest.summary, digest.key_points),
        Some(Ok(m)) => (METHOD_OPENAI, None, m.summary, m.key_points),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "summary provider failed; serving the extractive summary");
            crate::metrics::summary_fallback();
            (
                METHOD_FALLBACK,
                Some(format!("openai: {e}")),
                digest.summary,
                digest.key_points,
            )
        }
    };
    Summary {
        summary,
        key_points,
        sentiment: digest.sentiment,
        sentiment_score: digest.sentiment_score,
        method: method.into(),
        fallback_reason,
        message_count: count,
        covered_through_seq: last_seq,
        generated_at: Utc::now(),
        cached: false,
    }
}
