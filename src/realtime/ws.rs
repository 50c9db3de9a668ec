//! Raw WebSocket `/ws`: one conversation per connection, JSON frames.

use axum::{
    extract::{
        ConnectInfo, RawQuery, State, WebSocketUpgrade,
        ws::rejection::WebSocketUpgradeRejection,
        ws::{CloseFrame, Message as Frame, WebSocket, close_code},
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::payload;
use crate::{
    auth::Principal,
    core::{
        access::Access,
        events::{Event, EventKind, Origin},
        history,
        messages::{self, SendMessage, SendOptions},
        validate,
    },
    error::{AppError, AppResult},
    state::AppState,
};

#[derive(Deserialize)]
pub struct WsParams {
    session_id: Option<String>,
    token: Option<String>,
    /// Reconnecting: the last `seq` the client has; what came after is sent first.
    since_seq: Option<i64>,
}

/// What a session starts from: who, where, and from which `seq` on.
struct Prepared {
    principal: Principal,
    access: Access,
    since_seq: Option<i64>,
    /// An anonymous guest's session (contract §5): its address, held open while it lasts.
    guest: Option<Guest>,
}

struct Guest {
    ip: std::net::IpAddr,
    _open: crate::core::guests::Open,
}

/// Always upgrades a real WebSocket request, then refuses in-band when it must (contract
/// §5): an `error` frame with the code, and a close code page code can tell apart (4401
/// no or bad token, 4403 no access, 4404 unknown session), where a refused HTTP upgrade
/// would only show the page a bare 1006.
pub async fn handler(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws.max_message_size(256 * 1024),
        Err(_) => {
            return AppError::validation("expected a WebSocket upgrade request").into_response();
        }
    };
    // Subscribe before the access check: a removal committed after the check is then
    // still seen by the session, never lost in the gap before the upgrade completes.
    let events = state.events.subscribe();
    let prepared = prepare(&state, query.as_deref().unwrap_or_default(), &headers, peer).await;
    ws.on_upgrade(move |socket| async move {
        match prepared {
            Ok(prepared) => session(state, prepared, events, socket).await,
            Err(e) => refuse(socket, &e).await,
        }
    })
}

async fn prepare(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
) -> AppResult<Prepared> {
    if !state.is_ready() {
        return Err(AppError::Unavailable(anyhow::anyhow!(
            "database not migrated yet"
        )));
    }
    let params: WsParams = serde_urlencoded::from_str(query)
        .map_err(|e| AppError::validation(format!("the query string could not be read: {e}")))?;
    if params.since_seq.is_some_and(|s| s < 0) {
        return Err(AppError::invalid_field("since_seq", "must not be negative"));
    }
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if params.token.is_none()
        && authorization.is_none()
        && let Some(bot) = &state.config.guest_bot_id
    {
        // No credentials at all: a guest, with the default bot only.
        let ip = crate::core::guests::client_key(peer.ip());
        let open = state.guests.open(ip)?;
        let session = crate::core::guests::start(state, bot, ip).await?;
        return Ok(Prepared {
            principal: session.principal,
            access: session.access,
            since_seq: None,
            guest: Some(Guest { ip, _open: open }),
        });
    }
    let principal = match params.token {
        Some(t) => state.verifier.verify(&t)?,
        None => state.verifier.verify_bearer(
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )?,
    };
    crate::core::profiles::remember_claims(state, &principal).await?;
    let session = params
        .session_id
        .ok_or_else(|| AppError::invalid_field("session_id", "is required"))?;
    validate::id("session_id", &session)?;
    let conversation_id = payload::resolve(state, &super::protocol::Target::id(&session)).await?;
    let access = Access::load(&state.db, &principal, conversation_id).await?;
    if params.since_seq.is_some() {
        // Reading the log for a client counts against its rate limit.
        state.limiter.check(&principal.id)?;
    }
    Ok(Prepared {
        principal,
        access,
        since_seq: params.since_seq,
        guest: None,
    })
}

/// The close code a refusal or a revocation ends the socket with.
fn close_code(e: &AppError) -> u16 {
    match e {
        AppError::Unauthorized(_) => 4401,
        AppError::Forbidden(_) => 4403,
        AppError::NotFound(_) => 4404,
        AppError::Validation { .. } | AppError::Unprocessable { .. } => 4400,
        AppError::RateLimited { .. } => 4429,
        AppError::Unavailable(_) => close_code::AGAIN,
        _ => close_code::ERROR,
    }
}

/// Sends the error frame, then closes with the matching code and a short reason.
async fn refuse(mut socket: WebSocket, e: &AppError) {
    let _ = socket.send(error_frame(e)).await;
    let _ = socket.send(close(close_code(e), &e.to_string())).await;
    // Give the client a moment to answer the close, so it sees a clean close handshake.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

fn close(code: u16, reason: &str) -> Frame {
    // A close reason is at most 123 bytes; cut on a character boundary.
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Frame::Close(Some(CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    }))
}

fn frame(v: &Value) -> Frame {
    Frame::Text(v.to_string().into())
}

fn error_frame(e: &AppError) -> Frame {
    frame(&json!({ "type": "error", "code": e.code(), "message": e.to_string() }))
}

/// The frames one core event becomes for a `/ws` client.
fn frames_for(event: &Event, session: &str, me: &str) -> Vec<Value> {
    let d = &event.data;
    match event.kind {
        EventKind::MessageCreated => {
            let mut out = vec![json!({
                "type": "message",
                "id": d["id"],
                "seq": d["seq"],
                "session_id": session,
                "conversation_id": event.conversation_id,
                // Seed 004 reads `sender: "user" | "bot"`; the name is in `sender_name`.
                "sender": if d["sender_type"] == "agent" { "bot" } else { "user" },
                "sender_name": d["sender_name"],
                "sender_id": d["sender_id"],
                "sender_type": d["sender_type"],
                "content": d["text"],
                "client_message_id": d["client_message_id"],
                "timestamp": d["created_at"],
            })];
            if let Some(s) = d["metadata"]["suggestions"]
                .as_array()
                .filter(|s| !s.is_empty())
            {
                out.push(json!({ "type": "suggestion", "session_id": session, "suggestions": s }));
            }
            out
        }
        EventKind::Typing if d["user_id"] != me => vec![json!({
            "type": "typing", "session_id": session, "user_id": d["user_id"], "is_typing": d["is_typing"],
        })],
        EventKind::MessageStream => vec![json!({
            "type": "messageStream", "session_id": session, "conversation_id": event.conversation_id,
            "stream_id": d["stream_id"], "agent_id": d["agent_id"], "index": d["index"], "delta": d["delta"],
        })],
        EventKind::StreamError => vec![json!({
            "type": "error", "session_id": session, "code": d["code"], "message": d["message"],
            "stream_id": d["stream_id"], "agent_id": d["agent_id"],
        })],
        _ => vec![],
    }
}

/// Sends the messages after `last` (up to `until`, exclusive, when given) from the log, and
/// moves `last` on. `false`: the socket is gone.
async fn send_from_log(
    state: &AppState,
    access: &Access,
    tx: &mut futures::stream::SplitSink<WebSocket, Frame>,
    last: &mut i64,
    until: Option<i64>,
) -> bool {
    loop {
        let limit = until.map_or(1000, |u| (u - *last - 1).clamp(0, 1000));
        if limit == 0 {
            return true;
        }
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            history::since(state, access.conversation_id, *last, limit),
        )
        .await;
        let Ok(Ok(messages)) = read else {
            // Skipping the hole would break the session's stream: close it instead
            // (1013, try again), and the client reconnects with its `since_seq`.
            tracing::warn!(conversation_id = %access.conversation_id, "could not read missed messages for a /ws session; closing it");
            let _ = tx
                .send(close(
                    close_code::AGAIN,
                    "missed messages could not be read; reconnect with since_seq",
                ))
                .await;
            return false;
        };
        let full = messages.len() as i64 == limit;
        crate::metrics::delivery_gap_filled(messages.len());
        for message in messages {
            *last = message.seq;
            let event = super::delivery::from_log(&message);
            for f in frames_for(&event, &access.room, "") {
                if tx.send(frame(&f)).await.is_err() {
                    return false;
                }
            }
        }
        if !full || until.is_some_and(|u| *last + 1 >= u) {
            return true;
        }
    }
}

