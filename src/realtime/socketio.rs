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

use super::{payload, room, socket_room};
use crate::{
    auth::{Principal, PrincipalKind},
    core::{
        access::Access,
        conversations,
        events::{Event, EventKind, Origin},
        history,
        messages::{self, Attachment, SendMessage, SendOptions},
        participants::{self, NewParticipant},
        reads::{self, MarkRead},
        validate,
    },
    error::{AppError, AppResult},
    state::AppState,
};

/// Most messages a `join {since_seq}` returns; beyond that, page with the history API.
pub const MAX_GAP_FILL: i64 = 1000;

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
    let from_auth = auth
        .ok()
        .and_then(|a| a.get("token").and_then(Value::as_str).map(str::to_owned));
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
            crate::core::insights::record_owner_claim(&state, &principal).await?;
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

    on_event!(socket, "join", join);
    on_event!(socket, "leave", leave);
    socket.on(
        "join_all",
        async |s: SocketRef, ack: Ack, State(st): State<AppState>| {
            let r = match identity(&st, &s, &Value::Null) {
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
            let r = match numbers.and_then(|()| data(d)) {
                Ok(d) => chat_message(&st, &s, d, false).await,
                Err(e) => Err(e),
            };
            crate::metrics::send_acked("socketio", started.elapsed());
            respond(&s, ack, "chat_message", r);
        },
    );
    on_event!(socket, "message", eliza_envelope);
    on_event!(socket, "typing", typing);
    on_event!(socket, "mark_read", mark_read);
    on_event!(socket, "complete", complete);
}

async fn on_connect(socket: SocketRef, State(state): State<AppState>) {
    // Agents are joined to every conversation they are in, so they hear users at once.
    if let Some(p) = socket.extensions.get::<Principal>()
        && p.kind == PrincipalKind::Agent
        && let Err(e) = join_all(&state, &socket, &p).await
    {
        tracing::warn!(error = %e, "auto-join for agent failed");
    }
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
    if wanted {
        let _ = ack.send(&body);
    }
}

/// Who is acting: the token's principal, or in legacy anonymous mode the payload's user.
fn identity(state: &AppState, socket: &SocketRef, p: &Value) -> AppResult<Principal> {
    if let Some(principal) = socket.extensions.get::<Principal>() {
        return Ok(principal);
    }
    if !state.config.socket_allow_anonymous {
        return Err(AppError::Unauthorized("not authenticated".into()));
    }
    let id = payload::str_field(
        p,
        &["userId", "user_id", "senderId", "sender_id", "entityId"],
    )
    .ok_or_else(|| {
        AppError::validation("anonymous sockets must name userId (join) or senderId (send)")
    })?;
    validate::id("userId", id)?;
    let principal = Principal {
        id: id.to_owned(),
        name: payload::str_field(p, &["senderName", "userName", "name"]).map(str::to_owned),
        kind: PrincipalKind::User,
        admin: false,
        owner: None,
    };
    socket.extensions.insert(principal.clone());
    Ok(principal)
}

async fn join(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    payload::require_object(&p)?;
    let principal = identity(state, socket, &p)?;
    let conversation_id = payload::conversation_ref(state, &p).await?;
    let since = payload::int_field(&p, &["since_seq", "sinceSeq"])?;
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
    let conversation = conversations::get(state, &principal, conversation_id).await?;
    join_checked(state, socket, &principal, conversation_id).await?;
    let mut data = json!({ "conversation": conversation, "conversation_id": conversation_id });
    if let Some(since) = since {
        if since < 0 {
            return Err(AppError::invalid_field("since_seq", "must not be negative"));
        }
        let missed = history::since(state, conversation_id, since, MAX_GAP_FILL).await?;
        data["has_more"] = json!(conversation.last_seq - since > MAX_GAP_FILL);
        data["messages"] = serde_json::to_value(missed).map_err(anyhow::Error::from)?;
    }
    Ok(data)
}

