//! Turns committed core events into Socket.IO emits on every served namespace.
//!
//! Slow consumers: each socket has a bounded buffer; when it is full the emit to that
//! socket is dropped (and counted), the room goes on. A client that missed messages
//! fills the gap with `join {since_seq}` or the history API — the database is the record.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{payload, room, socket_room};
use crate::{
    auth::Principal,
    core::{
        access,
        events::{Event, EventKind},
    },
    state::AppState,
};

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

/// After a removal, every socket in the conversation's room whose principal can no longer
/// read it leaves the room at once (contract §3): the removed participant, and the owners
/// of an agent that was the reason they could read. Admins and services keep reading.
async fn revoke(state: &AppState, io: &SocketIo, namespaces: &[String], conversation_id: Uuid) {
    let target = room(conversation_id);
    for ns in namespaces {
        let Some(op) = io.of(ns.as_str()) else {
            continue;
        };
        let sockets: Vec<_> = op
            .within(target.clone())
            .sockets()
            .into_iter()
            .filter_map(|s| {
                let principal = s.extensions.get::<Principal>()?;
                (!principal.is_privileged()).then_some((s, principal.id))
            })
            .collect();
        if sockets.is_empty() {
            continue;
        }
        let mut ids: Vec<String> = sockets.iter().map(|(_, id)| id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        // Fail closed: without an answer, nobody but admins and services keeps listening.
        let readers = access::readers_among(&state.db, conversation_id, &ids)
            .await
            .unwrap_or_default();
        for (socket, id) in sockets {
            if !readers.contains(&id) {
                socket.leave(target.clone());
            }
        }
    }
}

/// Runs [`revoke`] for every conversation room that has sockets on this process.
async fn revalidate_all(state: &AppState, io: &SocketIo, namespaces: &[String]) {
    let mut conversations = std::collections::BTreeSet::new();
    for ns in namespaces {
        if let Some(op) = io.of(ns.as_str())
            && let Ok(rooms) = op.rooms().await
        {
            conversations.extend(rooms.iter().filter_map(|r| Uuid::parse_str(r).ok()));
        }
    }
    for conversation_id in conversations {
        revoke(state, io, namespaces, conversation_id).await;
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
    state: &AppState,
    io: SocketIo,
    namespaces: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = state.events.subscribe();
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    deliver(&io, &namespaces, &event).await;
                    match event.kind {
                        EventKind::ParticipantLeft => {
                            revoke(&state, &io, &namespaces, event.conversation_id).await
                        }
                        EventKind::ConversationDeleted => {
                            for ns in &namespaces {
                                if let Some(op) = io.of(ns.as_str()) {
                                    op.within(room(event.conversation_id))
                                        .sockets()
                                        .into_iter()
                                        .for_each(|s| s.leave(room(event.conversation_id)));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        skipped = n,
                        "socket fan-out fell behind; clients gap-fill on rejoin"
                    );
                    // A removal may be among the skipped events: every conversation room
                    // on this process is checked again.
                    revalidate_all(&state, &io, &namespaces).await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}