async fn session(
    state: AppState,
    Prepared {
        principal,
        access,
        since_seq,
        guest,
    }: Prepared,
    mut events: tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>,
    socket: WebSocket,
) {
    crate::metrics::connection_opened("ws");
    let session_key = Uuid::now_v7().to_string();
    let session_name = access.room.clone();
    let (mut tx, mut rx) = socket.split();
    let hello = json!({
        "type": "status", "status": "connected", "session_id": session_name,
        "conversation_id": access.conversation_id, "user_id": principal.id,
        "guest": guest.is_some(),
    });
    if tx.send(frame(&hello)).await.is_err() {
        crate::metrics::connection_closed("ws");
        return;
    }
    // The bus carries this conversation's wake-ups here from now on (before the log read,
    // so none committed during it is missed).
    let _following = state.events.interest().follow(access.conversation_id);
    // Where this session stands in the conversation's stream: what came after is sent
    // exactly once, in order; a reconnecting client named its last `seq`.
    // A position past the end (a stale client, a restored database) stands at the end.
    let mut last = since_seq.map_or(access.last_seq, |s| s.min(access.last_seq));
    // At most MAX_RESUME messages are replayed; further back, the client reads history.
    let floor = access.last_seq - crate::realtime::socketio::MAX_RESUME;
    if last < floor {
        let note = json!({ "type": "error", "code": "HISTORY_TRUNCATED",
            "message": format!("more than {} messages were missed; read up to seq {floor} from the history API",
                crate::realtime::socketio::MAX_RESUME) });
        if tx.send(frame(&note)).await.is_err() {
            crate::metrics::connection_closed("ws");
            return;
        }
        last = floor;
    }
    if since_seq.is_some() && !send_from_log(&state, &access, &mut tx, &mut last, None).await {
        crate::metrics::connection_closed("ws");
        return;
    }
    state
        .events
        .watch(access.conversation_id, Some(access.last_seq));
    let mut refresh = tokio::time::interval(super::delivery::WATCH_REFRESH);
    refresh.tick().await;
    loop {
        tokio::select! {
            incoming = rx.next() => {
                let msg = match incoming {
                    Some(Ok(msg)) => msg,
                    _ => break,
                };
                // Until the reply is out: shutdown waits for it.
                let _in_flight = state.send_in_flight();
                let reply = match msg {
                    Frame::Text(text) => {
                        let ip = guest.as_ref().map(|g| g.ip);
                        handle_frame(&state, &principal, &access, &session_key, ip, &text).await
                    }
                    Frame::Binary(_) => Some(error_frame(&AppError::validation("binary frames are not supported; send JSON text"))),
                    Frame::Close(_) => {
                        // The library has queued the answering close; flush it, so the
                        // client sees its own close code (1000) answered, not 1006.
                        let _ = tx.close().await;
                        break;
                    }
                    _ => None,
                };
                if let Some(reply) = reply && tx.send(reply).await.is_err() {
                    break;
                }
            }
            event = events.recv() => {
                match event {
                    Ok(event) if event.conversation_id == access.conversation_id
                        || (event.kind == EventKind::AccessChanged && event.conversation_id.is_nil()) => {
                        if let Some(end) = revoked(&state, &principal, &access, &event).await {
                            let _ = tx.send(error_frame(&end)).await;
                            let _ = tx.send(close(close_code(&end), &end.to_string())).await;
                            break;
                        }
                        if let (EventKind::MessageCreated, Some(seq)) = (event.kind, event.data["seq"].as_i64()) {
                            if seq <= last {
                                crate::metrics::delivery_duplicate();
                                continue;
                            }
                            // Skipped messages (this session fell behind): from the log first.
                            if seq > last + 1 && !send_from_log(&state, &access, &mut tx, &mut last, Some(seq)).await {
                                break;
                            }
                            last = seq;
                        }
                        for f in frames_for(&event, &session_name, &principal.id) {
                            if tx.send(frame(&f)).await.is_err() { break; }
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        // A removal may be among the missed events: ask again.
                        if let Err(e) = Access::load(&state.db, &principal, access.conversation_id).await {
                            let end = access_lost(e);
                            let _ = tx.send(error_frame(&end)).await;
                            let _ = tx.send(close(close_code(&end), &end.to_string())).await;
                            break;
                        }
                        tracing::debug!(skipped = n, "a /ws session fell behind; reading its messages from the log");
                        if !send_from_log(&state, &access, &mut tx, &mut last, None).await {
                            break;
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            _ = refresh.tick() => state.events.watch(access.conversation_id, None),
            _ = state.closing.cancelled() => {
                let _ = tx.send(close(close_code::AWAY, "server shutting down")).await;
                break;
            }
        }
    }
    crate::metrics::connection_closed("ws");
}

/// Whether `event` ends this session's access: the conversation was deleted, or someone
/// left and this principal can no longer read it — the removed participant itself, or a
/// reader who was there only as the owner of an agent (admins and services keep reading).
async fn revoked(
    state: &AppState,
    principal: &Principal,
    access: &Access,
    event: &Event,
) -> Option<AppError> {
    match event.kind {
        EventKind::ConversationDeleted => Some(AppError::NotFound("conversation")),
        EventKind::ParticipantLeft
            if !principal.is_privileged()
                && (!access.is_participant
                    || event.data["participant_id"].as_str() == Some(principal.id.as_str())) =>
        {
            Access::load(&state.db, principal, event.conversation_id)
                .await
                .err()
                .map(access_lost)
        }
        // The bus may have missed a removal: ask again.
        EventKind::AccessChanged if !principal.is_privileged() => {
            Access::load(&state.db, principal, access.conversation_id)
                .await
                .err()
                .map(access_lost)
        }
        _ => None,
    }
}

/// The error a session ends with when an access check fails: `Forbidden` (4403) — fail
/// closed: without an answer from the database, the removal stands.
fn access_lost(_: AppError) -> AppError {
    AppError::Forbidden("you no longer have access to this conversation".into())
}

#[derive(Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    client_message_id: Option<String>,
    #[serde(default)]
    is_typing: Option<bool>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    session_id: Option<Value>,
}

/// Handles one client frame; the stored message itself comes back through the event bus.
async fn handle_frame(
    state: &AppState,
    principal: &Principal,
    access: &Access,
    session_key: &str,
    guest: Option<std::net::IpAddr>,
    text: &str,
) -> Option<Frame> {
    let parsed = serde_json::from_str::<Value>(text)
        .map_err(|e| AppError::validation(format!("invalid frame: {e}")))
        .and_then(|v| {
            validate::untrusted_json(&v)?;
            validate::exact_numbers(text)?;
            serde_json::from_value::<ClientFrame>(v)
                .map_err(|e| AppError::validation(format!("invalid frame: {e}")))
        });
    let parsed = match parsed {
        Ok(f) => f,
        Err(e) => return Some(error_frame(&e)),
    };
    if let Some(ip) = guest
        && let Err(e) = guest_frame(state, access, ip, &principal.id, &parsed).await
    {
        return Some(error_frame(&e));
    }
    let origin = Origin {
        socket_id: Some(session_key.to_owned()),
        echo: true,
    };
    let result: AppResult<Option<Frame>> = match parsed.kind.as_str() {
        "message" => {
            let text = match parsed.content {
                Some(Value::String(s)) => s,
                _ => {
                    return Some(error_frame(&AppError::invalid_field(
                        "content",
                        "must be a string",
                    )));
                }
            };
            let input = SendMessage {
                text,
                client_message_id: parsed.client_message_id,
                metadata: parsed.metadata,
                ..Default::default()
            };
            match state.limiter.check(&principal.id) {
                Err(e) => Err(e),
                Ok(_) => {
                    let options = SendOptions {
                        origin,
                        source: Some("ws".into()),
                    };
                    messages::send(state, principal, access.conversation_id, input, options)
                        .await
                        .map(|sent| {
                            // A retry publishes nothing: answer it with the stored message directly.
                            (!sent.created).then(|| {
                                let event = crate::core::messages::event(
                                    EventKind::MessageCreated,
                                    &access.room,
                                    &sent.message,
                                );
                                frame(&frames_for(&event, &access.room, &principal.id)[0])
                            })
                        })
                }
            }
        }
        "typing" => {
            // Checked on every frame: a removed participant or a read-only owner may not type.
            if let Err(e) = state.typing_limiter.check(&principal.id) {
                return Some(error_frame(&e));
            }
            if let Err(e) = Access::load(&state.db, principal, access.conversation_id)
                .await
                .and_then(|a| a.require_write())
            {
                return Some(error_frame(&e));
            }
            state.events.publish(Event::new(
                EventKind::Typing,
                access.conversation_id,
                access.room.clone(),
                json!({ "conversation_id": access.conversation_id, "user_id": principal.id,
                              "is_typing": parsed.is_typing.unwrap_or(true) }),
                origin,
            ));
            Ok(None)
        }
        "ping" => return Some(frame(&json!({ "type": "pong" }))),
        other => Err(AppError::invalid_field(
            "type",
            format!("unknown frame type `{other}`; use message, typing or ping"),
        )),
    };
    result.unwrap_or_else(|e| Some(error_frame(&e)))
}

/// A guest's frame: only for its own session, within its limits; it keeps the session alive.
async fn guest_frame(
    state: &AppState,
    access: &Access,
    ip: std::net::IpAddr,
    guest_id: &str,
    frame: &ClientFrame,
) -> AppResult<()> {
    if let Some(named) = &frame.session_id {
        let own = named
            .as_str()
            .is_some_and(|s| s == access.room || s == access.conversation_id.to_string());
        if !own {
            return Err(AppError::Forbidden(
                "a guest may only talk in its own session".into(),
            ));
        }
    }
    match frame.kind.as_str() {
        "message" => {
            state.guests.per_session.check(guest_id)?;
            state.guests.per_ip.check(&ip.to_string())?;
        }
        // Typing has its own limit, checked before the session is touched; pings do
        // not count as activity.
        "typing" => {
            state.typing_limiter.check(guest_id)?;
        }
        _ => return Ok(()),
    }
    crate::core::guests::touch(state, access.conversation_id).await
}
