//! Scenarios over Socket.IO (websocket transport): `steady`, `fanout`, `idle`.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use serde_json::{Value, json};

use crate::{
    Ctx,
    delivery::{self, Watched},
    sio::Client,
    stats::{Latency, Row},
    verify::{Acked, exactly_once, read_logs},
};

const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Sends in this first stretch are checked but not timed.
const WARMUP: Duration = Duration::from_secs(2);
/// Wait after the last send for deliveries still in flight, before the checks.
const SETTLE: Duration = Duration::from_secs(2);

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the first call: the clock of the `t=<µs>` send stamps.
pub(crate) fn now_us() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn ignore() -> crate::sio::OnEvent {
    Box::new(|_: &str, _: &Value| {})
}

/// Joins `conversation`; returns its `last_seq` in the join ack (0 when absent), after
/// which every message is owed to the socket.
async fn join(client: &Client, conversation: &str) -> anyhow::Result<i64> {
    let ack = client
        .call(
            "join",
            json!({"conversation_id": conversation}),
            ACK_TIMEOUT,
        )
        .await?;
    anyhow::ensure!(ack["success"] == true, "join refused: {ack}");
    Ok(ack["data"]["conversation"]["last_seq"]
        .as_i64()
        .unwrap_or(0))
}

/// Connects a socket as `principal` that records its broadcasts, and joins `conversation`.
async fn connect_watched(
    ctx: &Ctx,
    principal: &str,
    conversation: &str,
    timed: bool,
) -> anyhow::Result<(Client, Watched)> {
    let mut socket = Watched::new(principal, timed);
    let client = Client::connect(&ctx.args.url, &ctx.token(principal), socket.on_event()).await?;
    socket.joined(conversation, join(&client, conversation).await?);
    Ok((client, socket))
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
    steady_on(ctx, std::slice::from_ref(ctx)).await
}

/// `steady` over several processes: conversation `i`'s first sender is on process
/// `i mod N`, its second on the next, its listener on the one after (`pair`: both senders
/// on `i mod N`, the listener on the next), so with two or more processes every message
/// crosses the bus.
pub async fn steady_on(ctx: &Ctx, nodes: &[Ctx]) -> anyhow::Result<Row> {
    let n = ctx.args.steady_conversations;
    let run = &ctx.run;
    let mut senders = Vec::new();
    let mut listeners = Vec::new();
    // Every joined socket is checked: the listener, and each sender for the other's messages.
    let mut sockets = Vec::new();
    let mut readers = Vec::new();
    for i in 0..n {
        let (a, b, l) = (
            format!("{run}-s{i}a"),
            format!("{run}-s{i}b"),
            format!("{run}-s{i}l"),
        );
        let node = |k: usize| match ctx.args.cluster_placement.as_str() {
            // Every client on the first process: the others only hear the bus.
            "first" => &nodes[0],
            "pair" => &nodes[(i + [0, 0, 1][k]) % nodes.len()],
            _ => &nodes[(i + k) % nodes.len()],
        };
        let c = ctx.conversation(&a, &[b.clone(), l.clone()]).await?;
        readers.push((c.clone(), a.clone()));
        let (lc, lw) = connect_watched(node(2), &l, &c, true).await?;
        listeners.push(lc);
        sockets.push(lw);
        for (k, who) in [a, b].into_iter().enumerate() {
            let (sc, sw) = connect_watched(node(k), &who, &c, false).await?;
            sockets.push(sw);
            senders.push((Arc::new(sc), c.clone(), who));
        }
    }
    let start = Instant::now();
    let timed_from = start + WARMUP;
    let timed_from_us = now_us() + WARMUP.as_micros() as u64;
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
    tokio::time::sleep(SETTLE).await;
    let timed = acked.iter().filter(|a| a.timed).count();
    let secs = ctx.args.duration.as_secs_f64();
    row.throughput = format!("{:.0} msg/s", timed as f64 / secs);
    row.rss = ctx.rss();
    let logs = read_logs(ctx, &readers).await?;
    let check = exactly_once(&acked, &logs);
    let deliveries = delivery::check(&sockets, &logs, timed_from_us);
    row.delivery = deliveries.latency;
    row.delivery_check = Some(deliveries.figures);
    let delivered = deliveries.listener_receipts;
    row.errors += check.problems;
    row.notes = format!(
        "{} acked, {delivered}/{} delivered to listeners; {}; delivery checked on {} sockets",
        acked.len(),
        acked.len(),
        check.summary,
        deliveries.figures.sockets
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
    let joined: Vec<anyhow::Result<(Client, Watched)>> = stream::iter(names.iter())
        .map(|name| connect_watched(ctx, name, &c, true))
        .buffer_unordered(100)
        .collect()
        .await;
    let (listeners, mut sockets): (Vec<Client>, Vec<Watched>) = joined
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    // The sender's socket is checked too: it must not get its own messages back.
    let (sc, sw) = connect_watched(ctx, &sender, &c, false).await?;
    sockets.push(sw);
    let sc = Arc::new(sc);
    let start = Instant::now();
    let timed_from = start + WARMUP;
    let timed_from_us = now_us() + WARMUP.as_micros() as u64;
    let until = timed_from + ctx.args.duration;
    let pace = Duration::from_micros(1_000_000 / ctx.args.fanout_rate.max(1));
    let (acked, ack, errors) =
        send_loop(sc, c.clone(), sender.clone(), timed_from, until, Some(pace)).await;
    tokio::time::sleep(SETTLE).await;
    let mut row = Row::new(format!("fanout (1 sender, {n} listeners)"));
    row.ack = ack;
    row.errors = errors;
    let logs = read_logs(ctx, &[(c.clone(), sender.clone())]).await?;
    let check = exactly_once(&acked, &logs);
    let deliveries = delivery::check(&sockets, &logs, timed_from_us);
    let delivered = deliveries.listener_receipts;
    let expected = acked.len() as u64 * n as u64;
    let secs = (ctx.args.duration + WARMUP).as_secs_f64();
    row.throughput = format!(
        "{:.0} msg/s → {:.0} deliveries/s",
        acked.len() as f64 / secs,
        delivered as f64 / secs
    );
    row.delivery = deliveries.latency;
    row.delivery_check = Some(deliveries.figures);
    row.rss = ctx.rss();
    row.errors += check.problems + expected.saturating_sub(delivered);
    row.notes = format!(
        "{delivered}/{expected} deliveries; {}; delivery checked on {} sockets",
        check.summary, deliveries.figures.sockets
    );
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
