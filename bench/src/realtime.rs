//! Scenarios over Socket.IO (websocket transport): `steady`, `fanout`, `idle`.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use serde_json::{Value, json};

use crate::{
    Ctx,
    sio::Client,
    stats::{Latency, Row},
    verify::{Acked, exactly_once},
};

const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Sends in this first stretch are checked but not timed.
const WARMUP: Duration = Duration::from_secs(2);

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_us() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A listener callback: records the delivery latency of each `messageBroadcast` whose
/// text carries `t=<µs>`.
fn listener(delivery: Arc<Mutex<Latency>>, received: Arc<AtomicU64>) -> crate::sio::OnEvent {
    Box::new(move |name: &str, data: &Value| {
        if name != "messageBroadcast" {
            return;
        }
        received.fetch_add(1, Ordering::Relaxed);
        let sent = data["text"]
            .as_str()
            .and_then(|t| t.rsplit_once("t="))
            .and_then(|(_, t)| t.parse::<u64>().ok());
        if let (Some(sent), Ok(mut h)) = (sent, delivery.lock()) {
            h.record_us(now_us().saturating_sub(sent));
        }
    })
}

fn ignore() -> crate::sio::OnEvent {
    Box::new(|_: &str, _: &Value| {})
}

async fn join(client: &Client, conversation: &str) -> anyhow::Result<()> {
    let ack = client
        .call(
            "join",
            json!({"conversation_id": conversation}),
            ACK_TIMEOUT,
        )
        .await?;
    anyhow::ensure!(ack["success"] == true, "join refused: {ack}");
    Ok(())
}

/// One sender in a closed loop until `until`; returns its acks, timings and errors.
async fn send_loop(
    client: Arc<Client>,
    conversation: String,
    tag: String,
    timed_from: Instant,
    until: Instant,
    pace: Option<Duration>,
) -> (Vec<Acked>, Latency, u64) {
    let (mut acked, mut ack, mut errors) = (Vec::new(), Latency::default(), 0);
    let mut k = 0u64;
    let mut tick = pace.map(tokio::time::interval);
    while Instant::now() < until {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        k += 1;
        let client_id = format!("{tag}-{k}");
        let started = Instant::now();
        let result = client
            .call(
                "chat_message",
                json!({
                    "conversation_id": conversation,
                    "message": format!("bench message {k} t={}", now_us()),
                    "messageId": client_id,
                }),
                ACK_TIMEOUT,
            )
            .await;
        match result {
            Ok(v) if v["success"] == true => {
                if started >= timed_from {
                    ack.record(started.elapsed());
                }
                acked.push(Acked {
                    conversation: conversation.clone(),
                    client_id,
                    id: v["data"]["id"].as_str().unwrap_or_default().to_owned(),
                    timed: started >= timed_from,
                });
            }
            _ => errors += 1,
        }
    }
    (acked, ack, errors)
}

