//! Turns committed core events into Socket.IO emits on every served namespace.
//!
//! Slow consumers: each socket has a bounded buffer; when it is full the emit to that
//! socket is dropped (and counted), the room goes on. A client that missed messages
//! fills the gap with `join {since_seq}` or the history API — the database is the record.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use tokio::sync::broadcast::error::RecvError;

use super::{payload, room, socket_room};
use crate::core::events::{Event, EventKind, Events};

/// The Socket.IO events one core event becomes: (name, payload, include the origin socket).
pub fn socket_events(event: &Event) -> Vec<(&'static str, Value, bool)> {
    let d = &event.data;
    match event.kind {
        EventKind::MessageCreated => {
            let mut out = vec![(
                "messageBroadcast",
                payload::message_broadcast(&event.room, d),
                event.origin.echo,
            )];
            if payload::completes_reply(d) {
                out.push((
                    "messageComplete",
                    payload::message_complete(&event.room, &d["conversation_id"], &d["sender_id"]),
                    true,
                ));
            }
            out
        }
        EventKind::MessageUpdated => vec![("messageUpdated", d.clone(), true)],
        EventKind::MessageDeleted => vec![("messageDeleted", d.clone(), true)],
        EventKind::ReactionUpdated => vec![("reactionUpdated", d.clone(), true)],
        EventKind::MessagesRead => vec![("messagesRead", d.clone(), false)],
        EventKind::Typing => vec![("typing", d.clone(), false)],
        EventKind::MessageComplete => vec![("messageComplete", d.clone(), true)],
        EventKind::ConversationUpdated => vec![("conversationUpdated", d.clone(), true)],
        EventKind::ConversationDeleted => {
            vec![(
                "conversationUpdated",
                json!({ "id": event.conversation_id, "deleted": true }),
                true,
            )]
        }
        EventKind::ParticipantJoined => vec![("participantJoined", d.clone(), true)],
        EventKind::ParticipantLeft => vec![("participantLeft", d.clone(), true)],
    }
}

async fn deliver(io: &SocketIo, namespaces: &[String], event: &Arc<Event>) {
    let target = room(event.conversation_id);
    for (name, data, include_origin) in socket_events(event) {
        for ns in namespaces {
            let Some(op) = io.of(ns.as_str()) else {
                continue;
            };
            let mut op = op.to(target.clone());
            if let (false, Some(sid)) = (include_origin, &event.origin.socket_id) {
                op = op.except(socket_room(sid));
            }
            if let Err(e) = op.emit(name, &data).await {
                tracing::debug!(error = %e, event = name, "some sockets missed a broadcast");
            }
        }
    }
    crate::metrics::broadcast_delivered("socketio", 1);
}

pub fn spawn(
    events: &Events,
    io: SocketIo,
    namespaces: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = events.subscribe();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(event) => deliver(&io, &namespaces, &event).await,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        skipped = n,
                        "socket fan-out fell behind; clients gap-fill on rejoin"
                    )
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}
