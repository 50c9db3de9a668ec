//! Scenarios on stored data: `history` (and the intelligence routes) on a large database,
//! and `limit`, the database's own insert ceiling.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, stream};
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::{
    Ctx,
    stats::{Latency, Row},
};

const OWNER: &str = "bench-owner";
const READER: &str = "bench-reader";
const TOPICS: &[&str] = &[
    "invoice",
    "deployment",
    "database",
    "release",
    "customer",
    "meeting",
    "budget",
    "roadmap",
    "incident",
    "design",
    "contract",
    "pipeline",
    "search",
    "billing",
    "migration",
    "support",
    "schedule",
    "feedback",
    "security",
    "training",
    "hiring",
    "dashboard",
    "latency",
    "backup",
    "onboarding",
    "pricing",
    "workshop",
    "newsletter",
    "analytics",
    "campaign",
    "inventory",
    "shipping",
    "warranty",
    "forecast",
    "audit",
    "license",
    "refund",
    "upgrade",
    "outage",
    "review",
];

/// A small deterministic generator (xorshift), enough to spread requests.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

static SEED: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

fn rng() -> Rng {
    Rng(SEED.fetch_add(0x2545_F491_4F6C_DD1D, Ordering::Relaxed) | 1)
}

async fn pool(ctx: &Ctx, size: u32) -> anyhow::Result<PgPool> {
    let url = ctx
        .args
        .database_url
        .as_deref()
        .context("--database-url (BENCH_DATABASE_URL) is needed for this scenario")?;
    PgPoolOptions::new()
        .max_connections(size)
        .connect(url)
        .await
        .context("connect to the benchmark database")
}

