//! Socket.IO transport: handshake auth, then each event parses its payload, calls the
//! core and answers with an ack (or an `error` event when the client asked for none).

use std::{convert::Infallible, sync::Arc, time::Instant};

use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, SocketRef, State, TryData},
    handler::{ConnectHandler, FromMessageParts},
    layer::SocketIoLayer,
    socket::Socket,
};
use uuid::Uuid;

use super::{
    cursor::Cursor,
    payload,
    protocol::{self, Claimed, HandshakeAuth, Positions, Target},
    room, socket_room,
};
use crate::{
    auth::{Principal, PrincipalKind},
    core::{
        access::Access,
        conversations,
        events::{Event, EventKind, Origin},
        history,
        messages::{self, SendMessage, SendOptions},
        participants::{self, NewParticipant},
        reads::{self, MarkRead},
        validate,
    },
    error::{AppError, AppResult},
    state::AppState,
};

/// Most messages a `join {since_seq}` ack carries; beyond that, page with the history API.
pub const MAX_GAP_FILL: i64 = 1000;
/// Most messages one resume sends (over all its conversations), or one ack-less
/// `join {since_seq}`; further back, the client reads history.
pub const MAX_RESUME: i64 = 10_000;
/// Most conversations one resume names.
pub const MAX_RESUME_CONVERSATIONS: usize = 1000;
/// Rows per log read for a backlog.
const BACKLOG_PAGE: i64 = 200;
/// Most bytes (text, metadata, attachments) one backlog read holds; past it the client
/// pages the rest with the history API (`has_more`, `complete: false`).
pub const MAX_BACKLOG_BYTES: usize = 8 * 1024 * 1024;

pub fn layer(state: &AppState) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .with_state(state.clone())
        .max_payload(1024 * 1024)
        .ws_max_message_size(1024 * 1024)
        .max_buffer_size(256)
        .build_layer();
    for ns in namespaces(state) {
        io.ns(ns, on_connect.with(authenticate));
    }
    (layer, io)
}

pub fn namespaces(state: &AppState) -> Vec<String> {
    let mut namespaces = vec!["/".to_owned()];
    namespaces.extend(state.config.extra_namespaces());
    namespaces
}

/// Token from `auth.token`, the `Authorization` header or `?token=`.
async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), AppError> {
    let parts = socket.req_parts();
    let auth: HandshakeAuth = match auth {
        Ok(a) if a.is_object() => {
            validate::untrusted_json(&a)?;
            protocol::parse(a)?
        }
        _ => HandshakeAuth::default(),
    };
    // The socket's cursor exists before any handler or broadcast can reach it.
    let cursor = Cursor::default();
    socket.extensions.insert(cursor.clone());
    if let Some(resume) = auth.resume {
        // Live messages of the conversations to resume wait from now on, so a room the
        // socket joins before its resume runs (an agent's auto-join, a client's own
        // `join` in its connect callback) cannot get ahead of the missed ones.
        for id in resume.keys().filter_map(|k| Uuid::parse_str(k).ok()) {
            cursor.hold(id);
        }
        socket.extensions.insert(PendingResume(resume));
    }
    let from_auth = auth.token;
    let from_header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::to_owned);
    let from_query = parts.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_owned)
    });
    match from_auth.or(from_header).or(from_query) {
        Some(token) => {
            let principal = state.verifier.verify(token.trim())?;
            crate::core::profiles::remember_claims(&state, &principal).await?;
            // Every socket of a principal hears its inbox (contract §4).
            socket.join(super::inbox::room(&principal.id));
            state
                .events
                .interest()
                .hint(crate::core::events::Topic::Principal(principal.id.clone()));
            socket.extensions.insert(principal);
            register(&socket);
            Ok(())
        }
        None if state.config.socket_allow_anonymous => {
            socket.extensions.insert(Anonymous);
            register(&socket);
            Ok(())
        }
        None => Err(AppError::Unauthorized(
            "missing token: connect with auth: {token}, an Authorization header or ?token=".into(),
        )),
    }
}

/// Registers an event whose handler is `op(&state, &socket, payload) -> AppResult<Value>`,
/// answered through [`respond`].
macro_rules! on_event {
    ($socket:expr, $name:literal, $op:path) => {
        $socket.on(
            $name,
            async |s: SocketRef,
                   ExactNumbers(numbers): ExactNumbers,
                   TryData(d): TryData<Value>,
                   ack: Ack,
                   State(st): State<AppState>| {
                let r = match numbers.and_then(|()| data(d)) {
                    Ok(d) => $op(&st, &s, d).await,
                    Err(e) => Err(e),
                };
                respond(&s, ack, $name, r);
            },
        )
    };
}

