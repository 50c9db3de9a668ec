//! `adapters`: what the seed systems' routes cost next to the v1 API on the same core.
//! Sends through REST v1, the General Bots adapter and the messaging adapter (each row
//! its own closed loop, one conversation per worker), then the two bulk paths: seed
//! 003's migration (a `messages` array per conversation) and v1 `import`.
//!
//! Seed limits are per user (General Bots: 60 messages a minute), so the General Bots and
//! CRUD rows call as service principals, as a bridge or a migration job would; the
//! server's own `RATE_LIMIT_PER_MINUTE` still applies and should be raised for the run.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{
    Ctx,
    stats::{Latency, Row},
};

/// Concurrent senders of each send row.
const SENDERS: usize = 32;
/// Messages per seed 003 conversation, and concurrent migration writers.
const TRANSCRIPT: usize = 50;
const MIGRATORS: usize = 8;
/// Messages per import call, and concurrent importers.
const IMPORT_BATCH: usize = 1000;
const IMPORTERS: usize = 4;

fn url(ctx: &Ctx, prefix: &str, path: &str) -> String {
    format!("{}{prefix}{path}", ctx.args.url.trim_end_matches('/'))
}

fn service_token(ctx: &Ctx, sub: &str) -> String {
    ctx.token_with(json!({"sub": sub, "name": sub, "kind": "service"}))
}

/// POSTs `body` with `token`; the decoded answer, or an error naming the route.
async fn post(ctx: &Ctx, token: &str, url: &str, body: &Value) -> anyhow::Result<Value> {
    let res = ctx
        .http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = res.status();
    let answer: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status} {answer}");
    }
    Ok(answer)
}

/// One worker's fixed part: its token and where it posts.
struct Worker {
    token: String,
    url: String,
}