/// Seeds `conversations × messages` once (kept between runs) and returns the ids.
async fn seed(ctx: &Ctx, db: &PgPool) -> anyhow::Result<Vec<String>> {
    let (convs, msgs) = (ctx.args.history_conversations, ctx.args.history_messages);
    let ready: Vec<(String,)> = sqlx::query_as(
        "SELECT id::text FROM conversations
         WHERE platform = 'websocket' AND platform_conversation_id LIKE 'bench-history-%'
           AND last_seq = $1 ORDER BY platform_conversation_id",
    )
    .bind(msgs)
    .fetch_all(db)
    .await?;
    if ready.len() as i64 == convs {
        eprintln!("   reusing {convs} × {msgs} seeded messages");
        return Ok(ready.into_iter().map(|(id,)| id).collect());
    }
    sqlx::query("DELETE FROM conversations WHERE platform_conversation_id LIKE 'bench-history-%'")
        .execute(db)
        .await?;
    let topics = format!(
        "ARRAY[{}]",
        TOPICS
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let started = Instant::now();
    let statement = format!(
        r#"
        WITH c AS (
            INSERT INTO conversations (id, name, platform, platform_conversation_id, created_by,
                                       message_count, last_seq, last_message_at)
            VALUES (gen_random_uuid(), 'history bench', 'websocket', $1, '{OWNER}', $2, $2, now())
            RETURNING id
        ), p AS (
            INSERT INTO participants (conversation_id, participant_id, role, last_read_seq)
            SELECT c.id, x.pid, x.role, $2 FROM c, (VALUES ('{OWNER}', 'owner'), ('{READER}', 'member')) x(pid, role)
        )
        INSERT INTO messages (id, conversation_id, seq, sender_id, sender_type, text, created_at, updated_at)
        SELECT gen_random_uuid(), c.id, s,
               CASE WHEN s % 2 = 0 THEN '{OWNER}' ELSE '{READER}' END, 'user',
               'message ' || s || ' about the ' || ({topics})[1 + (s * 7) % 40]
                 || ' and the next ' || ({topics})[1 + (s * 13 + 5) % 40]
                 || CASE WHEN s % 10000 = 77 THEN ' zephyrcode' ELSE '' END || '.',
               now() - make_interval(secs => ($2 - s) * 30),
               now() - make_interval(secs => ($2 - s) * 30)
        FROM c, generate_series(1, $2) s
        "#
    );
    for i in 0..convs {
        sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .bind(format!("bench-history-{i:04}"))
            .bind(msgs)
            .execute(db)
            .await?;
        if i % 10 == 9 {
            eprintln!("   seeded {} / {convs} conversations", i + 1);
        }
    }
    sqlx::query("ANALYZE messages").execute(db).await?;
    sqlx::query("ANALYZE conversations").execute(db).await?;
    sqlx::query("ANALYZE participants").execute(db).await?;
    eprintln!(
        "   seeded {} messages in {:.0?}",
        convs * msgs,
        started.elapsed()
    );
    Box::pin(seed(ctx, db)).await
}

/// Runs `requests` GETs produced by `path` on `workers` connections; one row.
async fn measure(
    ctx: &Ctx,
    name: &str,
    requests: usize,
    workers: usize,
    path: impl Fn(&mut Rng) -> String,
) -> Row {
    let mut r = rng();
    let paths: Vec<String> = (0..requests).map(|_| path(&mut r)).collect();
    let started = Instant::now();
    let results: Vec<(Duration, bool)> = stream::iter(paths)
        .map(|p| async move {
            let t = Instant::now();
            let ok = ctx.get(READER, &p).await.is_ok();
            (t.elapsed(), ok)
        })
        .buffer_unordered(workers)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut row = Row::new(name);
    for (d, ok) in &results {
        row.ack.record(*d);
        if !ok {
            row.errors += 1;
        }
    }
    row.throughput = format!("{:.0} req/s", results.len() as f64 / elapsed.as_secs_f64());
    row.rss = ctx.rss();
    row.notes = format!("{} requests, {workers} concurrent", results.len());
    row
}

pub async fn history(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let db = pool(ctx, 4).await?;
    let ids = seed(ctx, &db).await?;
    // Let the write scenarios' aftermath (autovacuum, the GIN pending list, dirty buffers)
    // settle first, so these rows measure reads rather than background maintenance.
    for maintenance in ["VACUUM (ANALYZE) messages", "CHECKPOINT"] {
        if let Err(e) = sqlx::query(maintenance).execute(&db).await {
            eprintln!("   {maintenance} skipped: {e}");
        }
    }
    let msgs = ctx.args.history_messages;
    let n = ctx.args.history_requests;
    let total = ids.len() as i64 * msgs;
    let mut rows = Vec::new();
    let pick = |r: &mut Rng| ids[r.below(ids.len() as u64) as usize].clone();

    let max_offset = (msgs - 50).clamp(0, 10_000) as u64;
    let mut row = measure(ctx, "history: page at offset ≤ 10,000", n, 1, |r| {
        format!(
            "/messages/conversations/{}?limit=50&offset={}",
            pick(r),
            r.below(max_offset + 1)
        )
    })
    .await;
    row.notes = format!("{total} messages in DB; {}", row.notes);
    rows.push(row);
    rows.push(
        measure(ctx, "history: cursor page (before_seq)", n, 1, |r| {
            format!(
                "/messages/conversations/{}?limit=50&before_seq={}",
                pick(r),
                51 + r.below(msgs.max(51) as u64 - 50)
            )
        })
        .await,
    );
    rows.push(
        measure(ctx, "conversation list (limit 50)", n, 1, |_| {
            "/conversations?limit=50".into()
        })
        .await,
    );

    // Intelligence routes on the same data.
    sqlx::query(
        "DELETE FROM conversation_summaries WHERE conversation_id IN
         (SELECT id FROM conversations WHERE platform_conversation_id LIKE 'bench-history-%')",
    )
    .execute(&db)
    .await
    .ok();
    let order: Vec<String> = ids.clone();
    let next = AtomicU64::new(0);
    let mut row = measure(
        ctx,
        "summary, uncached (400 newest msgs)",
        order.len(),
        2,
        |_| {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
            format!("/conversations/{}/summary", order[i % order.len()])
        },
    )
    .await;
    row.notes = format!("each conversation's first call; {}", row.notes);
    rows.push(row);
    rows.push(
        measure(ctx, "summary, cached", n / 2, 4, |r| {
            format!("/conversations/{}/summary", pick(r))
        })
        .await,
    );
    let mut row = measure(ctx, "analytics (10,000-msg conversation)", n / 4, 4, |r| {
        format!(
            "/conversations/{}/analytics?bucket={}",
            pick(r),
            if r.below(2) == 0 { "hour" } else { "day" }
        )
    })
    .await;
    row.notes = format!("{msgs} messages per conversation; {}", row.notes);
    rows.push(row);
    let mut row = measure(
        ctx,
        "search, common word (~5% of messages)",
        n / 10,
        4,
        |r| {
            format!(
                "/messages/search?q={}&limit=20",
                TOPICS[r.below(TOPICS.len() as u64) as usize]
            )
        },
    )
    .await;
    row.notes = format!("ranked over ~{} matches; {}", total / 20, row.notes);
    rows.push(row);
    let mut row = measure(ctx, "search, rare word", n / 4, 4, |_| {
        "/messages/search?q=zephyrcode&limit=20".into()
    })
    .await;
    row.notes = format!("{} matches; {}", ids.len(), row.notes);
    rows.push(row);
    Ok(rows)
}

/// The database's insert ceiling for the same message shape, one per transaction and
/// batched, straight through sqlx.
pub async fn limit(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let workers = ctx.args.limit_concurrency.max(1);
    let db = pool(ctx, u32::try_from(workers + 2).unwrap_or(100)).await?;
    let (conversation,): (uuid::Uuid,) = sqlx::query_as(
        "INSERT INTO conversations (id, name, platform, platform_conversation_id, created_by)
         VALUES (gen_random_uuid(), 'limit bench', 'websocket', $1, 'bench') RETURNING id",
    )
    .bind(format!("bench-limit-{}", ctx.run))
    .fetch_one(&db)
    .await?;
    let duration = ctx.args.duration.min(Duration::from_secs(10));
    let mut rows = Vec::new();

    for (name, batch, concurrency) in [
        ("limit: 1 message per transaction", 1usize, workers),
        ("limit: batched, 100 per transaction", 100, 8.min(workers)),
    ] {
        let started = Instant::now();
        let until = started + duration;
        let tasks: Vec<_> = (0..concurrency)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move {
                    let (mut h, mut rows, mut errors, mut k) = (Latency::default(), 0u64, 0u64, 0i64);
                    let base = (w as i64 + 1) * 1_000_000_000 + if batch > 1 { 500_000_000 } else { 0 };
                    while Instant::now() < until {
                        let seqs: Vec<i64> = (0..batch as i64).map(|i| base + k + i).collect();
                        k += batch as i64;
                        let texts: Vec<String> =
                            seqs.iter().map(|s| format!("bench message {s} t=0")).collect();
                        let cids: Vec<String> = seqs.iter().map(|s| format!("limit-{s}")).collect();
                        let t = Instant::now();
                        let r = sqlx::query(
                            "INSERT INTO messages (id, conversation_id, seq, sender_id, text, client_message_id)
                             SELECT gen_random_uuid(), $1, s, 'bench', t, c
                             FROM unnest($2::bigint[], $3::text[], $4::text[]) AS x(s, t, c)",
                        )
                        .bind(conversation)
                        .bind(&seqs)
                        .bind(&texts)
                        .bind(&cids)
                        .execute(&db)
                        .await;
                        match r {
                            Ok(_) => {
                                h.record(t.elapsed());
                                rows += batch as u64;
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (h, rows, errors)
                })
            })
            .collect();
        let mut row = Row::new(name);
        let mut total = 0;
        for t in tasks {
            let (h, n, e) = t.await?;
            row.ack.merge(&h);
            total += n;
            row.errors += e;
        }
        let secs = started.elapsed().as_secs_f64();
        row.throughput = format!("{:.0} msg/s", total as f64 / secs);
        row.notes = format!("{concurrency} connections; latency is per transaction");
        rows.push(row);
    }
    sqlx::query("DELETE FROM conversations WHERE id = $1")
        .bind(conversation)
        .execute(&db)
        .await?;
    // Leave the table as later scenarios (or the next run) expect it.
    sqlx::query("VACUUM (ANALYZE) messages")
        .execute(&db)
        .await?;
    Ok(rows)
}