/// Registers the socket's event handlers. This runs in the connect middleware, which
/// socketioxide awaits before it sends the CONNECT packet: the connect handler itself is
/// spawned after that packet, so a client emitting in its `connect` callback (as browser
/// widgets do) could otherwise reach a socket with no handlers yet and lose the event.
fn register(socket: &SocketRef) {
    socket.join(socket_room(&socket.id.to_string()));
    crate::metrics::connection_opened("socketio");
    socket.on_disconnect(async |_: SocketRef| crate::metrics::connection_closed("socketio"));

    socket.on(
        "join",
        async |s: SocketRef,
               ExactNumbers(numbers): ExactNumbers,
               TryData(d): TryData<Value>,
               ack: Ack,
               State(st): State<AppState>| {
            let wants_ack = ack.0;
            let r = match numbers.and_then(|()| data(d)) {
                Ok(d) => join(&st, &s, d, wants_ack).await,
                Err(e) => Err(e),
            };
            answer_join(&s, ack, "join", r).await;
        },
    );
    on_event!(socket, "leave", leave);
    on_event!(socket, "resume", resume_event);
    socket.on(
        "join_all",
        async |s: SocketRef, ack: Ack, State(st): State<AppState>| {
            let r = match identity(&st, &s, &Claimed::default()) {
                Ok(p) => join_all(&st, &s, &p).await.map(|n| json!({ "joined": n })),
                Err(e) => Err(e),
            };
            respond(&s, ack, "join_all", r);
        },
    );
    socket.on(
        "chat_message",
        async |s: SocketRef,
               ExactNumbers(numbers): ExactNumbers,
               TryData(d): TryData<Value>,
               ack: Ack,
               State(st): State<AppState>| {
            let started = Instant::now();
            // Until the ack is out: shutdown waits for it.
            let _in_flight = st.send_in_flight();
            let r = match numbers.and_then(|()| data(d)) {
                Ok(d) => chat_message_event(&st, &s, d).await,
                Err(e) => Err(e),
            };
            crate::metrics::send_acked("socketio", started.elapsed());
            respond(&s, ack, "chat_message", r);
        },
    );
    socket.on(
        "message",
        async |s: SocketRef,
               ExactNumbers(numbers): ExactNumbers,
               TryData(d): TryData<Value>,
               ack: Ack,
               State(st): State<AppState>| {
            let wants_ack = ack.0;
            let _in_flight = st.send_in_flight();
            let r = match numbers.and_then(|()| data(d)) {
                Ok(d) => eliza_envelope(&st, &s, d, wants_ack).await,
                Err(e) => Err(e),
            };
            answer_join(&s, ack, "message", r).await;
        },
    );
    on_event!(socket, "typing", typing);
    on_event!(socket, "mark_read", mark_read);
    on_event!(socket, "complete", complete);
}

async fn on_connect(socket: SocketRef, State(state): State<AppState>) {
    // A resume named in the handshake: back into the rooms, missed messages first, then
    // `resumed` says where each conversation stands.
    if let Some(PendingResume(positions)) = socket.extensions.remove::<PendingResume>() {
        let held: Vec<Uuid> = positions
            .keys()
            .filter_map(|k| Uuid::parse_str(k).ok())
            .collect();
        let outcome = match identity(&state, &socket, &Claimed::default()) {
            Ok(principal) => resume(&state, &socket, &principal, positions).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(outcome) => {
                let _ = socket.emit("resumed", &outcome);
            }
            Err(e) => {
                // Nothing resumed: what was held for it goes.
                let cursor = Cursor::of(&socket);
                for id in held {
                    cursor.forget(id);
                }
                let mut body = serde_json::to_value(e.body()).unwrap_or(Value::Null);
                body["event"] = json!("resume");
                let _ = socket.emit("error", &body);
            }
        }
    }
    // Agents are joined to every conversation they are in, so they hear users at once.
    if let Some(p) = socket.extensions.get::<Principal>()
        && p.kind == PrincipalKind::Agent
        && let Err(e) = join_all(&state, &socket, &p).await
    {
        tracing::warn!(error = %e, "auto-join for agent failed");
    }
}