/// Runs `workers` closed loops for the scenario's duration; `body(worker, k)` is the k-th
/// request body and the number of messages it carries.
async fn drive(
    ctx: &Ctx,
    name: &str,
    workers: Vec<Worker>,
    duration: Duration,
    body: impl Fn(usize, u64) -> (Value, u64) + Send + Sync + 'static,
) -> Row {
    let body = Arc::new(body);
    let started = Instant::now();
    let until = started + duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(w, worker)| {
            let (ctx, body) = (ctx.clone(), body.clone());
            tokio::spawn(async move {
                let (mut latency, mut messages, mut errors) = (Latency::default(), 0u64, 0u64);
                let mut first_error = None;
                let mut k = 0;
                while Instant::now() < until {
                    let (payload, n) = body(w, k);
                    k += 1;
                    let t = Instant::now();
                    match post(&ctx, &worker.token, &worker.url, &payload).await {
                        Ok(_) => {
                            latency.record(t.elapsed());
                            messages += n;
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (latency, messages, errors, first_error)
            })
        })
        .collect();
    let mut row = Row::new(name);
    let mut total = 0;
    let count = tasks.len();
    for task in tasks {
        match task.await {
            Ok((latency, n, errors, first_error)) => {
                row.ack.merge(&latency);
                total += n;
                row.errors += errors;
                if let Some(e) = first_error {
                    eprintln!("   {name}: {e:#}");
                }
            }
            Err(e) => {
                row.errors += 1;
                eprintln!("   {name}: worker failed: {e}");
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    row.throughput = format!("{:.0} msg/s", total as f64 / secs);
    row.rss = ctx.rss();
    row.notes = format!("{count} concurrent; latency is per request");
    row
}

fn text(w: usize, k: u64) -> String {
    format!("adapter bench message {k} from worker {w}")
}

pub async fn adapters(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let run = &ctx.run;
    let duration = ctx.args.duration;
    let bulk_duration = duration.min(Duration::from_secs(10));
    let mut rows = Vec::new();

    // REST v1: each worker a user in its own conversation.
    let mut workers = Vec::new();
    for w in 0..SENDERS {
        let me = format!("{run}-v1-{w}");
        let id = ctx.conversation(&me, &[]).await?;
        workers.push(Worker {
            token: ctx.token(&me),
            url: ctx.api(&format!("/messages/conversations/{id}")),
        });
    }
    let mut row = drive(
        ctx,
        "send: REST v1 (baseline)",
        workers,
        duration,
        |w, k| (json!({ "text": text(w, k) }), 1),
    )
    .await;
    row.notes = format!("POST /messages/conversations/{{id}}; {}", row.notes);
    rows.push(row);

    // General Bots: a service talking to a bot, through the seed's routes.
    let prefix = "/compat/general-bots";
    let mut workers = Vec::new();
    for w in 0..SENDERS {
        let token = service_token(ctx, &format!("{run}-gb-{w}"));
        let started = post(
            ctx,
            &token,
            &url(ctx, prefix, "/api/conversations/start"),
            &json!({ "bot_id": format!("{run}-bot") }),
        )
        .await?;
        let id = started["conversation_id"]
            .as_str()
            .context("conversation_id")?
            .to_owned();
        workers.push(Worker {
            token,
            url: url(ctx, prefix, &format!("/api/conversations/{id}/messages")),
        });
    }
    let mut row = drive(
        ctx,
        "send: General Bots adapter",
        workers,
        duration,
        |w, k| (json!({ "content": text(w, k) }), 1),
    )
    .await;
    row.notes = format!("service callers; {}", row.notes);
    rows.push(row);

    // Avee messaging: a user writing to another user's direct conversation.
    let prefix = "/compat/messaging";
    let mut workers = Vec::new();
    for w in 0..SENDERS {
        let token = ctx.token(&format!("{run}-m-{w}"));
        let started = post(
            ctx,
            &token,
            &url(ctx, prefix, "/messaging/conversations"),
            &json!({ "target_user_id": format!("{run}-peer-{w}") }),
        )
        .await?;
        let id = started["id"].as_str().context("id")?.to_owned();
        workers.push(Worker {
            token,
            url: url(
                ctx,
                prefix,
                &format!("/messaging/conversations/{id}/messages"),
            ),
        });
    }
    rows.push(
        drive(ctx, "send: messaging adapter", workers, duration, |w, k| {
            (json!({ "content": text(w, k) }), 1)
        })
        .await,
    );

    // Seed 003 migration: each request a whole localStorage conversation.
    let prefix = "/compat/crud";
    let workers = (0..MIGRATORS)
        .map(|w| Worker {
            token: service_token(ctx, &format!("{run}-migrator-{w}")),
            url: url(ctx, prefix, "/api/conversations"),
        })
        .collect();
    let user = format!("{run}-local-user");
    let base = chrono::Utc::now().timestamp_millis() - 86_400_000;
    let mut row = drive(
        ctx,
        "migrate: CRUD POST, 50-message conversations",
        workers,
        bulk_duration,
        move |w, k| {
            let messages: Vec<Value> = (0..TRANSCRIPT)
                .map(|i| {
                    json!({
                        "role": if i % 2 == 0 { "user" } else { "assistant" },
                        "content": format!("local message {i} of conversation {w}-{k}"),
                        "timestamp": base + (i as i64) * 1000,
                    })
                })
                .collect();
            (
                json!({
                    "userId": user,
                    "id": format!("local-{w}-{k}"),
                    "title": format!("migrated {w}-{k}"),
                    "messages": messages,
                }),
                TRANSCRIPT as u64,
            )
        },
    )
    .await;
    row.notes = format!("service callers with userId; {}", row.notes);
    rows.push(row);

    // v1 import: 1,000 messages per call into each worker's own conversation.
    let mut workers = Vec::new();
    for w in 0..IMPORTERS {
        let me = format!("{run}-importer-{w}");
        let id = ctx.conversation(&me, &[]).await?;
        workers.push(Worker {
            token: ctx.token(&me),
            url: ctx.api(&format!("/conversations/{id}/import")),
        });
    }
    let mut row = drive(
        ctx,
        "import: REST v1, 1,000 messages per call",
        workers,
        bulk_duration,
        move |w, k| {
            let messages: Vec<Value> = (0..IMPORT_BATCH)
                .map(|i| {
                    let n = k * IMPORT_BATCH as u64 + i as u64;
                    json!({
                        "sender_id": if i % 2 == 0 { "alice" } else { "bob" },
                        "text": format!("imported message {n} of worker {w}"),
                        "created_at": chrono::DateTime::from_timestamp_millis(base + n as i64)
                            .unwrap_or_default()
                            .to_rfc3339(),
                        "client_message_id": format!("import-{w}-{n}"),
                    })
                })
                .collect();
            (json!({ "messages": messages }), IMPORT_BATCH as u64)
        },
    )
    .await;
    row.notes = format!("one conversation per importer; {}", row.notes);
    rows.push(row);
    Ok(rows)
}
