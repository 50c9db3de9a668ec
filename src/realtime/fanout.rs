//! Turns committed core events into Socket.IO emits on every served namespace.
//!
//! Messages go to each socket of the room through its [`Cursor`] (exactly once, in `seq`
//! order, also across a join's or resume's log read). If this task ever falls behind the
//! delivery stage and skips events, the hole it finds in a conversation's `seq` is read
//! back from the log before the next message goes out. A socket whose own buffer is full
//! is disconnected (it resumes from its last `seq`), never silently skipped.
//!
//! Everything else (edits, reactions, reads, typing, membership) goes to the room as it
//! comes: best effort, as the contract says.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use socketioxide::SocketIo;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{
    cursor::{Cursor, Outgoing},
    delivery::from_log,
    payload, room, socket_room,
};
use crate::{
    auth::Principal,
    core::{
        access,
        events::{Event, EventKind},
        history,
    },
    state::AppState,
};

/// A conversation's last emitted `seq` is forgotten after this long without messages.
const FORGET_AFTER: Duration = Duration::from_secs(900);

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
        EventKind::MessageStream => vec![("messageStream", d.clone(), true)],
        EventKind::StreamError => vec![("error", d.clone(), true)],
        EventKind::AccessChanged => vec![],
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
        // Fail closed: without an answer, nobody but admins and services keeps listening —
        // and those sockets are disconnected rather than silently left out of the room,
        // so their clients reconnect and resume (which checks access again).
        let readers = tokio::time::timeout(
            Duration::from_secs(5),
            access::readers_among(&state.delivery_db, conversation_id, &ids),
        )
        .await;
        match readers {
            Ok(Ok(readers)) => {
                for (socket, id) in sockets {
                    if !readers.contains(&id) {
                        socket.leave(target.clone());
                    }
                }
            }
            _ => {
                tracing::warn!(%conversation_id, "could not re-check access after a removal; disconnecting its sockets");
                for (socket, _) in sockets {
                    let _ = socket.disconnect();
                }
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

/// Where each conversation's stream stands on this task, to notice skipped messages.
#[derive(Default)]
struct Emitted(HashMap<Uuid, (i64, Instant)>);

impl Emitted {
    fn housekeep(&mut self) {
        let now = Instant::now();
        self.0.retain(|_, (_, at)| now - *at < FORGET_AFTER);
    }
}

/// One message to every socket of its room, each through its cursor. When this task
/// skipped messages (it fell behind), the skipped ones are read from the log first.
async fn deliver_message(
    state: &AppState,
    io: &SocketIo,
    namespaces: &[String],
    emitted: &mut Emitted,
    event: &Arc<Event>,
    seq: i64,
) {
    let last = emitted.0.get(&event.conversation_id).map(|(s, _)| *s);
    if last.is_some_and(|l| seq <= l) {
        return;
    }
    if let Some(last) = last.filter(|l| seq > l + 1) {
        let skipped = tokio::time::timeout(
            Duration::from_secs(5),
            history::since(state, event.conversation_id, last, seq - last - 1),
        )
        .await;
        match skipped {
            Ok(Ok(messages)) => {
                crate::metrics::delivery_gap_filled(messages.len());
                for message in messages.into_iter().filter(|m| m.seq < seq) {
                    offer_to_room(io, namespaces, &from_log(&message), message.seq);
                }
            }
            _ => tracing::warn!(
                conversation_id = %event.conversation_id,
                "could not read skipped messages from the log; sockets that miss them resume"
            ),
        }
    }
    offer_to_room(io, namespaces, event, seq);
    emitted
        .0
        .insert(event.conversation_id, (seq, Instant::now()));
}

fn offer_to_room(io: &SocketIo, namespaces: &[String], event: &Arc<Event>, seq: i64) {
    let out = Outgoing::new(&event.room, &event.data);
    let target = room(event.conversation_id);
    let mut delivered = 0;
    for ns in namespaces {
        let Some(op) = io.of(ns.as_str()) else {
            continue;
        };
        for socket in op.within(target.clone()).sockets() {
            Cursor::of(&socket).offer(&socket, event, seq, &out);
            delivered += 1;
        }
    }
    crate::metrics::broadcast_delivered("socketio", delivered);
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
                tracing::debug!(error = %e, event = name, "some sockets missed an event");
            }
        }
    }
}

/// After skipped events: every conversation this task has emitted to is read from the log
/// after its last emitted `seq`, and what is there goes out.
async fn catch_up(state: &AppState, io: &SocketIo, namespaces: &[String], emitted: &mut Emitted) {
    let positions: Vec<(Uuid, i64)> = emitted.0.iter().map(|(id, (seq, _))| (*id, *seq)).collect();
    for (conversation_id, last) in positions {
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            history::since(state, conversation_id, last, 1000),
        )
        .await;
        let Ok(Ok(messages)) = read else { continue };
        for message in messages {
            let event = from_log(&message);
            deliver_message(state, io, namespaces, emitted, &event, message.seq).await;
        }
    }
}

/// Tells the delivery stage, now and then, which conversations this process's sockets
/// are in, so quiet ones are still checked against the log.
async fn refresh_watches(state: &AppState, io: &SocketIo, namespaces: &[String]) {
    for ns in namespaces {
        if let Some(op) = io.of(ns.as_str())
            && let Ok(rooms) = op.rooms().await
        {
            for id in rooms.iter().filter_map(|r| Uuid::parse_str(r).ok()) {
                state.events.watch(id, None);
            }
        }
    }
}

pub fn spawn(
    state: &AppState,
    io: SocketIo,
    namespaces: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = state.events.subscribe();
    let state = state.clone();
    tokio::spawn(async move {
        let mut emitted = Emitted::default();
        let mut refresh = tokio::time::interval(super::delivery::WATCH_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                received = rx.recv() => received,
                _ = refresh.tick() => {
                    refresh_watches(&state, &io, &namespaces).await;
                    emitted.housekeep();
                    continue;
                }
            };
            match received {
                Ok(event) => {
                    match (event.kind, event.data["seq"].as_i64()) {
                        (EventKind::MessageCreated, Some(seq)) => {
                            deliver_message(&state, &io, &namespaces, &mut emitted, &event, seq)
                                .await
                        }
                        _ => deliver(&io, &namespaces, &event).await,
                    }
                    match event.kind {
                        EventKind::ParticipantLeft => {
                            revoke(&state, &io, &namespaces, event.conversation_id).await
                        }
                        EventKind::AccessChanged if event.conversation_id.is_nil() => {
                            revalidate_all(&state, &io, &namespaces).await
                        }
                        EventKind::AccessChanged => {
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
                        "socket fan-out fell behind; skipped messages are read from the log"
                    );
                    // A removal may be among the skipped events: every conversation room
                    // on this process is checked again.
                    revalidate_all(&state, &io, &namespaces).await;
                    // And messages may be: each conversation's stream is read back from
                    // where it stood here (later ones then fill their own holes).
                    catch_up(&state, &io, &namespaces, &mut emitted).await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}