/// The handshake's `auth.resume`, kept until the connect handler runs it.
#[derive(Clone)]
struct PendingResume(Positions);

/// What a join answers, and the hold to end once the answer is out.
type Joined = (Value, Option<Release>);

/// A join with `since_seq` held the socket's live messages of the conversation while it
/// read the log: they are released after the ack (which carries the log read), so the
/// client sees the ack first and the live stream from the next `seq` on.
struct Release {
    conversation_id: Uuid,
    since: i64,
    backlog: Vec<crate::core::messages::Message>,
    /// No ack callback to carry the backlog: it goes out as `messageBroadcast`s.
    emit_backlog: bool,
}

async fn answer_join(socket: &SocketRef, ack: Ack, event: &str, result: AppResult<Joined>) {
    let (result, release) = match result {
        Ok((data, release)) => (Ok(data), release),
        Err(e) => (Err(e), None),
    };
    respond(socket, ack, event, result);
    if let Some(r) = release {
        let cursor = Cursor::of(socket);
        cursor
            .release(
                socket,
                r.conversation_id,
                r.since,
                &r.backlog,
                r.emit_backlog,
            )
            .await;
    }
}

/// What a join from a position read from the log, with the socket's live messages held.
struct Held {
    /// The position, clamped to the conversation's end.
    since: i64,
    backlog: Vec<crate::core::messages::Message>,
    /// The backlog is everything up to the access check's `last_seq`.
    complete: bool,
}

/// Joins `conversation_id` from position `since` (a join with `since_seq`, a resume):
/// holds the socket's live messages so they wait behind the log read, joins the room
/// (access checked), and reads what came after `since` (up to `max`). On failure the
/// socket is back out of the room and nothing stays held. The caller releases the hold.
async fn join_held(
    state: &AppState,
    socket: &SocketRef,
    principal: &Principal,
    conversation_id: Uuid,
    since: i64,
    max: i64,
) -> AppResult<Held> {
    let cursor = Cursor::of(socket);
    cursor.hold(conversation_id);
    let access = match join_checked(state, socket, principal, conversation_id).await {
        Ok(access) => access,
        Err(e) => {
            cursor.forget(conversation_id);
            return Err(e);
        }
    };
    // A position past the end (a stale client, a restored database) stands at the end.
    let since = since.min(access.last_seq);
    match read_backlog(state, conversation_id, since, access.last_seq, max).await {
        Ok((backlog, complete)) => {
            crate::metrics::resumed_messages(backlog.len());
            Ok(Held {
                since,
                backlog,
                complete,
            })
        }
        Err(e) => {
            socket.leave(room(conversation_id));
            cursor.forget(conversation_id);
            Err(e)
        }
    }
}

/// Reads what a client missed after `since`, up to `max` messages; `true` when that is
/// everything.
async fn read_backlog(
    state: &AppState,
    conversation_id: Uuid,
    since: i64,
    until: i64,
    max: i64,
) -> AppResult<(Vec<crate::core::messages::Message>, bool)> {
    let _reading = state
        .backlog_reads
        .acquire()
        .await
        .map_err(|e| AppError::Unavailable(e.into()))?;
    let mut backlog = vec![];
    let mut bytes = 0;
    let mut after = since;
    loop {
        if after >= until {
            return Ok((backlog, true));
        }
        let want = (max - backlog.len() as i64).min(BACKLOG_PAGE);
        if want <= 0 || bytes >= MAX_BACKLOG_BYTES {
            return Ok((backlog, false));
        }
        let page = history::since(state, conversation_id, after, want).await?;
        let full = page.len() as i64 == want;
        for message in page {
            // Newer than the access check: those come live, through the hold.
            if message.seq > until {
                return Ok((backlog, true));
            }
            after = message.seq;
            bytes += message.text.len()
                + serde_json::to_vec(&message.metadata).map_or(0, |v| v.len())
                + serde_json::to_vec(&message.attachments).map_or(0, |v| v.len());
            backlog.push(message);
        }
        if !full {
            return Ok((backlog, true));
        }
    }
}

