//! Building and running the server: what `main` and the tests both start.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use axum::{
    Router,
    extract::Request,
    http::{HeaderName, HeaderValue, Method},
    middleware,
};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{Layer, util::MapRequestLayer};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    auth::Verifier, config::Config, core::events::Events, http, limits::RateLimiter, realtime,
    state::AppState,
};

/// Typing indicators a principal may send per minute (a keystroke-debounced client sends
/// one every few seconds).
pub const TYPING_PER_MINUTE: u32 = 60;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct Server {
    listener: TcpListener,
    app: Router,
    state: AppState,
    io: socketioxide::SocketIo,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// Connects lazily: the server starts (and `/readyz` says not ready) while Postgres is down.
pub fn pool(config: &Config) -> anyhow::Result<PgPool> {
    side_pool(config, config.database_max_connections, "colloquy")
}

/// A lazily connecting pool of `connections` at most, named `application_name` in
/// `pg_stat_activity`: the requests' pool, and the small ones of the bus and the delivery
/// stage.
pub fn side_pool(config: &Config, connections: u32, name: &str) -> anyhow::Result<PgPool> {
    let url = config
        .database_url
        .as_ref()
        .context("DATABASE_URL is required")?;
    let options: PgConnectOptions = url
        .expose()
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    Ok(PgPoolOptions::new()
        .max_connections(connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.application_name(name)))
}

/// Client log reads (resumes, `join {since_seq}`) at once per process.
pub const BACKLOG_READS: usize = 8;

/// Connections of the delivery pool: the bus listener holds one, the delivery stage's log
/// reads share the others. (The bus relay has one more of its own.)
pub const DELIVERY_CONNECTIONS: u32 = 3;

/// Runs migrations, retrying with backoff until the database answers.
async fn migrate_with_retry(db: PgPool, ready: Arc<AtomicBool>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        match MIGRATOR.run(&db).await {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                tracing::info!("database ready");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database not ready");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn cors(config: &Config) -> CorsLayer {
    // With an explicit list, credentials (cookies for sticky sessions) are allowed too;
    // a wildcard origin cannot carry credentials.
    let (allow_origin, credentials) = match config.allowed_origins() {
        None => (AllowOrigin::any(), false),
        Some(list) => (
            AllowOrigin::list(
                list.into_iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            ),
            true,
        ),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_credentials(credentials)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderName::from_static("x-ratelimit-reset"),
            HeaderName::from_static("retry-after"),
        ])
        .max_age(Duration::from_secs(600))
}

impl Server {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::metrics::install();
        // TLS for `rediss://` uses the process's default provider (the database and
        // HTTP clients name theirs); ring, as they do. Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let verifier = Verifier::from_config(&config)?;
        let bus = Arc::new(realtime::bus::Status::new(&config.bus()?));
        let outbound = crate::outbound::Guard::new(config.private_targets()?);
        let db = pool(&config)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let summariser = match config.summary_provider {
            crate::config::SummaryProvider::Openai => Some(crate::summarize::openai::Client::new(
                &config.openai_base_url,
                config
                    .openai_api_key
                    .as_ref()
                    .map(|k| k.expose().to_owned()),
                config.openai_model.clone(),
                Duration::from_secs(config.openai_timeout_seconds.max(1)),
            )?),
            crate::config::SummaryProvider::Extractive => None,
        };
        let delivery_db = side_pool(&config, DELIVERY_CONNECTIONS, "colloquy-delivery")?;
        let events = Events::new();
        let responders = crate::responder::Registry::default();
        let (writer, writers) =
            crate::core::writer::Writer::spawn(db.clone(), events.clone(), responders.clone());
        let state = AppState {
            writer,
            summariser,
            db: db.clone(),
            limiter: Arc::new(RateLimiter::per_minute(config.rate_limit_per_minute)),
            typing_limiter: Arc::new(RateLimiter::per_minute(TYPING_PER_MINUTE)),
            config: Arc::new(config),
            verifier: Arc::new(verifier),
            events,
            shutdown: CancellationToken::new(),
            closing: CancellationToken::new(),
            sends: tokio_util::task::TaskTracker::new(),
            backlog_reads: Arc::new(tokio::sync::Semaphore::new(BACKLOG_READS)),
            delivery_db,
            ready: Arc::new(AtomicBool::new(false)),
            owner_claims: Default::default(),
            profiles: Default::default(),
            guests: Default::default(),
            bus,
            outbound,
            responders,
        };
        let mut background = writers;
        background.push(tokio::spawn(migrate_with_retry(
            db,
            state.ready.clone(),
            state.shutdown.clone(),
        )));
        let limiter = state.limiter.clone();
        let typing_limiter = state.typing_limiter.clone();
        let shutdown = state.shutdown.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        limiter.housekeep();
                        typing_limiter.housekeep();
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        }));

        let (sio_layer, io) = realtime::socketio::layer(&state);
        background.push(realtime::fanout::spawn(
            &state,
            io.clone(),
            realtime::socketio::namespaces(&state),
        ));
        background.push(realtime::inbox::spawn(
            &state,
            io.clone(),
            realtime::socketio::namespaces(&state),
        ));
        background.extend(realtime::bus::spawn(
            &state,
            io.clone(),
            realtime::socketio::namespaces(&state),
        )?);
        background.extend(realtime::delivery::spawn(&state));
        background.extend(crate::dispatch::spawn(&state)?);
        background.extend(crate::responder::spawn(&state)?);
        background.extend(crate::core::guests::spawn(&state));

        let (api, spec) = http::api(state.clone());
        let compat = crate::compat::router(&state)?;
        let app = Router::new()
            .merge(api)
            .merge(compat)
            .route("/ws", axum::routing::get(realtime::ws::handler))
            .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
            .method_not_allowed_fallback(http::method_not_allowed)
            .fallback(http::not_found)
            .layer(axum::extract::DefaultBodyLimit::max(http::MAX_BODY_BYTES))
            .layer(middleware::from_fn(crate::telemetry::request_context))
            .layer(sio_layer)
            .layer(middleware::from_fn_with_state(
                state.clone(),
                http::realtime_origin_guard,
            ))
            .layer(cors(&state.config))
            .with_state(state.clone());
        Ok(Self {
            listener,
            app,
            state,
            io,
            background,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.config.listen)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Waits until migrations have run (tests; `migrate`).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        while !self.state.is_ready() {
            anyhow::ensure!(
                started.elapsed() < timeout,
                "database not ready after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Serves until `stop` is cancelled (or SIGTERM/SIGINT when `stop` is the state's token),
    /// then drains in-flight requests.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            app,
            state,
            io,
            background,
        } = self;
        let shutdown = state.shutdown.clone();
        let app = MapRequestLayer::new(http::trim_trailing_slash).layer(app);
        tracing::info!(addr = %listener.local_addr()?, "colloquy listening");
        let graceful = {
            let state = state.clone();
            async move {
                state.shutdown.cancelled().await;
                drain(&state).await;
                // A send that came in meanwhile was refused at once: let its answer out.
                let _ = tokio::time::timeout(Duration::from_secs(1), state.sends.wait()).await;
                // Open websockets would otherwise hold the shutdown.
                io.close().await;
            }
        };
        // Small frames (acks, broadcasts) must not wait for Nagle's algorithm.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        let serve = axum::serve(
            listener,
            axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app),
        )
        .with_graceful_shutdown(graceful);
        // Drain for at most the grace period, then exit anyway.
        let grace = Duration::from_secs(state.config.shutdown_grace_seconds);
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = serve => result?,
            _ = deadline => tracing::warn!(grace_secs = grace.as_secs(), "drain took too long; exiting"),
        }
        for task in background {
            task.abort();
        }
        state.db.close().await;
        tracing::info!("colloquy stopped");
        Ok(())
    }
}

/// Shutdown order (contract §4): new sends are already refused (`UNAVAILABLE`); every send
/// taken before is answered; what was committed is delivered; only then do the transports
/// close their sockets (`closing`).
async fn drain(state: &AppState) {
    let grace = Duration::from_secs(state.config.shutdown_grace_seconds.max(1));
    state.sends.close();
    if tokio::time::timeout(grace / 2, state.sends.wait())
        .await
        .is_err()
    {
        tracing::warn!("sends still unanswered at shutdown");
    }
    // Give the delivery stage and the fan-out time to hand on what was just committed.
    let settle = tokio::time::Instant::now();
    while !state.events.is_idle() && settle.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    state.closing.cancel();
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutdown requested");
        token.cancel();
    });
}
