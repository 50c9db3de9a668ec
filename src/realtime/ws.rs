//! Raw WebSocket `/ws`: one conversation per connection, JSON frames.

use axum::{
    extract::{
        Query, State, WebSocketUpgrade,
        ws::{Message as Frame, WebSocket},
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
        messages::{self, SendMessage, SendOptions},
    },
    error::{AppError, AppResult},
    state::AppState,
};

#[derive(Deserialize)]
pub struct WsParams {
    session_id: Option<String>,
    token: Option<String>,
}

/// Authenticates and checks access before upgrading, so a refusal is a plain HTTP error.
pub async fn handler(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Query(params): Query<WsParams>,
    headers: HeaderMap,
) -> Response {
    match prepare(&state, params, &headers).await {
        Ok((principal, access)) => ws
            .max_message_size(256 * 1024)
            .on_upgrade(move |socket| session(state, principal, access, socket)),
        Err(e) => e.into_response(),
    }
}

async fn prepare(
    state: &AppState,
    params: WsParams,
    headers: &HeaderMap,
) -> AppResult<(Principal, Access)> {
    if !state.is_ready() {
        return Err(AppError::Unavailable(anyhow::anyhow!(
            "database not migrated yet"
        )));
    }
    let principal = match params.token {
        Some(t) => state.verifier.verify(&t)?,
        None => state.verifier.verify_bearer(
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )?,
    };
    let session = params
        .session_id
        .ok_or_else(|| AppError::invalid_field("session_id", "is required"))?;
    let conversation_id =
        payload::conversation_ref(state, &json!({ "conversation_id": session })).await?;
    let access = Access::load(&state.db, &principal, conversation_id).await?;
    Ok((principal, access))
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
                "sender": d["sender_name"].as_str().unwrap_or_else(|| d["sender_id"].as_str().unwrap_or_default()),
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
        _ => vec![],
    }
}

async fn session(state: AppState, principal: Principal, access: Access, socket: WebSocket) {
    crate::metrics::connection_opened("ws");
    let session_key = Uuid::now_v7().to_string();
    let session_name = access.room.clone();
    // Subscribe before saying "connected", so nothing committed afterwards is missed.
    let mut events = state.events.subscribe();
    let (mut tx, mut rx) = socket.split();
    let hello = json!({
        "type": "status", "status": "connected", "session_id": session_name,
        "conversation_id": access.conversation_id, "user_id": principal.id,
    });
    if tx.send(frame(&hello)).await.is_err() {
        crate::metrics::connection_closed("ws");
        return;
    }
    loop {
        tokio::select! {
            incoming = rx.next() => {
                let Some(Ok(msg)) = incoming else { break };
                let reply = match msg {
                    Frame::Text(text) => handle_frame(&state, &principal, &access, &session_key, &text).await,
                    Frame::Binary(_) => Some(error_frame(&AppError::validation("binary frames are not supported; send JSON text"))),
                    Frame::Close(_) => break,
                    _ => None,
                };
                if let Some(reply) = reply && tx.send(reply).await.is_err() {
                    break;
                }
            }
            event = events.recv() => {
                match event {
                    Ok(event) if event.conversation_id == access.conversation_id => {
                        for f in frames_for(&event, &session_name, &principal.id) {
                            if tx.send(frame(&f)).await.is_err() { break; }
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        let warn = json!({ "type": "error", "code": "LAGGED",
                            "message": format!("missed {n} events; refetch history after your last seq") });
                        if tx.send(frame(&warn)).await.is_err() { break; }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            _ = state.shutdown.cancelled() => {
                let _ = tx.send(Frame::Close(None)).await;
                break;
            }
        }
    }
    crate::metrics::connection_closed("ws");
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
}

/// Handles one client frame; the stored message itself comes back through the event bus.
async fn handle_frame(
    state: &AppState,
    principal: &Principal,
    access: &Access,
    session_key: &str,
    text: &str,
) -> Option<Frame> {
    let parsed: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            return Some(error_frame(&AppError::validation(format!(
                "invalid frame: {e}"
            ))));
        }
    };
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
                                let event = Event {
                                    kind: EventKind::MessageCreated,
                                    conversation_id: access.conversation_id,
                                    room: access.room.clone(),
                                    data: serde_json::to_value(&sent.message)
                                        .unwrap_or(Value::Null),
                                    origin: Origin::default(),
                                };
                                frame(&frames_for(&event, &access.room, &principal.id)[0])
                            })
                        })
                }
            }
        }
        "typing" => {
            state.events.publish(Event {
                kind: EventKind::Typing,
                conversation_id: access.conversation_id,
                room: access.room.clone(),
                data: json!({ "conversation_id": access.conversation_id, "user_id": principal.id,
                              "is_typing": parsed.is_typing.unwrap_or(true) }),
                origin,
            });
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