/// Puts the socket back into each named conversation it may still read, sends what it
/// missed there in `seq` order before any newer message, and says where each stands.
async fn resume(
    state: &AppState,
    socket: &SocketRef,
    principal: &Principal,
    positions: Positions,
) -> AppResult<Value> {
    if positions.len() > MAX_RESUME_CONVERSATIONS {
        return Err(AppError::invalid_field(
            "conversations",
            format!("at most {MAX_RESUME_CONVERSATIONS} conversations per resume"),
        ));
    }
    // A resume reads the log: it counts against the principal's rate limit.
    state.limiter.check(&principal.id)?;
    let mut resumed = vec![];
    let mut failed = vec![];
    let mut budget = MAX_RESUME;
    let mut seen = std::collections::HashSet::new();
    for (key, since) in positions {
        match resume_one(
            state,
            socket,
            principal,
            &key,
            since,
            &mut budget,
            &mut seen,
        )
        .await
        {
            Ok(done) => resumed.push(done),
            Err(e) => failed.push(
                json!({ "conversation_id": key, "code": e.code(), "message": e.to_string() }),
            ),
        }
    }
    Ok(json!({ "conversations": resumed, "failed": failed }))
}

async fn resume_one(
    state: &AppState,
    socket: &SocketRef,
    principal: &Principal,
    key: &str,
    since: i64,
    budget: &mut i64,
    seen: &mut std::collections::HashSet<Uuid>,
) -> AppResult<Value> {
    if since < 0 {
        return Err(AppError::invalid_field("since", "must not be negative"));
    }
    validate::id("conversation_id", key)?;
    let conversation_id = payload::resolve(state, &Target::id(key)).await?;
    if !seen.insert(conversation_id) {
        return Err(AppError::validation("this conversation is named twice"));
    }
    let Held {
        since,
        backlog,
        complete,
    } = join_held(state, socket, principal, conversation_id, since, *budget).await?;
    *budget -= backlog.len() as i64;
    let last = Cursor::of(socket)
        .release(socket, conversation_id, since, &backlog, true)
        .await
        .ok_or_else(|| AppError::Unavailable(anyhow::anyhow!("the socket closed")))?;
    Ok(json!({
        "conversation_id": conversation_id,
        "from_seq": since,
        "last_seq": last,
        "delivered": backlog.len(),
        // `false`: more was missed than one resume sends; read the rest from history.
        "complete": complete,
    }))
}

async fn resume_event(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    let principal = identity(state, socket, &Claimed::default())?;
    let request: protocol::Resume = protocol::parse(p)?;
    resume(state, socket, &principal, request.conversations).await
}

/// The packet's numbers checked on its raw text (contract §3: numbers that would not read
/// back exactly are refused); the parsed payload has already lost the digits.
struct ExactNumbers(AppResult<()>);

impl<A: Adapter> FromMessageParts<A> for ExactNumbers {
    type Error = Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        v: &mut socketioxide::handler::Value,
        _: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(ExactNumbers(match v {
            socketioxide::handler::Value::Str(raw, _) => validate::exact_numbers(raw.as_str()),
            socketioxide::handler::Value::Bytes(_) => Ok(()),
        }))
    }
}

/// Whether the client asked for an ack, with the ack sender itself.
struct Ack(bool, AckSender);

impl<A: Adapter> FromMessageParts<A> for Ack
where
    AckSender: FromMessageParts<A, Error = Infallible>,
{
    type Error = Infallible;
    fn from_message_parts(
        s: &Arc<Socket<A>>,
        v: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let sender = AckSender::from_message_parts(s, v, ack_id)?;
        Ok(Ack(ack_id.is_some(), sender))
    }
}

/// Every payload is untrusted input (no U+0000 anywhere, bounded nesting) before a handler
/// reads it. Payloads that are not JSON at all become `Null`, which every event rejects
/// clearly.
fn data<E>(d: Result<Value, E>) -> AppResult<Value> {
    let value = d.unwrap_or(Value::Null);
    validate::untrusted_json(&value)?;
    Ok(value)
}

