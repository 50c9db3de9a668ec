//! `webhook`: `steady` with one endpoint (run here, on loopback) subscribed to every
//! message; its end-to-end latency is commit → receiver. `responder`: an agent answers
//! through a zero-latency fake provider (run here); the latency is user send → first
//! `messageStream` delta. The server needs `WEBHOOK_ALLOW_PRIVATE=true` for both.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{Ctx, realtime, sio, stats::Latency, stats::Row};

fn admin_token(ctx: &Ctx) -> String {
    ctx.token_with(json!({"sub": format!("{}-admin", ctx.run), "roles": ["admin"]}))
}

async fn admin(
    ctx: &Ctx,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let res = ctx
        .http
        .request(method.clone(), ctx.api(path))
        .bearer_auth(admin_token(ctx))
        .json(&body)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{method} {path}: {status} {body} (is WEBHOOK_ALLOW_PRIVATE=true set on the server?)"
        );
    }
    Ok(body["data"].clone())
}

async fn serve(app: Router) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

#[derive(Default)]
struct Received {
    count: u64,
    requests: u64,
    latency: Latency,
}

/// The one field the receiver reads; the rest is skipped without being kept.
#[derive(serde::Deserialize)]
struct Stamp<'a> {
    occurred_at: &'a str,
}

/// A receiver as cheap as it can be (it shares the machine with the server): takes the
/// event's (or each batched event's) `occurred_at`.
async fn receive(State(got): State<Arc<Mutex<Received>>>, body: Bytes) -> StatusCode {
    let now = chrono::Utc::now();
    let stamps: Vec<Stamp> = if body.first() == Some(&b'[') {
        serde_json::from_slice(&body).unwrap_or_default()
    } else {
        serde_json::from_slice(&body)
            .map(|s| vec![s])
            .unwrap_or_default()
    };
    if let Ok(mut got) = got.lock() {
        got.requests += 1;
        for stamp in stamps {
            let Ok(occurred) = chrono::DateTime::parse_from_rfc3339(stamp.occurred_at) else {
                continue;
            };
            got.count += 1;
            let us = (now - occurred.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(0);
            got.latency.record_us(u64::try_from(us).unwrap_or(0));
        }
    }
    StatusCode::NO_CONTENT
}

/// `steady` with an endpoint on every message: one event per request, or (`batch_size`
/// above 1) batches.
pub async fn webhook(ctx: &Ctx, batch_size: u32) -> anyhow::Result<Row> {
    let got: Arc<Mutex<Received>> = Arc::default();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(got.clone());
    let (addr, receiver) = serve(app).await?;
    let hook = admin(
        ctx,
        reqwest::Method::POST,
        "/webhooks",
        json!({
            "url": format!("http://{addr}/hook"),
            "events": ["message.created"],
            "batch_size": batch_size,
        }),
    )
    .await?;
    let hook_id = hook["id"].as_str().context("webhook id")?.to_owned();
    let mut row = realtime::steady(ctx).await?;
    // Let the queue drain: until nothing has arrived for 2 s.
    let drained_from = Instant::now();
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = got.lock().map(|g| g.count).unwrap_or(0);
        if now == last || drained_from.elapsed() > Duration::from_secs(120) {
            break;
        }
        last = now;
    }
    let _ = admin(
        ctx,
        reqwest::Method::DELETE,
        &format!("/webhooks/{hook_id}"),
        json!({}),
    )
    .await;
    receiver.abort();
    let got = got.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    row.scenario = if batch_size > 1 {
        format!(
            "{} + 1 webhook on every message, batches of ≤ {batch_size}",
            row.scenario
        )
    } else {
        format!("{} + 1 webhook on every message", row.scenario)
    };
    row.notes = format!(
        "{}; webhook: {} delivered in {} requests, commit → receiver p50 {} ms, p99 {} ms, max {} ms",
        row.notes,
        got.count,
        got.requests,
        got.latency.p50(),
        got.latency.p99(),
        got.latency.max()
    );
    Ok(row)
}

/// A provider that answers at once: a role chunk, two content chunks, `[DONE]`.
async fn complete() -> ([(&'static str, &'static str); 1], String) {
    let chunk = |text: &str| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": text}}]})
        )
    };
    let body = format!(
        "data: {}\n\n{}{}data: [DONE]\n\n",
        json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        chunk("Hi"),
        chunk(" there")
    );
    ([("content-type", "text/event-stream")], body)
}