/// Marks sockets that connected without a token.
#[derive(Clone)]
struct Anonymous;

async fn leave(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    payload::require_object(&p)?;
    identity(state, socket, &p)?;
    let conversation_id = payload::conversation_ref(state, &p).await?;
    socket.leave(room(conversation_id));
    Ok(json!({ "conversation_id": conversation_id, "left": true }))
}

async fn join_all(state: &AppState, socket: &SocketRef, principal: &Principal) -> AppResult<usize> {
    let ids: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT conversation_id FROM participants WHERE participant_id = $1 LIMIT 10000",
    )
    .bind(&principal.id)
    .fetch_all(&state.db)
    .await?;
    for (id,) in &ids {
        socket.join(room(*id));
    }
    // A removal committed between the list and the joins found no socket to cut: the
    // rooms joined are checked once more, and those no longer the principal's are left.
    let joined: Vec<Uuid> = ids.iter().map(|(id,)| *id).collect();
    let still: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT conversation_id FROM participants WHERE participant_id = $1 AND conversation_id = ANY($2)",
    )
    .bind(&principal.id)
    .bind(&joined)
    .fetch_all(&state.db)
    .await?;
    let still: std::collections::HashSet<Uuid> = still.into_iter().map(|(id,)| id).collect();
    for id in joined.iter().filter(|id| !still.contains(id)) {
        socket.leave(room(*id));
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
) -> AppResult<()> {
    socket.join(room(conversation_id));
    if let Err(e) = Access::load(&state.db, principal, conversation_id).await {
        socket.leave(room(conversation_id));
        return Err(e);
    }
    Ok(())
}

fn attachments(p: &Value) -> AppResult<Vec<Attachment>> {
    match p.get("attachments") {
        None | Some(Value::Null) => Ok(vec![]),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| AppError::invalid_field("attachments", e.to_string())),
    }
}

async fn chat_message(
    state: &AppState,
    socket: &SocketRef,
    p: Value,
    echo: bool,
) -> AppResult<Value> {
    payload::require_object(&p)?;
    let principal = identity(state, socket, &p)?;
    state.limiter.check(&principal.id)?;
    let text = match p.get("message").or_else(|| p.get("text")) {
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(AppError::invalid_field("message", "must be a string")),
        None => return Err(AppError::invalid_field("message", "is required")),
    };
    let metadata = match p.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m) => Some(m.clone()),
    };
    let conversation_id = payload::conversation_ref(state, &p).await?;
    let input = SendMessage {
        text,
        client_message_id: payload::str_field(
            &p,
            &["messageId", "client_message_id", "clientMessageId"],
        )
        .map(str::to_owned),
        sender_id: payload::str_field(&p, &["senderId", "sender_id"]).map(str::to_owned),
        sender_name: payload::str_field(&p, &["senderName", "sender_name"]).map(str::to_owned),
        sender_type: payload::str_field(&p, &["senderType", "sender_type"]).map(str::to_owned),
        thread_id: payload::str_field(&p, &["thread_id", "threadId"]).map(str::to_owned),
        attachments: attachments(&p)?,
        metadata,
    };
    let options = SendOptions {
        origin: Origin {
            socket_id: Some(socket.id.to_string()),
            echo,
        },
        source: Some(match payload::str_field(&p, &["source"]) {
            Some(source) => {
                validate::max_chars("source", source, 64)?;
                source.to_owned()
            }
            None => "socketio".to_owned(),
        }),
    };
    let sent = messages::send(state, &principal, conversation_id, input, options).await?;
    serde_json::to_value(sent.message).map_err(|e| anyhow::Error::from(e).into())
}