/// Acks success or error; without an ack callback, errors go out as an `error` event.
fn respond(socket: &SocketRef, Ack(wanted, ack): Ack, event: &str, result: AppResult<Value>) {
    let body = match result {
        Ok(data) => json!({ "success": true, "data": data }),
        Err(e) => {
            match &e {
                AppError::Internal(_) => tracing::error!(error = ?e, event, "socket event failed"),
                AppError::Unavailable(_) => {
                    tracing::warn!(error = %e, event, "socket event failed")
                }
                _ => {}
            }
            if matches!(e, AppError::RateLimited { .. }) {
                crate::metrics::rate_limited("socketio");
            }
            let mut body = serde_json::to_value(e.body()).unwrap_or(Value::Null);
            body["event"] = json!(event);
            if !wanted {
                let _ = socket.emit("error", &body);
                return;
            }
            body
        }
    };
    if wanted
        && let Err(socketioxide::SendError::Socket(socketioxide::SocketError::InternalChannelFull)) =
            ack.send(&body)
    {
        // An answer that cannot be delivered must not vanish: the client, disconnected,
        // reconnects, resumes and retries with its client id.
        crate::metrics::slow_consumer_disconnected();
        let _ = socket.clone().disconnect();
    }
}

/// Who is acting: the token's principal, or in legacy anonymous mode the payload's user.
fn identity(state: &AppState, socket: &SocketRef, claimed: &Claimed) -> AppResult<Principal> {
    if let Some(principal) = socket.extensions.get::<Principal>() {
        return Ok(principal);
    }
    if !state.config.socket_allow_anonymous {
        return Err(AppError::Unauthorized("not authenticated".into()));
    }
    let id = claimed.id().ok_or_else(|| {
        AppError::validation("anonymous sockets must name userId (join) or senderId (send)")
    })?;
    validate::id("userId", id)?;
    let principal = Principal {
        id: id.to_owned(),
        name: claimed.name().map(str::to_owned),
        kind: PrincipalKind::User,
        admin: false,
        owner: None,
        handle: None,
        picture: None,
    };
    socket.extensions.insert(principal.clone());
    Ok(principal)
}

async fn join(
    state: &AppState,
    socket: &SocketRef,
    p: Value,
    wants_ack: bool,
) -> AppResult<Joined> {
    let p: protocol::Join = protocol::parse(p)?;
    let principal = identity(state, socket, &p.claimed)?;
    let conversation_id = payload::resolve(state, &p.target).await?;
    let since = p.since_seq();
    if since.is_some_and(|s| s < 0) {
        return Err(AppError::invalid_field("since_seq", "must not be negative"));
    }
    if since.is_some() {
        // Reading the log for a client counts against its rate limit.
        state.limiter.check(&principal.id)?;
    }
    if state.config.socket_allow_anonymous && socket.extensions.get::<Anonymous>().is_some() {
        // Legacy clients are not registered anywhere else: joining makes them a participant.
        let mut conn = state.db.acquire().await?;
        participants::insert(
            &mut conn,
            conversation_id,
            &NewParticipant::member(principal.id.clone()),
        )
        .await?;
    }
    let Some(since) = since else {
        let access = join_checked(state, socket, &principal, conversation_id).await?;
        Cursor::of(socket).start(conversation_id, access.last_seq);
        // Read after the join: the `last_seq` the ack reports is never below where the
        // socket's live stream starts, so a client that reads history up to it and takes
        // the rest live has no hole.
        let conversation = match conversations::get(state, &principal, conversation_id).await {
            Ok(conversation) => conversation,
            Err(e) => {
                socket.leave(room(conversation_id));
                Cursor::of(socket).forget(conversation_id);
                return Err(e);
            }
        };
        let data = json!({ "conversation": conversation, "conversation_id": conversation_id });
        return Ok((data, None));
    };
    let conversation = conversations::get(state, &principal, conversation_id).await?;
    let max = if wants_ack { MAX_GAP_FILL } else { MAX_RESUME };
    let Held {
        since,
        backlog: missed,
        complete,
    } = join_held(state, socket, &principal, conversation_id, since, max).await?;
    let mut data = json!({ "conversation": conversation, "conversation_id": conversation_id });
    data["has_more"] = json!(!complete && wants_ack);
    if wants_ack {
        data["messages"] = serde_json::to_value(&missed).map_err(anyhow::Error::from)?;
    }
    let release = Release {
        conversation_id,
        since,
        backlog: missed,
        emit_backlog: !wants_ack,
    };
    Ok((data, Some(release)))
}

/// Marks sockets that connected without a token.
#[derive(Clone)]
struct Anonymous;

async fn leave(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    let p: protocol::Join = protocol::parse(p)?;
    identity(state, socket, &p.claimed)?;
    let conversation_id = payload::resolve(state, &p.target).await?;
    socket.leave(room(conversation_id));
    Cursor::of(socket).forget(conversation_id);
    Ok(json!({ "conversation_id": conversation_id, "left": true }))
}

