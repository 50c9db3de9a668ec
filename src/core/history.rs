//! Message history pages.
//!
//! Without filters, `seq` being gapless turns any offset or cursor into a `seq` range, so
//! a page costs the same at offset 0 and offset 100,000. Sender or date filters fall back
//! to an index scan with `LIMIT/OFFSET`.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::{
    Page,
    access::Access,
    messages::{Message, Row, message_select},
    validate,
};
use crate::{auth::Principal, error::AppResult, state::AppState};

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// 1..=100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Messages to skip, counted back from the newest (forward from `after_seq` when given).
    #[param(minimum = 0, maximum = 1000000000)]
    pub offset: Option<i64>,
    /// Only messages with `seq` below this.
    #[param(minimum = 0)]
    pub before_seq: Option<i64>,
    /// Only messages with `seq` above this; pages then walk forward (oldest first).
    #[param(minimum = 0)]
    pub after_seq: Option<i64>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    /// Only messages of this sender.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub sender_filter: Option<String>,
}

/// The `seq` window of one unfiltered page, computed from the conversation's `last_seq`.
#[derive(Debug, PartialEq, Eq)]
struct Window {
    lo: i64,
    hi: i64,
    total: i64,
}

fn window(last_seq: i64, q: &HistoryQuery, limit: i64, offset: i64) -> Window {
    let upper = q.before_seq.map_or(last_seq, |b| (b - 1).min(last_seq));
    let lower = q.after_seq.map_or(1, |a| a.saturating_add(1).max(1));
    let total = (upper - lower + 1).max(0);
    if q.after_seq.is_some() {
        let lo = lower.saturating_add(offset);
        Window {
            lo,
            hi: lo.saturating_add(limit - 1).min(upper),
            total,
        }
    } else {
        let hi = upper.saturating_sub(offset);
        Window {
            lo: hi.saturating_sub(limit - 1).max(lower),
            hi,
            total,
        }
    }
}

/// The filters of a filtered history page: `$1` conversation, `$2` before, `$3` after,
/// `$4`/`$5` date range, `$6` sender.
macro_rules! filtered_where {
    () => {
        r#"
        WHERE m.conversation_id = $1
          AND ($2::bigint IS NULL OR m.seq < $2)
          AND ($3::bigint IS NULL OR m.seq > $3)
          AND ($4::timestamptz IS NULL OR m.created_at >= $4)
          AND ($5::timestamptz IS NULL OR m.created_at <= $5)
          AND ($6::text IS NULL OR m.sender_id = $6)
        "#
    };
}

pub async fn history(
    state: &AppState,
    principal: &Principal,
    conversation_id: Uuid,
    q: HistoryQuery,
) -> AppResult<Page<Message>> {
    let limit = validate::limit(q.limit, 50, 100)?;
    let offset = validate::offset(q.offset)?;
    for (field, v) in [("before_seq", q.before_seq), ("after_seq", q.after_seq)] {
        if v.is_some_and(|v| v < 0) {
            return Err(crate::error::AppError::invalid_field(
                field,
                "must not be negative",
            ));
        }
    }
    if let Some(s) = &q.sender_filter {
        validate::id("sender_filter", s)?;
    }
    validate::date("start_date", q.start_date.as_ref())?;
    validate::date("end_date", q.end_date.as_ref())?;
    let access = Access::load(&state.db, principal, conversation_id).await?;
    let mut conn = state.db.acquire().await?;
    let forward = q.after_seq.is_some();

    let filtered = q.sender_filter.is_some() || q.start_date.is_some() || q.end_date.is_some();
    let (rows, total): (Vec<Row>, i64) = if !filtered {
        // `last_seq` came with the access check: one query fewer per page.
        let w = window(access.last_seq, &q, limit, offset);
        let rows = if w.lo > w.hi {
            vec![]
        } else {
            sqlx::query_as(concat!(
                message_select!(),
                "WHERE m.conversation_id = $1 AND m.seq BETWEEN $2 AND $3 ORDER BY m.seq"
            ))
            .bind(access.conversation_id)
            .bind(w.lo)
            .bind(w.hi)
            .fetch_all(&mut *conn)
            .await?
        };
        (rows, w.total)
    } else {
        let mut rows: Vec<Row> = sqlx::query_as(concat!(
            message_select!(),
            filtered_where!(),
            r#"
            ORDER BY CASE WHEN $7 THEN m.seq ELSE -m.seq END
            LIMIT $8 OFFSET $9
            "#
        ))
        .bind(access.conversation_id)
        .bind(q.before_seq)
        .bind(q.after_seq)
        .bind(q.start_date)
        .bind(q.end_date)
        .bind(&q.sender_filter)
        .bind(forward)
        .bind(limit)
        .bind(offset)
        .fetch_all(&mut *conn)
        .await?;
        if !forward {
            rows.reverse();
        }
        let (total,): (i64,) = sqlx::query_as(concat!(
            "SELECT count(*) FROM messages m",
            filtered_where!()
        ))
        .bind(access.conversation_id)
        .bind(q.before_seq)
        .bind(q.after_seq)
        .bind(q.start_date)
        .bind(q.end_date)
        .bind(&q.sender_filter)
        .fetch_one(&mut *conn)
        .await?;
        (rows, total)
    };
    let items = rows.into_iter().map(Message::from).collect();
    Ok(Page::new(items, total, limit, offset))
}

