//! Conversation analytics, computed in SQL over the messages in a date range.
//!
//! A *response* is a message whose previous message (by `seq`, within the range) came
//! from someone else; its response time is the gap between the two. Deleted messages
//! are left out of every figure.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{access::Access, validate};
use crate::{
    auth::Principal,
    error::{AppError, AppResult},
    state::AppState,
};

/// Most buckets one timeline may have (a little over a year of hours).
pub const MAX_BUCKETS: i64 = 10_000;

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// `hour` or `day` (default), in UTC.
    pub bucket: Option<String>,
    /// Only messages at or after this instant.
    pub start_date: Option<DateTime<Utc>>,
    /// Only messages at or before this instant.
    pub end_date: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ParticipantStats {
    pub message_count: i64,
    pub first_message_at: DateTime<Utc>,
    pub last_message_at: DateTime<Utc>,
    /// Mean time from another participant's message to this participant's reply;
    /// `null` when they never replied to anyone.
    pub avg_response_ms: Option<f64>,
    /// Replies counted in `avg_response_ms`.
    pub response_count: i64,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Bucket {
    pub bucket_start: DateTime<Utc>,
    pub message_count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Analytics {
    pub conversation_id: Uuid,
    pub message_count: i64,
    pub participant_count: usize,
    pub first_message_at: Option<DateTime<Utc>>,
    pub last_message_at: Option<DateTime<Utc>>,
    /// Mean over every response in the range.
    pub avg_response_ms: Option<f64>,
    /// Keyed by sender id.
    pub participant_stats: BTreeMap<String, ParticipantStats>,
    /// `hour` or `day`.
    pub bucket: String,
    /// Every bucket from the range start (or the first message) to the range end (or the
    /// last message), empty ones included, oldest first.
    pub activity_timeline: Vec<Bucket>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct SenderRow {
    sender_id: String,
    message_count: i64,
    first_message_at: DateTime<Utc>,
    last_message_at: DateTime<Utc>,
    response_count: i64,
    response_ms_total: Option<f64>,
}

fn mean(total: Option<f64>, count: i64) -> Option<f64> {
    match (total, count) {
        (Some(t), n) if n > 0 => Some((t / n as f64 * 1000.0).round() / 1000.0),
        _ => None,
    }
}

/// The messages an analytics query covers: `$1` conversation, `$2`/`$3` the date range.
macro_rules! in_range {
    () => {
        r#"
        FROM messages
        WHERE conversation_id = $1 AND deleted_at IS NULL
          AND ($2::timestamptz IS NULL OR created_at >= $2)
          AND ($3::timestamptz IS NULL OR created_at <= $3)
        "#
    };
}

pub async fn analytics(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    q: AnalyticsQuery,
) -> AppResult<Analytics> {
    let bucket = q.bucket.as_deref().unwrap_or("day");
    validate::one_of("bucket", bucket, &["hour", "day"])?;
    validate::date("start_date", q.start_date.as_ref())?;
    validate::date("end_date", q.end_date.as_ref())?;
    // A range that ends before it starts is empty, as in history (not an error: each
    // date is valid on its own).
    let access = Access::load(&state.db, principal, id).await?;

    let senders: Vec<SenderRow> = sqlx::query_as(concat!(
        r#"
        WITH ranged AS (
            SELECT sender_id, created_at,
                   lag(sender_id) OVER (ORDER BY seq) AS previous_sender,
                   lag(created_at) OVER (ORDER BY seq) AS previous_at
        "#,
        in_range!(),
        r#"
        )
        SELECT sender_id,
               count(*) AS message_count,
               min(created_at) AS first_message_at,
               max(created_at) AS last_message_at,
               count(*) FILTER (WHERE previous_sender <> sender_id) AS response_count,
               sum(extract(epoch FROM created_at - previous_at)::float8 * 1000)
                   FILTER (WHERE previous_sender <> sender_id) AS response_ms_total
        FROM ranged
        GROUP BY sender_id
        "#
    ))
    .bind(access.conversation_id)
    .bind(q.start_date)
    .bind(q.end_date)
    .fetch_all(&state.db)
    .await?;

    let counted: Vec<Bucket> = sqlx::query_as(concat!(
        "SELECT date_trunc($4, created_at, 'UTC') AS bucket_start, count(*) AS message_count",
        in_range!(),
        "GROUP BY 1 ORDER BY 1"
    ))
    .bind(access.conversation_id)
    .bind(q.start_date)
    .bind(q.end_date)
    .bind(bucket)
    .fetch_all(&state.db)
    .await?;

    let step = if bucket == "hour" {
        TimeDelta::hours(1)
    } else {
        TimeDelta::days(1)
    };
    let activity_timeline = timeline(counted, step, q.start_date, q.end_date)?;

    let message_count = senders.iter().map(|s| s.message_count).sum();
    let responses: i64 = senders.iter().map(|s| s.response_count).sum();
    let response_total = senders
        .iter()
        .filter_map(|s| s.response_ms_total)
        .reduce(|a, b| a + b);
    Ok(Analytics {
        conversation_id: access.conversation_id,
        message_count,
        participant_count: senders.len(),
        first_message_at: senders.iter().map(|s| s.first_message_at).min(),
        last_message_at: senders.iter().map(|s| s.last_message_at).max(),
        avg_response_ms: mean(response_total, responses),
        participant_stats: senders
            .into_iter()
            .map(|s| {
                (
                    s.sender_id,
                    ParticipantStats {
                        message_count: s.message_count,
                        first_message_at: s.first_message_at,
                        last_message_at: s.last_message_at,
                        avg_response_ms: mean(s.response_ms_total, s.response_count),
                        response_count: s.response_count,
                    },
                )
            })
            .collect(),
        bucket: bucket.to_owned(),
        activity_timeline,
        start_date: q.start_date,
        end_date: q.end_date,
    })
}

/// Fills the empty buckets between the range ends (or the first and last counted ones).
fn timeline(
    counted: Vec<Bucket>,
    step: TimeDelta,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> AppResult<Vec<Bucket>> {
    let truncate = |t: DateTime<Utc>| t.duration_trunc(step).unwrap_or(t);
    let first = start
        .map(truncate)
        .or(counted.first().map(|b| b.bucket_start));
    let last = end.map(truncate).or(counted.last().map(|b| b.bucket_start));
    let (Some(mut first), Some(mut last)) = (first, last) else {
        return Ok(Vec::new());
    };
    let mut buckets = (last - first).num_seconds() / step.num_seconds() + 1;
    if buckets > MAX_BUCKETS {
        // A range far wider than the conversation (year 1 to 9999, say): no message can
        // lie outside the counted ones or after now, so those buckets are trimmed rather
        // than refused. Only a conversation that really spans more buckets is a 400.
        let now = truncate(Utc::now());
        let lo = counted.first().map_or(now, |b| b.bucket_start.min(now));
        let hi = counted.last().map_or(now, |b| b.bucket_start.max(now));
        first = first.max(lo);
        last = last.min(hi);
        buckets = (last - first).num_seconds() / step.num_seconds() + 1;
    }
    if buckets > MAX_BUCKETS {
        return Err(AppError::invalid_field(
            "bucket",
            "the range holds more than 10000 buckets; narrow start_date/end_date or use bucket=day",
        ));
    }
    let mut counted = counted.into_iter().peekable();
    let mut out = Vec::with_capacity(usize::try_from(buckets.max(0)).unwrap_or(0));
    let mut at = first;
    while at <= last {
        let message_count = counted
            .next_if(|b| b.bucket_start == at)
            .map_or(0, |b| b.message_count);
        out.push(Bucket {
            bucket_start: at,
            message_count,
        });
        at += step;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn fills_empty_buckets_between_the_ends() {
        let counted = vec![
            Bucket {
                bucket_start: at("2026-01-01T10:00:00Z"),
                message_count: 2,
            },
            Bucket {
                bucket_start: at("2026-01-01T13:00:00Z"),
                message_count: 1,
            },
        ];
        let t = timeline(
            counted,
            TimeDelta::hours(1),
            Some(at("2026-01-01T09:30:00Z")),
            None,
        )
        .unwrap_or_default();
        let counts: Vec<i64> = t.iter().map(|b| b.message_count).collect();
        assert_eq!(counts, vec![0, 2, 0, 0, 1]);
        assert_eq!(t[0].bucket_start, at("2026-01-01T09:00:00Z"));
    }

    #[test]
    fn trims_empty_centuries_but_refuses_a_conversation_spanning_too_many_buckets() {
        let one = |t: &str| Bucket {
            bucket_start: at(t),
            message_count: 1,
        };
        let trimmed = timeline(
            vec![one("2026-01-01T00:00:00Z")],
            TimeDelta::days(1),
            Some(at("0001-01-01T00:00:00Z")),
            Some(at("9999-12-31T00:00:00Z")),
        )
        .unwrap_or_default();
        assert_eq!(
            trimmed.first().map(|b| b.bucket_start),
            Some(at("2026-01-01T00:00:00Z"))
        );
        assert!(trimmed.len() < 10_000);
        let r = timeline(
            vec![one("2020-01-01T00:00:00Z"), one("2026-01-01T00:00:00Z")],
            TimeDelta::hours(1),
            Some(at("2020-01-01T00:00:00Z")),
            Some(at("2026-01-01T00:00:00Z")),
        );
        assert!(r.is_err());
    }
}