async fn join_all(state: &AppState, socket: &SocketRef, principal: &Principal) -> AppResult<usize> {
    let ids: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT conversation_id FROM participants WHERE participant_id = $1 LIMIT 10000",
    )
    .bind(&principal.id)
    .fetch_all(&state.db)
    .await?;
    let joined: Vec<Uuid> = ids.into_iter().map(|(id,)| id).collect();
    for id in &joined {
        socket.join(room(*id));
    }
    // Read after the rooms were joined: each position is one the socket's live stream
    // reaches from below, so nothing after it is missed. A removal committed between the
    // list and the joins found no socket to cut: the rooms joined are checked once more,
    // and those no longer the principal's are left.
    let still: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT p.conversation_id, c.last_seq FROM participants p \
         JOIN conversations c ON c.id = p.conversation_id \
         WHERE p.participant_id = $1 AND p.conversation_id = ANY($2)",
    )
    .bind(&principal.id)
    .bind(&joined)
    .fetch_all(&state.db)
    .await?;
    let cursor = Cursor::of(socket);
    for (id, last_seq) in &still {
        cursor.start(*id, *last_seq);
        state.events.watch(*id, Some(*last_seq));
    }
    let still: std::collections::HashSet<Uuid> = still.into_iter().map(|(id, _)| id).collect();
    for id in joined.iter().filter(|id| !still.contains(id)) {
        socket.leave(room(*id));
        cursor.forget(*id);
    }
    Ok(still.len())
}

/// Joins the room, then checks access once more: a removal that committed between the
/// caller's access check and the join found no socket to cut, so it is cut here.
async fn join_checked(
    state: &AppState,
    socket: &SocketRef,
    principal: &Principal,
    conversation_id: Uuid,
) -> AppResult<Access> {
    // Checked before the join too: a socket that may not read the conversation is never
    // in its room, not even for the length of a query.
    Access::load(&state.db, principal, conversation_id).await?;
    socket.join(room(conversation_id));
    match Access::load(&state.db, principal, conversation_id).await {
        Ok(access) => {
            // The delivery stage follows the conversation from where it stands now (a
            // position the server read, never one a client named).
            state.events.watch(conversation_id, Some(access.last_seq));
            Ok(access)
        }
        Err(e) => {
            socket.leave(room(conversation_id));
            Err(e)
        }
    }
}

async fn chat_message(
    state: &AppState,
    socket: &SocketRef,
    p: protocol::ChatMessage,
    echo: bool,
) -> AppResult<Value> {
    let principal = identity(state, socket, &p.claimed)?;
    state.limiter.check(&principal.id)?;
    let text = p
        .text()
        .ok_or_else(|| AppError::invalid_field("message", "is required"))?
        .to_owned();
    let conversation_id = payload::resolve(state, &p.target).await?;
    let source = match p.source.as_deref() {
        Some(source) => {
            validate::max_chars("source", source, 64)?;
            source.to_owned()
        }
        None => "socketio".to_owned(),
    };
    let input = SendMessage {
        text,
        client_message_id: p.client_message_id().map(str::to_owned),
        sender_id: p.claimed.sender_id().map(str::to_owned),
        sender_name: p.claimed.sender_name().map(str::to_owned),
        sender_type: p.sender_type().map(str::to_owned),
        thread_id: p.thread_id().map(str::to_owned),
        attachments: p.attachments.unwrap_or_default(),
        metadata: p.metadata.filter(|m| !m.is_null()),
    };
    let options = SendOptions {
        origin: Origin {
            socket_id: Some(socket.id.to_string()),
            echo,
        },
        source: Some(source),
    };
    let sent = messages::send(state, &principal, conversation_id, input, options).await?;
    serde_json::to_value(sent.message).map_err(|e| anyhow::Error::from(e).into())
}

async fn chat_message_event(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    chat_message(state, socket, protocol::parse(p)?, false).await
}

/// elizaOS envelope: `{type: 1, payload}` joins, `{type: 2, payload}` sends.
async fn eliza_envelope(
    state: &AppState,
    socket: &SocketRef,
    p: Value,
    wants_ack: bool,
) -> AppResult<Joined> {
    let envelope: protocol::Envelope = protocol::parse(p)?;
    match envelope.kind {
        1 => join(state, socket, envelope.payload, wants_ack).await,
        2 => eliza_send(state, socket, protocol::parse(envelope.payload)?)
            .await
            .map(|v| (v, None)),
        _ => Err(AppError::invalid_field(
            "type",
            "must be 1 (join) or 2 (send)",
        )),
    }
}

