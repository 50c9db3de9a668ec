//! Configuration, read once from the environment (and `.env`) at start-up.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use clap::{Args, ValueEnum};

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// How processes sharing one database wake each other (contract §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventBus {
    /// LISTEN/NOTIFY on `DATABASE_URL`: nothing else to run.
    Postgres,
    /// A Redis ≥ 7 or Valkey URL (may carry a password: never logged).
    Redis(Secret),
}

/// Non-public addresses outbound calls may reach (`WEBHOOK_ALLOW_PRIVATE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivateTargets {
    /// Public addresses only (the default).
    None,
    All,
    /// Public addresses and these ranges.
    Ranges(Vec<ipnet::IpNet>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SummaryProvider {
    #[default]
    Extractive,
    Openai,
}

/// Every setting of `colloquy serve`; each field maps to one environment variable.
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// Postgres connection string.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<Secret>,

    /// Largest number of pooled database connections per process.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,

    /// Listen address.
    #[arg(long, env = "COLLOQUY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// HS256 secret for bearer tokens.
    #[arg(long, env = "JWT_SECRET")]
    pub jwt_secret: Option<Secret>,

    /// PEM public key for RS256/ES256/EdDSA tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Allowed CORS origins: a comma list or `*`.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "*")]
    pub cors_allowed_origins: String,

    /// Extra Socket.IO namespaces served besides `/` (comma list).
    #[arg(long, env = "SOCKET_NAMESPACES", default_value = "")]
    pub socket_namespaces: String,

    /// Legacy mode: accept Socket.IO connections without a token.
    #[arg(long, env = "SOCKET_ALLOW_ANONYMOUS", default_value_t = false, action = clap::ArgAction::Set)]
    pub socket_allow_anonymous: bool,

    /// Longest message text, in characters.
    #[arg(long, env = "MAX_MESSAGE_CHARS", default_value_t = 10_000)]
    pub max_message_chars: usize,

    /// Requests and socket sends per principal per minute.
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 600)]
    pub rate_limit_per_minute: u32,

    /// Summary engine.
    #[arg(long, env = "SUMMARY_PROVIDER", value_enum, default_value_t = SummaryProvider::Extractive)]
    pub summary_provider: SummaryProvider,

    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: String,

    #[arg(long, env = "OPENAI_API_KEY")]
    pub openai_api_key: Option<Secret>,

    #[arg(long, env = "OPENAI_MODEL", default_value = "gpt-4o-mini")]
    pub openai_model: String,

    /// Seconds to wait for the OpenAI-compatible endpoint before falling back to the
    /// extractive summary.
    #[arg(long, env = "OPENAI_TIMEOUT_SECONDS", default_value_t = 20)]
    pub openai_timeout_seconds: u64,

    /// Seconds of work one REST request may take before it is answered 503.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,

    /// How processes sharing the database wake each other: `postgres` (LISTEN/NOTIFY on
    /// `DATABASE_URL`) or a `redis://` / `rediss://` URL (one channel per conversation).
    #[arg(long, env = "EVENT_BUS", default_value = "postgres")]
    pub event_bus: Secret,

    /// `pretty` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Seconds to wait for in-flight work on shutdown.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,

    /// Whether webhooks and responder providers may target loopback, link-local and
    /// private addresses: `false`, `true`, or a comma list of CIDR ranges allowed.
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE", default_value = "false")]
    pub webhook_allow_private: String,

    /// Seconds one webhook request may take before it counts as failed.
    #[arg(long, env = "WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    pub webhook_timeout_seconds: u64,

    /// How long a failing delivery is retried before it becomes a dead letter.
    #[arg(long, env = "WEBHOOK_RETRY_FOR", default_value = "24h", value_parser = humantime::parse_duration)]
    pub webhook_retry_for: std::time::Duration,

    /// Longest wait between two attempts of one delivery.
    #[arg(long, env = "WEBHOOK_MAX_BACKOFF", default_value = "10m", value_parser = humantime::parse_duration)]
    pub webhook_max_backoff: std::time::Duration,

    /// Seconds a responder waits for the provider's next chunk (and for its first) before
    /// it gives up on the reply.
    #[arg(long, env = "RESPONDER_TIMEOUT_SECONDS", default_value_t = 30)]
    pub responder_timeout_seconds: u64,

    /// Replies streaming at once on this process, over all agents.
    #[arg(long, env = "RESPONDER_CONCURRENCY", default_value_t = 32)]
    pub responder_concurrency: usize,

    /// Replies streaming at once for one agent on this process.
    #[arg(long, env = "RESPONDER_AGENT_CONCURRENCY", default_value_t = 4)]
    pub responder_agent_concurrency: usize,

    /// Where the General Bots API (seeds 001, 004) is mounted; `off` disables it.
    #[arg(
        long,
        env = "COMPAT_GENERAL_BOTS_PREFIX",
        default_value = "/compat/general-bots"
    )]
    pub compat_general_bots_prefix: String,

    /// Where the conversations CRUD API (seed 003) is mounted; `off` disables it.
    #[arg(long, env = "COMPAT_CRUD_PREFIX", default_value = "/compat/crud")]
    pub compat_crud_prefix: String,

    /// Where the Avee messaging API (seed 002) is mounted; `off` disables it.
    #[arg(
        long,
        env = "COMPAT_MESSAGING_PREFIX",
        default_value = "/compat/messaging"
    )]
    pub compat_messaging_prefix: String,

    /// The bot anonymous `/ws` clients talk to (guest sessions); unset: no guests.
    #[arg(long, env = "GUEST_BOT_ID")]
    pub guest_bot_id: Option<String>,

    /// Idle time after which a guest session is deleted with its messages.
    #[arg(long, env = "GUEST_SESSION_TTL", default_value = "30m", value_parser = humantime::parse_duration)]
    pub guest_session_ttl: std::time::Duration,
}