/// 50 conversations × 2 senders × 1 listener, closed loop.
pub async fn steady(ctx: &Ctx) -> anyhow::Result<Row> {
    let n = ctx.args.steady_conversations;
    let run = &ctx.run;
    let delivery = Arc::new(Mutex::new(Latency::default()));
    let received = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut listeners = Vec::new();
    for i in 0..n {
        let (a, b, l) = (
            format!("{run}-s{i}a"),
            format!("{run}-s{i}b"),
            format!("{run}-s{i}l"),
        );
        let c = ctx.conversation(&a, &[b.clone(), l.clone()]).await?;
        let lc = Client::connect(
            &ctx.args.url,
            &ctx.token(&l),
            listener(delivery.clone(), received.clone()),
        )
        .await?;
        join(&lc, &c).await?;
        listeners.push(lc);
        for who in [a, b] {
            let sc = Client::connect(&ctx.args.url, &ctx.token(&who), ignore()).await?;
            join(&sc, &c).await?;
            senders.push((Arc::new(sc), c.clone(), who));
        }
    }
    let start = Instant::now();
    let timed_from = start + WARMUP;
    let until = timed_from + ctx.args.duration;
    let tasks: Vec<_> = senders
        .iter()
        .map(|(client, c, who)| {
            tokio::spawn(send_loop(
                client.clone(),
                c.clone(),
                who.clone(),
                timed_from,
                until,
                None,
            ))
        })
        .collect();
    let mut row = Row::new(format!("steady ({n} conv × 2 senders × 1 listener)"));
    let mut acked = Vec::new();
    for t in tasks {
        let (a, h, e) = t.await?;
        acked.extend(a);
        row.ack.merge(&h);
        row.errors += e;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let timed = acked.iter().filter(|a| a.timed).count();
    let secs = ctx.args.duration.as_secs_f64();
    row.throughput = format!("{:.0} msg/s", timed as f64 / secs);
    row.rss = ctx.rss();
    if let Ok(d) = delivery.lock() {
        row.delivery = d.clone();
    }
    let delivered = received.load(Ordering::Relaxed);
    let check = exactly_once(ctx, &acked).await?;
    row.errors += check.problems;
    row.notes = format!(
        "{} acked, {delivered}/{} delivered to listeners; {}",
        acked.len(),
        acked.len(),
        check.summary
    );
    if delivered < acked.len() as u64 {
        row.errors += acked.len() as u64 - delivered;
    }
    drop(listeners);
    Ok(row)
}

/// 1 conversation, 1 sender at `fanout_rate` msg/s, `fanout_listeners` listeners.
pub async fn fanout(ctx: &Ctx) -> anyhow::Result<Row> {
    let n = ctx.args.fanout_listeners;
    let run = &ctx.run;
    let sender = format!("{run}-fsender");
    let names: Vec<String> = (0..n).map(|i| format!("{run}-f{i}")).collect();
    // Create with as many members as one request may name, then add the rest.
    let first = names.len().min(400);
    let c = ctx.conversation(&sender, &names[..first]).await?;
    let added: Vec<anyhow::Result<serde_json::Value>> = stream::iter(names[first..].iter())
        .map(|name| {
            let (sender, path) = (&sender, format!("/conversations/{c}/participants"));
            async move {
                ctx.post(sender, &path, json!({"participant_id": name}))
                    .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for a in added {
        a?;
    }
    let delivery = Arc::new(Mutex::new(Latency::default()));
    let received = Arc::new(AtomicU64::new(0));
    let listeners: Vec<anyhow::Result<Client>> = stream::iter(names.iter().cloned())
        .map(|name| {
            let (ctx, c, delivery, received) =
                (ctx.clone(), c.clone(), delivery.clone(), received.clone());
            async move {
                let client = Client::connect(
                    &ctx.args.url,
                    &ctx.token(&name),
                    listener(delivery, received),
                )
                .await?;
                join(&client, &c).await?;
                Ok(client)
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let listeners: Vec<Client> = listeners.into_iter().collect::<anyhow::Result<_>>()?;
    let sc = Arc::new(Client::connect(&ctx.args.url, &ctx.token(&sender), ignore()).await?);
    join(&sc, &c).await?;
    let start = Instant::now();
    let timed_from = start + WARMUP;
    let until = timed_from + ctx.args.duration;
    let pace = Duration::from_micros(1_000_000 / ctx.args.fanout_rate.max(1));
    // Deliveries during the warm-up are not timed.
    let warm_delivery = delivery.clone();
    tokio::spawn(async move {
        tokio::time::sleep(WARMUP).await;
        if let Ok(mut d) = warm_delivery.lock() {
            *d = Latency::default();
        }
    });
    let (acked, ack, errors) =
        send_loop(sc, c.clone(), sender.clone(), timed_from, until, Some(pace)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut row = Row::new(format!("fanout (1 sender, {n} listeners)"));
    row.ack = ack;
    row.errors = errors;
    let delivered = received.load(Ordering::Relaxed);
    let expected = acked.len() as u64 * n as u64;
    let secs = (ctx.args.duration + WARMUP).as_secs_f64();
    row.throughput = format!(
        "{:.0} msg/s → {:.0} deliveries/s",
        acked.len() as f64 / secs,
        delivered as f64 / secs
    );
    if let Ok(d) = delivery.lock() {
        row.delivery = d.clone();
    }
    row.rss = ctx.rss();
    let check = exactly_once(ctx, &acked).await?;
    row.errors += check.problems + expected.saturating_sub(delivered);
    row.notes = format!("{delivered}/{expected} deliveries; {}", check.summary);
    drop(listeners);
    Ok(row)
}

/// `idle_connections` authenticated sockets doing nothing: server memory per connection.
pub async fn idle(ctx: &Ctx) -> anyhow::Result<Row> {
    let n = ctx.args.idle_connections;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = ctx.rss_bytes();
    let started = Instant::now();
    let principals: Vec<String> = (0..100).map(|i| format!("{}-idle{i}", ctx.run)).collect();
    let tokens: Vec<String> = principals.iter().map(|p| ctx.token(p)).collect();
    let results: Vec<anyhow::Result<Client>> = stream::iter(0..n)
        .map(|i| {
            let (url, token) = (ctx.args.url.clone(), tokens[i % tokens.len()].clone());
            async move {
                let started = Instant::now();
                let c = Client::connect(&url, &token, ignore()).await;
                (c, started.elapsed())
            }
        })
        .buffer_unordered(200)
        .map(|(c, _)| c)
        .collect()
        .await;
    let connect_time = started.elapsed();
    let errors = results.iter().filter(|r| r.is_err()).count();
    let clients: Vec<Client> = results.into_iter().filter_map(Result::ok).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = ctx.rss_bytes();
    let mut row = Row::new(format!("idle ({n} sockets)"));
    row.errors = errors as u64;
    row.throughput = format!(
        "{:.0} connects/s",
        clients.len() as f64 / connect_time.as_secs_f64()
    );
    row.rss = ctx.rss();
    row.notes = match (before, after) {
        (Some(b), Some(a)) if !clients.is_empty() => format!(
            "{:.1} KiB RSS per connection ({} connected; RSS {:.0} → {:.0} MiB)",
            a.saturating_sub(b) as f64 / 1024.0 / clients.len() as f64,
            clients.len(),
            b as f64 / 1048576.0,
            a as f64 / 1048576.0
        ),
        _ => format!("{} connected; pass --server-pid for memory", clients.len()),
    };
    drop(clients);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(row)
}