/// elizaOS type 2: a send, with the echo rules of contract §4.
async fn eliza_send(
    state: &AppState,
    socket: &SocketRef,
    body: protocol::ChatMessage,
) -> AppResult<Value> {
    let principal = identity(state, socket, &body.claimed)?;
    // A client echoing someone else's broadcast back to us.
    if body.claimed.sender_id().is_some_and(|s| s != principal.id) && !principal.is_service() {
        return Ok(
            json!({ "ignored": true, "reason": "senderId is not the caller (echoed broadcast)" }),
        );
    }
    let has_client_id = body.has_message_id();
    if !has_client_id && is_recent_repeat(state, &principal, &body).await? {
        return Ok(
            json!({ "ignored": true, "reason": "repeat of a message sent in the last minute" }),
        );
    }
    // elizaOS clients expect replies in the room they send to, joined or not yet.
    if let Ok(conversation_id) = payload::resolve(state, &body.target).await
        && Access::load(&state.db, &principal, conversation_id)
            .await
            .is_ok()
    {
        let access = join_checked(state, socket, &principal, conversation_id).await?;
        Cursor::of(socket).start(conversation_id, access.last_seq);
    }
    chat_message(state, socket, body, has_client_id).await
}

async fn is_recent_repeat(
    state: &AppState,
    principal: &Principal,
    body: &protocol::ChatMessage,
) -> AppResult<bool> {
    let Some(text) = body.text() else {
        return Ok(false);
    };
    let Ok(conversation_id) = payload::resolve(state, &body.target).await else {
        return Ok(false);
    };
    let sender = body.claimed.sender_id().unwrap_or(&principal.id);
    let (repeat,): (bool,) = sqlx::query_as(
        r#"
        SELECT EXISTS (
            SELECT 1 FROM messages
            WHERE conversation_id = $1 AND sender_id = $2 AND text = $3
              AND created_at > now() - interval '1 minute' AND deleted_at IS NULL)
        "#,
    )
    .bind(conversation_id)
    .bind(sender)
    .bind(text)
    .fetch_one(&state.db)
    .await?;
    Ok(repeat)
}

async fn typing(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    let p: protocol::Typing = protocol::parse(p)?;
    let principal = identity(state, socket, &p.claimed)?;
    let conversation_id = payload::resolve(state, &p.target).await?;
    let is_typing = p.is_typing();
    state.typing_limiter.check(&principal.id)?;
    let access = Access::load(&state.db, &principal, conversation_id).await?;
    access.require_write()?;
    state.events.publish(Event::new(
        EventKind::Typing,
        conversation_id,
        access.room,
        json!({ "conversation_id": conversation_id, "user_id": principal.id, "is_typing": is_typing }),
        Origin {
            socket_id: Some(socket.id.to_string()),
            echo: false,
        },
    ));
    Ok(json!({ "conversation_id": conversation_id, "is_typing": is_typing }))
}

async fn mark_read(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    let p: protocol::MarkRead = protocol::parse(p)?;
    let principal = identity(state, socket, &p.claimed)?;
    let conversation_id = payload::resolve(state, &p.target).await?;
    let input = MarkRead {
        user_id: None,
        up_to_seq: p.up_to_seq(),
    };
    let origin = Origin {
        socket_id: Some(socket.id.to_string()),
        echo: false,
    };
    let read = reads::mark_read(state, &principal, conversation_id, input, origin).await?;
    serde_json::to_value(read).map_err(|e| anyhow::Error::from(e).into())
}

async fn complete(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    let p: protocol::Named = protocol::parse(p)?;
    let principal = identity(state, socket, &p.claimed)?;
    let conversation_id = payload::resolve(state, &p.target).await?;
    let access = Access::load(&state.db, &principal, conversation_id).await?;
    access.require_write()?;
    let data =
        payload::message_complete(&access.room, &json!(conversation_id), &json!(principal.id));
    state.events.publish(Event::new(
        EventKind::MessageComplete,
        conversation_id,
        access.room,
        data.clone(),
        Origin {
            socket_id: Some(socket.id.to_string()),
            echo: true,
        },
    ));
    Ok(data)
}