impl Config {
    /// Defaults for everything; used by tests and as the base of `serve`.
    pub fn with_database(database_url: &str, jwt_secret: &str) -> Self {
        Self {
            database_url: Some(Secret::new(database_url)),
            database_max_connections: 20,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            jwt_secret: Some(Secret::new(jwt_secret)),
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            cors_allowed_origins: "*".into(),
            socket_namespaces: String::new(),
            socket_allow_anonymous: false,
            max_message_chars: 10_000,
            rate_limit_per_minute: 600,
            summary_provider: SummaryProvider::Extractive,
            openai_base_url: "https://api.openai.com/v1".into(),
            openai_api_key: None,
            openai_model: "gpt-4o-mini".into(),
            openai_timeout_seconds: 20,
            request_timeout_seconds: 30,
            event_bus: Secret::new("postgres"),
            log_format: LogFormat::Pretty,
            shutdown_grace_seconds: 20,
            webhook_allow_private: "false".into(),
            webhook_timeout_seconds: 10,
            webhook_retry_for: std::time::Duration::from_secs(24 * 3600),
            webhook_max_backoff: std::time::Duration::from_secs(600),
            responder_timeout_seconds: 30,
            responder_concurrency: 32,
            responder_agent_concurrency: 4,
            compat_general_bots_prefix: "/compat/general-bots".into(),
            compat_crud_prefix: "/compat/crud".into(),
            compat_messaging_prefix: "/compat/messaging".into(),
            guest_bot_id: None,
            guest_session_ttl: std::time::Duration::from_secs(30 * 60),
        }
    }

    /// The event bus `EVENT_BUS` names; an error says what is accepted.
    pub fn bus(&self) -> anyhow::Result<EventBus> {
        let value = self.event_bus.expose().trim();
        if value.is_empty() || value.eq_ignore_ascii_case("postgres") {
            return Ok(EventBus::Postgres);
        }
        if value.starts_with("redis://") || value.starts_with("rediss://") {
            return Ok(EventBus::Redis(Secret::new(value)));
        }
        anyhow::bail!(
            "EVENT_BUS must be `postgres` or a redis:// or rediss:// URL (the value given is neither)"
        )
    }

    /// Which non-public addresses outbound calls (webhooks, responder providers) may
    /// reach, from `WEBHOOK_ALLOW_PRIVATE`; an error names the variable.
    pub fn private_targets(&self) -> anyhow::Result<PrivateTargets> {
        let value = self.webhook_allow_private.trim();
        match value.to_ascii_lowercase().as_str() {
            "" | "false" | "0" | "no" => return Ok(PrivateTargets::None),
            "true" | "1" | "yes" => return Ok(PrivateTargets::All),
            _ => {}
        }
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "WEBHOOK_ALLOW_PRIVATE must be true, false or a comma list of CIDR ranges; `{s}` is none of these"
                        )
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(PrivateTargets::Ranges)
    }

    /// The explicit origin list, or `None` when any origin is allowed (`*` or empty).
    pub fn allowed_origins(&self) -> Option<Vec<&str>> {
        let origins = self.cors_allowed_origins.trim();
        // `*` anywhere in the list means any origin (and then no credentials).
        if origins.is_empty() || origins.split(',').any(|o| o.trim() == "*") {
            return None;
        }
        Some(
            origins
                .split(',')
                .map(|o| o.trim().trim_end_matches('/'))
                .filter(|o| !o.is_empty())
                .collect(),
        )
    }

    /// Whether a browser `Origin` may call us.
    pub fn origin_allowed(&self, origin: &[u8]) -> bool {
        match self.allowed_origins() {
            None => true,
            Some(list) => list.iter().any(|o| o.as_bytes() == origin),
        }
    }

    pub fn extra_namespaces(&self) -> Vec<String> {
        self.socket_namespaces
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "/")
            .map(|s| {
                if s.starts_with('/') {
                    s.to_owned()
                } else {
                    format!("/{s}")
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(value: &str) -> anyhow::Result<EventBus> {
        let mut config = Config::with_database("postgres://x", "s");
        config.event_bus = Secret::new(value);
        config.bus()
    }

    #[test]
    fn event_bus_is_postgres_or_a_redis_url_and_nothing_else() {
        assert_eq!(bus("postgres").ok(), Some(EventBus::Postgres));
        assert_eq!(bus("").ok(), Some(EventBus::Postgres));
        let url = "rediss://:pw@cache.internal:6380/2";
        assert_eq!(bus(url).ok(), Some(EventBus::Redis(Secret::new(url))));
        for wrong in ["kafka://x", "cache:6379", "http://cache:6379"] {
            let e = bus(wrong).expect_err(wrong).to_string();
            assert!(e.contains("EVENT_BUS"), "{e}");
            assert!(
                !e.contains(wrong),
                "the value (a URL, maybe with a password) is not echoed"
            );
        }
    }
}