/// Every message after `since_seq` (gap fill after a reconnect), oldest first, at most `max`.
pub async fn since(
    state: &AppState,
    conversation_id: Uuid,
    since_seq: i64,
    max: i64,
) -> AppResult<Vec<Message>> {
    let rows: Vec<Row> = sqlx::query_as(concat!(
        message_select!(),
        "WHERE m.conversation_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3"
    ))
    .bind(conversation_id)
    .bind(since_seq)
    .bind(max)
    .fetch_all(&state.db)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// A page read by timestamp cursors (seed 001's `before`/`after`).
pub struct TimePage {
    /// Oldest first; deleted messages are left out.
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// History by time: with `after`, the oldest `limit` messages sent after it (paging
/// forward); otherwise the newest `limit` before `before` (or now). Both bounds are
/// exclusive. Messages committed together share a timestamp, so a page never ends inside
/// such a group: it takes the whole group, and the next cursor skips nothing.
pub async fn by_time(
    state: &AppState,
    principal: &Principal,
    conversation_id: Uuid,
    before: Option<DateTime<Utc>>,
    after: Option<DateTime<Utc>>,
    limit: Option<i64>,
) -> AppResult<TimePage> {
    let limit = validate::limit(limit, 50, 100)?;
    validate::date("before", before.as_ref())?;
    validate::date("after", after.as_ref())?;
    let access = Access::load(&state.db, principal, conversation_id).await?;
    let forward = after.is_some();
    let mut conn = state.db.acquire().await?;
    let page: Vec<Row> = sqlx::query_as(concat!(
        message_select!(),
        r#"
        WHERE m.conversation_id = $1 AND m.deleted_at IS NULL
          AND ($2::timestamptz IS NULL OR m.created_at < $2)
          AND ($3::timestamptz IS NULL OR m.created_at > $3)
        ORDER BY CASE WHEN $4 THEN m.created_at END, CASE WHEN $4 THEN m.seq END,
                 m.created_at DESC, m.seq DESC
        LIMIT $5
        "#
    ))
    .bind(access.conversation_id)
    .bind(before)
    .bind(after)
    .bind(forward)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?;
    let mut rows = page;
    let mut has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    if has_more && let Some(edge) = rows.last() {
        // The rest of the edge's timestamp group, so the next cursor skips none of it.
        let (edge_at, edge_seq) = (edge.created_at, edge.seq);
        let rest: Vec<Row> = sqlx::query_as(concat!(
            message_select!(),
            r#"
            WHERE m.conversation_id = $1 AND m.deleted_at IS NULL AND m.created_at = $2
              AND CASE WHEN $3 THEN m.seq > $4 ELSE m.seq < $4 END
            ORDER BY CASE WHEN $3 THEN m.seq ELSE -m.seq END
            "#
        ))
        .bind(access.conversation_id)
        .bind(edge_at)
        .bind(forward)
        .bind(edge_seq)
        .fetch_all(&mut *conn)
        .await?;
        rows.extend(rest);
        // Anything beyond the group, within the window?
        let (more,): (bool,) = sqlx::query_as(
            r#"
            SELECT EXISTS (SELECT 1 FROM messages m
                WHERE m.conversation_id = $1 AND m.deleted_at IS NULL
                  AND ($2::timestamptz IS NULL OR m.created_at < $2)
                  AND ($3::timestamptz IS NULL OR m.created_at > $3)
                  AND CASE WHEN $4 THEN m.created_at > $5 ELSE m.created_at < $5 END)
            "#,
        )
        .bind(access.conversation_id)
        .bind(before)
        .bind(after)
        .bind(forward)
        .bind(edge_at)
        .fetch_one(&mut *conn)
        .await?;
        has_more = more;
    }
    if !forward {
        rows.reverse();
    }
    Ok(TimePage {
        messages: rows.into_iter().map(Message::from).collect(),
        has_more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(before: Option<i64>, after: Option<i64>) -> HistoryQuery {
        HistoryQuery {
            before_seq: before,
            after_seq: after,
            ..Default::default()
        }
    }

    #[test]
    fn newest_page_by_default() {
        assert_eq!(
            window(250, &q(None, None), 50, 0),
            Window {
                lo: 201,
                hi: 250,
                total: 250
            }
        );
        assert_eq!(
            window(250, &q(None, None), 50, 200),
            Window {
                lo: 1,
                hi: 50,
                total: 250
            }
        );
        assert_eq!(
            window(250, &q(None, None), 50, 230),
            Window {
                lo: 1,
                hi: 20,
                total: 250
            }
        );
    }

    #[test]
    fn offset_past_the_start_is_empty() {
        let w = window(10, &q(None, None), 50, 20);
        assert!(w.lo > w.hi);
    }

    #[test]
    fn cursors_bound_the_range() {
        assert_eq!(
            window(250, &q(Some(101), None), 50, 0),
            Window {
                lo: 51,
                hi: 100,
                total: 100
            }
        );
        assert_eq!(
            window(250, &q(None, Some(240)), 50, 0),
            Window {
                lo: 241,
                hi: 250,
                total: 10
            }
        );
        assert_eq!(
            window(250, &q(Some(11), Some(0)), 50, 0),
            Window {
                lo: 1,
                hi: 10,
                total: 10
            }
        );
    }
}
