//! Anonymous guest sessions (contract §5, seed 004 "Anonymous Conversations"): with
//! `GUEST_BOT_ID`, a `/ws` client without a token gets a fresh guest id and a new
//! conversation with that bot only. Idle sessions are deleted with their messages.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use uuid::Uuid;

use super::{
    access::Access,
    conversations::{self, CreateConversation, ParticipantSpec},
    events::{Event, EventKind},
    participants::NewParticipant,
};
use crate::{
    auth::{Principal, PrincipalKind},
    error::{AppError, AppResult},
    limits::RateLimiter,
    state::AppState,
};

/// Open guest connections per client address at most.
pub const MAX_CONNECTIONS_PER_IP: usize = 20;
/// New guest sessions per client address per minute.
pub const SESSIONS_PER_IP_PER_MINUTE: u32 = 10;
/// Messages per guest connection per minute.
pub const MESSAGES_PER_SESSION_PER_MINUTE: u32 = 20;
/// Messages from all guests at one address per minute.
pub const MESSAGES_PER_IP_PER_MINUTE: u32 = 60;

/// The guests' limits, per connection and per address.
pub struct Limits {
    pub sessions: RateLimiter,
    pub per_session: RateLimiter,
    pub per_ip: RateLimiter,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sessions: RateLimiter::per_minute(SESSIONS_PER_IP_PER_MINUTE),
            per_session: RateLimiter::per_minute(MESSAGES_PER_SESSION_PER_MINUTE),
            per_ip: RateLimiter::per_minute(MESSAGES_PER_IP_PER_MINUTE),
            open: Mutex::new(HashMap::new()),
        }
    }
}

/// The address guests are counted by: IPv4 as is, IPv6 by its /64 (one host usually
/// holds a whole /64, so a single address would let it rotate past the limits).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

/// One open guest connection; the address's count drops with it.
pub struct Open {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limits.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Limits {
    /// Counts a connection from `ip`, or refuses it when the address has too many.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> AppResult<Open> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| AppError::Internal(anyhow::anyhow!("guest limits poisoned")))?;
        let n = open.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_IP {
            return Err(AppError::RateLimited {
                retry_after_secs: 60,
            });
        }
        *n += 1;
        Ok(Open {
            limits: self.clone(),
            ip,
        })
    }

    pub fn housekeep(&self) {
        self.sessions.housekeep();
        self.per_session.housekeep();
        self.per_ip.housekeep();
    }
}

/// A guest session just started.
pub struct Session {
    pub principal: Principal,
    pub access: Access,
}

/// Starts a guest session with `bot_id` for a client at `ip`.
pub async fn start(state: &AppState, bot_id: &str, ip: IpAddr) -> AppResult<Session> {
    state.guests.sessions.check(&ip.to_string())?;
    let guest = Principal {
        id: format!("guest-{}", Uuid::now_v7()),
        name: Some("Guest".into()),
        kind: PrincipalKind::User,
        admin: false,
        owner: None,
        handle: None,
        picture: None,
    };
    // Created on the bot's behalf: the bot owns the conversation, the guest only talks.
    let host = Principal {
        id: "colloquy:guests".into(),
        name: None,
        kind: PrincipalKind::Service,
        admin: false,
        owner: None,
        handle: None,
        picture: None,
    };
    let created = conversations::create(
        state,
        &host,
        CreateConversation {
            creator_id: Some(bot_id.to_owned()),
            name: Some("Guest session".into()),
            participants: vec![
                ParticipantSpec::Full(NewParticipant {
                    participant_id: bot_id.to_owned(),
                    participant_type: Some("agent".into()),
                    role: None,
                    display_name: None,
                }),
                ParticipantSpec::Full(NewParticipant {
                    participant_id: guest.id.clone(),
                    participant_type: Some("user".into()),
                    role: None,
                    display_name: Some("Guest".into()),
                }),
            ],
            metadata: Some(json!({ "guest": true })),
            ..Default::default()
        },
    )
    .await?;
    let id = created.conversation.id;
    sqlx::query(
        "INSERT INTO guest_sessions (conversation_id, guest_id, bot_id, client_ip) VALUES ($1, $2, $3, $4::inet)",
    )
    .bind(id)
    .bind(&guest.id)
    .bind(bot_id)
    .bind(ip.to_string())
    .execute(&state.db)
    .await?;
    let access = Access::load(&state.db, &guest, id).await?;
    Ok(Session {
        principal: guest,
        access,
    })
}

/// The guest was active just now (a frame arrived).
pub async fn touch(state: &AppState, conversation_id: Uuid) -> AppResult<()> {
    sqlx::query("UPDATE guest_sessions SET last_active_at = now() WHERE conversation_id = $1")
        .bind(conversation_id)
        .execute(&state.db)
        .await?;
    Ok(())
}

/// Deletes sessions idle for `ttl` (no frame from the guest, no message either way), with
/// their conversations and messages; their sockets hear the conversation is gone.
pub async fn purge(state: &AppState, ttl: Duration) -> AppResult<u64> {
    let gone: Vec<(Uuid, String)> = sqlx::query_as(
        r#"
        DELETE FROM conversations c
        USING guest_sessions g
        WHERE g.conversation_id = c.id
          AND greatest(g.last_active_at, c.last_message_at) < now() - make_interval(secs => $1)
        RETURNING c.id, c.platform_conversation_id
        "#,
    )
    .bind(ttl.as_secs_f64())
    .fetch_all(&state.db)
    .await?;
    for (id, room) in &gone {
        state.events.publish(Event::new(
            EventKind::ConversationDeleted,
            *id,
            room.clone(),
            json!({ "id": id, "conversation_id": id }),
            Default::default(),
        ));
    }
    Ok(gone.len() as u64)
}

/// How often the purge runs: a quarter of the TTL, at least every minute (contract §5).
pub fn purge_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Purges idle guest sessions until shutdown (only when guests are on).
pub fn spawn(state: &AppState) -> Option<tokio::task::JoinHandle<()>> {
    state.config.guest_bot_id.as_ref()?;
    let state = state.clone();
    Some(tokio::spawn(async move {
        let ttl = state.config.guest_session_ttl;
        let mut tick = tokio::time::interval(purge_interval(ttl));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !state.is_ready() { continue; }
                    state.guests.housekeep();
                    match purge(&state, ttl).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(sessions = n, "idle guest sessions deleted"),
                        Err(e) => tracing::warn!(error = %e, "guest session purge failed; retrying"),
                    }
                }
                _ = state.shutdown.cancelled() => return,
            }
        }
    }))
}
