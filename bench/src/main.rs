//! `colloquy-bench`: load scenarios against any server that implements the Colloquy
//! contract, printed as one markdown table. See `docs/benchmarks.md`.

mod agents;
mod cluster;
mod compat;
mod data;
mod delivery;
mod realtime;
mod sio;
mod stats;
mod verify;

use std::{
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

use stats::Row;

#[derive(Parser, Clone, Debug)]
#[command(version, about)]
pub struct Args {
    /// Base URL of the server.
    #[arg(long, env = "BENCH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// HS256 secret the server verifies tokens with; the tool mints its own.
    #[arg(long, env = "JWT_SECRET")]
    pub secret: String,
    /// Postgres the server uses: needed by `limit` and to seed `history`.
    #[arg(long, env = "BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Server process id, to read its resident memory from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Comma list of: steady, fanout, idle, history, limit, cluster (not in the default:
    /// it starts its own processes, see `--colloquy-bin`), webhook (one event per request,
    /// then batches; `webhook-single` or `webhook-batched` for one of them) and responder
    /// (not in the default: the server needs `WEBHOOK_ALLOW_PRIVATE=true` to reach this
    /// tool),
    /// adapters (not in the default: it writes ~10^5–10^6 messages through the seed
    /// systems' routes and `import`).
    #[arg(long, default_value = "steady,fanout,idle,history,limit")]
    pub scenarios: String,
    /// Measured time of each timed scenario.
    #[arg(long, default_value = "15s", value_parser = humantime_secs)]
    pub duration: Duration,
    #[arg(long, default_value_t = 50)]
    pub steady_conversations: usize,
    #[arg(long, default_value_t = 1000)]
    pub fanout_listeners: usize,
    /// Messages per second the fan-out sender sends.
    #[arg(long, default_value_t = 10)]
    pub fanout_rate: u64,
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: usize,
    /// Conversations × messages seeded for `history` (100 × 10,000 = 1,000,000).
    #[arg(long, default_value_t = 100)]
    pub history_conversations: i64,
    #[arg(long, default_value_t = 10_000)]
    pub history_messages: i64,
    /// Requests per `history` row.
    #[arg(long, default_value_t = 2000)]
    pub history_requests: usize,
    /// Concurrent connections of the one-per-transaction `limit`.
    #[arg(long, default_value_t = 100)]
    pub limit_concurrency: usize,
    /// `cluster`: the `colloquy` binary to start processes from (on `--database-url`).
    #[arg(long, env = "COLLOQUY_BIN")]
    pub colloquy_bin: Option<String>,
    /// `cluster`: process counts to run `steady` on, each on every bus.
    #[arg(long, default_value = "1,2,4")]
    pub cluster_sizes: String,
    /// `cluster`: comma list of `EVENT_BUS` values (`postgres`, `redis://…`).
    #[arg(long, default_value = "postgres")]
    pub cluster_buses: String,
    /// `cluster`: where each conversation's clients connect. `spread`: its two senders and
    /// its listener on three different processes (each process follows most
    /// conversations); `pair`: both senders on one process, the listener on the next
    /// (each conversation is followed by two processes); `first`: every client on the
    /// first process (the others only hear the bus: its cost per event, alone).
    #[arg(long, default_value = "spread")]
    pub cluster_placement: String,
    /// `cluster`: first listen port of the processes it starts.
    #[arg(long, default_value_t = 18100)]
    pub cluster_port: u16,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s}"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("bad duration unit in {s}")),
    }
}

/// What every scenario needs.
#[derive(Clone)]
pub struct Ctx {
    pub args: Args,
    pub http: reqwest::Client,
    /// Distinguishes this run's principals and client ids from earlier runs.
    pub run: String,
}

impl Ctx {
    /// The same run against another process of the cluster.
    pub fn at(&self, url: &str) -> Ctx {
        let mut ctx = self.clone();
        ctx.args.url = url.to_owned();
        ctx
    }

    pub fn token(&self, sub: &str) -> String {
        self.token_with(json!({"sub": sub, "name": sub}))
    }