/// elizaOS envelope: `{type: 1, payload}` joins, `{type: 2, payload}` sends.
async fn eliza_envelope(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    payload::require_object(&p)?;
    let kind = p.get("type").and_then(|t| {
        t.as_i64()
            .or_else(|| t.as_str().and_then(|s| s.parse().ok()))
    });
    let body = p.get("payload").cloned().unwrap_or(Value::Null);
    payload::require_object(&body)?;
    match kind {
        Some(1) => join(state, socket, body).await,
        Some(2) => {
            let principal = identity(state, socket, &body)?;
            let sender = payload::str_field(&body, &["senderId", "sender_id"]);
            // A client echoing someone else's broadcast back to us.
            if sender.is_some_and(|s| s != principal.id) && !principal.is_service() {
                return Ok(
                    json!({ "ignored": true, "reason": "senderId is not the caller (echoed broadcast)" }),
                );
            }
            let has_client_id = payload::str_field(&body, &["messageId"]).is_some();
            if !has_client_id && is_recent_repeat(state, &principal, &body).await? {
                return Ok(
                    json!({ "ignored": true, "reason": "repeat of a message sent in the last minute" }),
                );
            }
            // elizaOS clients expect replies in the room they send to, joined or not yet.
            if let Ok(conversation_id) = payload::conversation_ref(state, &body).await
                && Access::load(&state.db, &principal, conversation_id)
                    .await
                    .is_ok()
            {
                join_checked(state, socket, &principal, conversation_id).await?;
            }
            chat_message(state, socket, body, has_client_id).await
        }
        _ => Err(AppError::invalid_field(
            "type",
            "must be 1 (join) or 2 (send)",
        )),
    }
}

async fn is_recent_repeat(
    state: &AppState,
    principal: &Principal,
    body: &Value,
) -> AppResult<bool> {
    let Some(text) = payload::str_field(body, &["message", "text"]) else {
        return Ok(false);
    };
    let Ok(conversation_id) = payload::conversation_ref(state, body).await else {
        return Ok(false);
    };
    let sender = payload::str_field(body, &["senderId"]).unwrap_or(&principal.id);
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
    payload::require_object(&p)?;
    let principal = identity(state, socket, &p)?;
    let conversation_id = payload::conversation_ref(state, &p).await?;
    let is_typing = match p.get("is_typing").or_else(|| p.get("isTyping")) {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(AppError::invalid_field("is_typing", "must be a boolean")),
    };
    state.typing_limiter.check(&principal.id)?;
    let access = Access::load(&state.db, &principal, conversation_id).await?;
    access.require_write()?;
    state.events.publish(Event {
        kind: EventKind::Typing,
        conversation_id,
        room: access.room,
        data: json!({ "conversation_id": conversation_id, "user_id": principal.id, "is_typing": is_typing }),
        origin: Origin { socket_id: Some(socket.id.to_string()), echo: false },
    });
    Ok(json!({ "conversation_id": conversation_id, "is_typing": is_typing }))
}

async fn mark_read(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    payload::require_object(&p)?;
    let principal = identity(state, socket, &p)?;
    let conversation_id = payload::conversation_ref(state, &p).await?;
    let input = MarkRead {
        user_id: None,
        up_to_seq: payload::int_field(&p, &["up_to_seq", "upToSeq"])?,
    };
    let origin = Origin {
        socket_id: Some(socket.id.to_string()),
        echo: false,
    };
    let read = reads::mark_read(state, &principal, conversation_id, input, origin).await?;
    serde_json::to_value(read).map_err(|e| anyhow::Error::from(e).into())
}

async fn complete(state: &AppState, socket: &SocketRef, p: Value) -> AppResult<Value> {
    payload::require_object(&p)?;
    let principal = identity(state, socket, &p)?;
    let conversation_id = payload::conversation_ref(state, &p).await?;
    let access = Access::load(&state.db, &principal, conversation_id).await?;
    access.require_write()?;
    let data =
        payload::message_complete(&access.room, &json!(conversation_id), &json!(principal.id));
    state.events.publish(Event {
        kind: EventKind::MessageComplete,
        conversation_id,
        room: access.room,
        data: data.clone(),
        origin: Origin {
            socket_id: Some(socket.id.to_string()),
            echo: true,
        },
    });
    Ok(data)
}
