//! The state every transport shares.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{auth::Verifier, config::Config, core::events::Events, limits::RateLimiter};

/// Handed to axum and to socketioxide alike; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    pub limiter: Arc<RateLimiter>,
    pub events: Events,
    /// Cancelled when shutdown starts; readiness turns false at once.
    pub shutdown: CancellationToken,
    /// Set once migrations have run; API calls answer 503 until then.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// The OpenAI-compatible summary provider, when `SUMMARY_PROVIDER=openai`.
    pub summariser: Option<crate::summarize::openai::Client>,
    /// Group commit for message sends.
    pub writer: crate::core::writer::Writer,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }
}