    /// A token with these claims (and a 6 h `exp`).
    pub fn token_with(&self, mut claims: Value) -> String {
        claims["exp"] = json!(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                + 6 * 3600
        );
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.args.secret.as_bytes()),
        )
        .unwrap_or_default()
    }

    pub fn api(&self, path: &str) -> String {
        format!(
            "{}/api/v1/communication{path}",
            self.args.url.trim_end_matches('/')
        )
    }

    pub async fn get(&self, who: &str, path: &str) -> anyhow::Result<Value> {
        let res = self
            .http
            .get(self.api(path))
            .bearer_auth(self.token(who))
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body["data"].clone())
    }

    pub async fn post(&self, who: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let res = self
            .http
            .post(self.api(path))
            .bearer_auth(self.token(who))
            .json(&body)
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path}: {status} {body}");
        }
        Ok(body["data"].clone())
    }

    /// Creates a conversation owned by `owner`; returns its id.
    pub async fn conversation(&self, owner: &str, others: &[String]) -> anyhow::Result<String> {
        let data = self
            .post(
                owner,
                "/conversations",
                json!({"name": format!("bench {}", self.run), "participants": others}),
            )
            .await?;
        data["id"]
            .as_str()
            .map(str::to_owned)
            .context("conversation id")
    }

    /// The server's resident memory, from /proc (same machine only).
    pub fn rss_bytes(&self) -> Option<u64> {
        let pid = self.args.server_pid?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    pub fn rss(&self) -> String {
        self.rss_bytes()
            .map_or("–".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0))
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or("?".into(), |kb| format!("{:.0} GiB", kb as f64 / 1048576.0));
    format!("{} cores ({cpu}), {mem} RAM", cores())
}

/// Exit status when a real-time scenario's delivery check found a problem.
const DELIVERY_CHECK_FAILED: u8 = 3;

/// The warning for a row whose delivery check is not all zero.
fn delivery_warning(row: &Row) -> Option<String> {
    let figures = row.delivery_check.filter(|f| !f.healthy())?;
    Some(format!(
        "WARNING: delivery check failed in {}: {} (all must be 0: contract §4, every joined socket gets each message exactly once, in seq order)",
        row.scenario,
        figures.summary()
    ))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let ctx = Ctx {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(60))
            .build()?,
        run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        args: args.clone(),
    };
    // `cluster` starts its own processes; every other scenario needs the server at --url.
    if args.scenarios.split(',').any(|s| s.trim() != "cluster") {
        let ready = ctx
            .http
            .get(format!("{}/readyz", args.url.trim_end_matches('/')))
            .send()
            .await
            .with_context(|| format!("server at {} is not reachable", args.url))?;
        if !ready.status().is_success() {
            bail!("server at {} is not ready: {}", args.url, ready.status());
        }
    }
    eprintln!(
        "colloquy-bench run {} against {}: {}",
        ctx.run,
        args.url,
        machine()
    );

    let mut rows: Vec<Row> = Vec::new();
    for scenario in args.scenarios.split(',').map(str::trim) {
        eprintln!("== {scenario}");
        let result = match scenario {
            "steady" => realtime::steady(&ctx).await.map(|r| vec![r]),
            "fanout" => realtime::fanout(&ctx).await.map(|r| vec![r]),
            "idle" => realtime::idle(&ctx).await.map(|r| vec![r]),
            "history" => data::history(&ctx).await,
            "limit" => data::limit(&ctx).await,
            "cluster" => cluster::run(&ctx).await,
            "webhook" => Ok(vec![
                agents::webhook(&ctx, 1).await?,
                agents::webhook(&ctx, 100).await?,
            ]),
            "webhook-single" => agents::webhook(&ctx, 1).await.map(|r| vec![r]),
            "webhook-batched" => agents::webhook(&ctx, 100).await.map(|r| vec![r]),
            "responder" => agents::responder(&ctx).await,
            "adapters" => compat::adapters(&ctx).await,
            other => bail!("unknown scenario {other}"),
        };
        match result {
            Ok(r) => {
                for row in &r {
                    eprintln!(
                        "{}",
                        stats::table(std::slice::from_ref(row), cores())
                            .lines()
                            .nth(2)
                            .unwrap_or_default()
                    );
                    if let Some(warning) = delivery_warning(row) {
                        eprintln!("{warning}");
                    }
                }
                rows.extend(r);
            }
            Err(e) => {
                eprintln!("{scenario} failed: {e:#}");
                let mut row = Row::new(scenario);
                row.errors = 1;
                row.notes = format!("failed: {e}");
                rows.push(row);
            }
        }
    }
    println!("\nMachine: {}\n", machine());
    println!("{}", stats::table(&rows, cores()));
    let warnings: Vec<String> = rows.iter().filter_map(delivery_warning).collect();
    for warning in &warnings {
        println!("{warning}");
    }
    if warnings.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(DELIVERY_CHECK_FAILED))
    }
}
