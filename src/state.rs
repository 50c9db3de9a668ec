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
    /// Typing indicators per principal (not stored, but each one fans out to every member).
    pub typing_limiter: Arc<RateLimiter>,
    pub events: Events,
    /// Cancelled when shutdown starts; readiness turns false at once, new sends are
    /// refused with `UNAVAILABLE`.
    pub shutdown: CancellationToken,
    /// Cancelled once every send taken before shutdown is answered and delivered: the
    /// transports close their sockets then.
    pub closing: CancellationToken,
    /// Log reads for clients (resumes, `join {since_seq}`) running at once on this process:
    /// each may hold megabytes, so they take turns.
    pub backlog_reads: Arc<tokio::sync::Semaphore>,
    /// The sends in flight (each holds a token until it is answered).
    pub sends: tokio_util::task::TaskTracker,
    /// A small pool of its own for the event bus and the delivery stage's log reads, so
    /// live delivery never waits behind requests for a connection.
    pub delivery_db: PgPool,
    /// Set once migrations have run; API calls answer 503 until then.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// The OpenAI-compatible summary provider, when `SUMMARY_PROVIDER=openai`.
    pub summariser: Option<crate::summarize::openai::Client>,
    /// Group commit for message sends.
    pub writer: crate::core::writer::Writer,
    /// Agent `owner` claims this process has already recorded.
    pub owner_claims: OwnerClaims,
    /// Anonymous guest sessions' limits (connections, sessions and messages per address).
    pub guests: Arc<crate::core::guests::Limits>,
    /// Profile claims this process has already written.
    pub profiles: crate::core::profiles::Written,
    /// The cross-process event bus's engine and connection (`/readyz`).
    pub bus: Arc<crate::realtime::bus::Status>,
    /// Which addresses webhooks and responder providers may reach (`WEBHOOK_ALLOW_PRIVATE`).
    pub outbound: crate::outbound::Guard,
    /// Agents that answer by themselves, and the queue of stored messages they look at.
    pub responders: crate::responder::Registry,
}

/// The (agent, owner) pairs from signed `owner` claims already written to the database,
/// so an agent's every request does not write it again. Bounded: cleared when large.
#[derive(Clone, Default)]
pub struct OwnerClaims(Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>);

impl OwnerClaims {
    const MAX: usize = 100_000;

    pub fn seen(&self, agent: &str, owner: &str) -> bool {
        self.0
            .lock()
            .map(|m| m.get(agent).is_some_and(|o| o == owner))
            .unwrap_or(false)
    }

    pub fn remember(&self, agent: &str, owner: &str) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= Self::MAX {
                m.clear();
            }
            m.insert(agent.to_owned(), owner.to_owned());
        }
    }
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts a send in flight until the token drops (after its answer is out): shutdown
    /// waits for every one taken before it. Sends that start after shutdown began are
    /// refused by `messages::send` (`UNAVAILABLE`), so none is left unanswered.
    pub fn send_in_flight(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.sends.token()
    }
}
