//! `cluster`: `steady` across N processes on each event bus (contract §6), with what each
//! process paid: bus messages it read, and its CPU.
//!
//! For every bus in `--cluster-buses` and every size in `--cluster-sizes`, the tool starts
//! that many `colloquy` processes from `--colloquy-bin` on `--database-url`, runs `steady`
//! with each conversation's two senders and its listener on three different processes
//! (so every message crosses the bus once N ≥ 2), reads each process's
//! `colloquy_bus_received_total` and CPU time (`/proc/<pid>/stat`) before and after, and
//! stops them.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::{Ctx, realtime, stats::Row};

struct Node {
    child: Child,
    pid: u32,
    url: String,
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) close with ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12th and 13th after ')'.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The sum of a counter's samples (all label sets) in a process's `/metrics`.
async fn counter(ctx: &Ctx, url: &str, name: &str) -> f64 {
    let Ok(res) = ctx.http.get(format!("{url}/metrics")).send().await else {
        return 0.0;
    };
    let text = res.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn start(ctx: &Ctx, bin: &str, bus: &str, n: usize) -> anyhow::Result<Vec<Node>> {
    let database_url = ctx
        .args
        .database_url
        .as_deref()
        .context("cluster needs --database-url")?;
    let mut nodes = Vec::new();
    for k in 0..n {
        let port = ctx.args.cluster_port + k as u16;
        let child = Command::new(bin)
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("JWT_SECRET", &ctx.args.secret)
            .env("COLLOQUY_LISTEN", format!("127.0.0.1:{port}"))
            .env("EVENT_BUS", bus)
            .env("RATE_LIMIT_PER_MINUTE", "100000000")
            // Four processes × (16 + the bus's own 4) stay under Postgres's default 100.
            .env("DATABASE_MAX_CONNECTIONS", "16")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let pid = child.id().context("process id")?;
        nodes.push(Node {
            child,
            pid,
            url: format!("http://127.0.0.1:{port}"),
        });
    }
    for node in &nodes {
        let mut ready = false;
        for _ in 0..150 {
            if let Ok(r) = ctx.http.get(format!("{}/readyz", node.url)).send().await
                && r.status().is_success()
                && let Ok(body) = r.json::<serde_json::Value>().await
                && body["event_bus"]["status"] == "ok"
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !ready {
            bail!("{} on {bus} did not get ready (bus connected)", node.url);
        }
    }
    Ok(nodes)
}

async fn stop(nodes: Vec<Node>) {
    for mut node in nodes {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &node.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(30), node.child.wait())
            .await
            .is_err()
        {
            let _ = node.child.kill().await;
        }
    }
}

/// What one process cost during a run.
struct Cost {
    received: f64,
    gap_filled: f64,
    /// Bus reconnects, wake-ups the bus would not take, events the delivery stage could
    /// not queue: all should stay 0 under load.
    trouble: f64,
    cpu: f64,
}

async fn costs(ctx: &Ctx, nodes: &[Node], ticks: f64) -> Vec<Cost> {
    let mut out = Vec::new();
    for node in nodes {
        out.push(Cost {
            received: counter(ctx, &node.url, "colloquy_bus_received_total").await,
            gap_filled: counter(ctx, &node.url, "colloquy_delivery_gap_filled_total").await,
            trouble: counter(ctx, &node.url, "colloquy_bus_reconnects_total").await
                + counter(ctx, &node.url, "colloquy_bus_publish_failures_total").await
                + counter(ctx, &node.url, "colloquy_delivery_backlog_dropped_total").await,
            cpu: cpu_seconds(node.pid, ticks).unwrap_or(0.0),
        });
    }
    out
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let bin = ctx
        .args
        .colloquy_bin
        .clone()
        .context("cluster needs --colloquy-bin (the colloquy binary to start)")?;
    let sizes: Vec<usize> = ctx
        .args
        .cluster_sizes
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let ticks = ticks_per_second();
    let mut rows = Vec::new();
    let mut table = String::from(
        "| bus | processes | persisted msg/s | delivery p50 ms | delivery p99 ms | bus msgs received per process (per s) | CPU per process | delivery check |\n|---|---|---|---|---|---|---|---|\n",
    );
    for bus in ctx.args.cluster_buses.split(',').map(str::trim) {
        let label = if bus.starts_with("redis") {
            "redis"
        } else {
            "postgres"
        };
        for &n in &sizes {
            eprintln!("== cluster: {n} × {label}");
            let nodes = start(ctx, &bin, bus, n).await?;
            let node_ctxs: Vec<Ctx> = nodes.iter().map(|node| ctx.at(&node.url)).collect();
            let before = costs(ctx, &nodes, ticks).await;
            let started = std::time::Instant::now();
            let result = realtime::steady_on(&node_ctxs[0], &node_ctxs).await;
            let wall = started.elapsed().as_secs_f64();
            let after = costs(ctx, &nodes, ticks).await;
            stop(nodes).await;
            let mut row = result?;
            let received: Vec<f64> = after
                .iter()
                .zip(&before)
                .map(|(a, b)| a.received - b.received)
                .collect();
            let cpu: Vec<f64> = after
                .iter()
                .zip(&before)
                .map(|(a, b)| 100.0 * (a.cpu - b.cpu) / wall)
                .collect();
            let gap_filled: f64 = after
                .iter()
                .zip(&before)
                .map(|(a, b)| a.gap_filled - b.gap_filled)
                .sum();
            let trouble: f64 = after
                .iter()
                .zip(&before)
                .map(|(a, b)| a.trouble - b.trouble)
                .sum();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            let check = row.delivery_check.map_or("–".into(), |f| {
                if f.healthy() {
                    "ok".to_owned()
                } else {
                    f.summary()
                }
            });
            table.push_str(&format!(
                "| {label} | {n} | {} | {} | {} | {:.0} ({:.0}/s) | {:.0}% (each: {}) | {check} |\n",
                row.throughput,
                row.delivery.p50(),
                row.delivery.p99(),
                mean(&received),
                mean(&received) / wall,
                mean(&cpu),
                cpu.iter()
                    .map(|c| format!("{c:.0}%"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            row.scenario = format!(
                "cluster: steady on {n} × {label} ({})",
                ctx.args.cluster_placement
            );
            row.notes = format!(
                "bus msgs received per process {:.0} ({:.0}/s); CPU per process {:.0}%; {gap_filled:.0} messages delivered from the log (late or lost wake-ups); {trouble:.0} bus reconnects, refused publishes or dropped events; {}",
                mean(&received),
                mean(&received) / wall,
                mean(&cpu),
                row.notes
            );
            rows.push(row);
        }
    }
    println!("\n{table}");
    Ok(rows)
}
