//! Per-principal rate limiting shared by REST and socket sends.

use std::{num::NonZeroU32, time::Duration};

use governor::{
    Quota, RateLimiter as Governor, clock::DefaultClock, middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};

use axum::http::{HeaderMap, HeaderValue};

use crate::error::AppError;

/// What is left of a principal's allowance after a request was admitted.
#[derive(Clone, Copy, Debug)]
pub struct Allowance {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the allowance is full again.
    pub reset_secs: u64,
}

impl Allowance {
    /// Writes it as the `X-RateLimit-Limit/-Remaining/-Reset` headers the seeds' clients read.
    pub fn write(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset_secs));
    }
}

pub struct RateLimiter {
    limit: u32,
    inner:
        Governor<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>,
}

impl RateLimiter {
    pub fn per_minute(limit: u32) -> Self {
        let limit = limit.max(1);
        let quota = Quota::per_minute(NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN));
        Self {
            limit,
            inner: Governor::keyed(quota).with_middleware::<StateInformationMiddleware>(),
        }
    }

    /// Requests per minute allowed.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Takes one unit of the principal's allowance, or says how long to wait.
    pub fn check(&self, principal_id: &str) -> Result<Allowance, AppError> {
        match self.inner.check_key(&principal_id.to_owned()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let per_unit = 60.0 / f64::from(self.limit);
                let reset_secs =
                    (f64::from(self.limit - remaining.min(self.limit)) * per_unit).ceil() as u64;
                Ok(Allowance {
                    limit: self.limit,
                    remaining,
                    reset_secs,
                })
            }
            Err(not_until) => {
                let wait =
                    not_until.wait_time_from(governor::clock::Clock::now(&DefaultClock::default()));
                Err(AppError::RateLimited {
                    retry_after_secs: wait.max(Duration::from_secs(1)).as_secs().max(1),
                })
            }
        }
    }

    /// What a refusal (`check`'s error) leaves: nothing, until its retry time.
    pub fn refused(&self, error: &AppError) -> Allowance {
        Allowance {
            limit: self.limit,
            remaining: 0,
            reset_secs: match error {
                AppError::RateLimited { retry_after_secs } => *retry_after_secs,
                _ => 60,
            },
        }
    }

    /// Drops idle keys so memory stays bounded by active principals.
    pub fn housekeep(&self) {
        self.inner.retain_recent();
    }
}