/// Two rows: one conversation asking one question at a time (the latency of a reply on
/// an otherwise quiet server), then 20 at once (the load a server sustains).
pub async fn responder(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for conversations in [1, 20] {
        rows.push(responder_with(ctx, conversations).await?);
    }
    Ok(rows)
}

async fn responder_with(ctx: &Ctx, conversations: usize) -> anyhow::Result<Row> {
    let (addr, provider) =
        serve(Router::new().route("/v1/chat/completions", post(complete))).await?;
    let agent = format!("{}-agent{conversations}", ctx.run);
    admin(
        ctx,
        reqwest::Method::PUT,
        &format!("/agents/{agent}/responder"),
        json!({ "model": "bench", "base_url": format!("http://{addr}/v1"), "max_history": 10 }),
    )
    .await?;
    let mut users = Vec::new();
    for i in 0..conversations {
        let user = format!("{}-ru{conversations}-{i}", ctx.run);
        let data = ctx
            .post(
                &user,
                "/conversations",
                json!({ "participants": [{ "participant_id": agent, "participant_type": "agent" }] }),
            )
            .await?;
        let conv = data["id"].as_str().context("conversation id")?.to_owned();
        let (tx, rx) = mpsc::unbounded_channel::<(String, Instant)>();
        let client = sio::Client::connect(
            &ctx.args.url,
            &ctx.token(&user),
            Box::new(move |name: &str, data: &Value| {
                let first_delta = name == "messageStream" && data["index"] == 0;
                if first_delta || name == "messageComplete" || name == "error" {
                    let _ = tx.send((name.to_owned(), Instant::now()));
                }
            }),
        )
        .await?;
        let ack = client
            .call(
                "join",
                json!({ "conversation_id": conv }),
                Duration::from_secs(10),
            )
            .await?;
        if ack["success"] != true {
            bail!("join: {ack}");
        }
        users.push((client, rx, conv));
    }
    let until = Instant::now() + ctx.args.duration;
    let tasks: Vec<_> = users
        .into_iter()
        .map(|(client, mut rx, conv)| {
            tokio::spawn(async move {
                let mut first = Latency::default();
                let (mut replies, mut errors) = (0u64, 0u64);
                let mut n = 0;
                while Instant::now() < until {
                    n += 1;
                    let sent = Instant::now();
                    let ack = client
                        .call(
                            "chat_message",
                            json!({ "conversation_id": conv, "message": format!("question {n}"), "messageId": format!("q{n}") }),
                            Duration::from_secs(10),
                        )
                        .await;
                    if ack.map(|a| a["success"] != true).unwrap_or(true) {
                        errors += 1;
                        continue;
                    }
                    let mut delta_seen = false;
                    loop {
                        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                            Ok(Some((name, at))) if name == "messageStream" => {
                                first.record(at - sent);
                                delta_seen = true;
                            }
                            Ok(Some((name, _))) if name == "messageComplete" && delta_seen => {
                                replies += 1;
                                break;
                            }
                            Ok(Some((name, _))) if name == "error" => {
                                errors += 1;
                                break;
                            }
                            Ok(Some(_)) => {}
                            _ => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                }
                client.close();
                (first, replies, errors)
            })
        })
        .collect();
    let mut row = Row::new(if conversations == 1 {
        "responder (1 conversation, one question at a time)".to_owned()
    } else {
        format!("responder ({conversations} conversations, one question at a time each)")
    });
    let mut replies = 0;
    for t in tasks {
        let (first, r, e) = t.await?;
        row.delivery.merge(&first);
        replies += r;
        row.errors += e;
    }
    provider.abort();
    let _ = admin(
        ctx,
        reqwest::Method::DELETE,
        &format!("/agents/{agent}/responder"),
        json!({}),
    )
    .await;
    row.throughput = format!(
        "{:.0} replies/s",
        replies as f64 / ctx.args.duration.as_secs_f64()
    );
    row.rss = ctx.rss();
    row.notes = format!(
        "delivery column: user send → first messageStream delta (zero-latency provider); {replies} replies stored, each followed by messageComplete"
    );
    Ok(row)
}
