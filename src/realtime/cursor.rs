//! Per-socket delivery: where each Socket.IO socket stands in each conversation's stream.
//!
//! The delivery stage hands this process's transports every message once, in `seq` order.
//! A socket still needs its own cursor, because it does not join the stream at the same
//! moment as everyone else: a `join {since_seq}` or a resume reads the log up to some
//! `seq` while live messages keep coming. Each socket keeps, per conversation, a [`Lane`]:
//! - `Live(last)`: a live message is emitted only when its `seq` is above `last` (a
//!   message the socket already has — from a gap fill, an ack, a repeat — is dropped);
//! - `Held(buffer)`: a join or resume is reading the log; live messages wait in the
//!   buffer and are emitted after what the log read returned, each once, in order.
//!
//! All emits to a socket's messages go through its cursor's lock, so the log read and
//! the live stream can never interleave out of order.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde_json::{Value, value::RawValue};
use socketioxide::{SendError, SocketError, extract::SocketRef};
use uuid::Uuid;

use super::payload;
use crate::core::{events::Event, messages::Message};

/// Live messages a socket may have waiting while its log read runs; past this it is a
/// consumer that cannot keep up and is disconnected (it resumes on reconnect).
const MAX_HELD: usize = 10_000;

enum Lane {
    Live(Option<i64>),
    Held(Vec<Arc<Event>>),
}

/// A socket's lanes, one per conversation it follows; kept in the socket's extensions.
#[derive(Clone, Default)]
pub struct Cursor(Arc<Mutex<HashMap<Uuid, Lane>>>);

/// What happened to one live message offered to a socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    Emitted,
    /// The socket already had it (or is its sender, whose ack is its copy).
    Skipped,
    /// Waiting behind a log read.
    Held,
    /// The socket's buffer is full or it is gone: it was disconnected.
    Dropped,
}

impl Cursor {
    /// The cursor of `socket`, created on first use.
    pub fn of(socket: &SocketRef) -> Cursor {
        if let Some(c) = socket.extensions.get::<Cursor>() {
            return c;
        }
        let c = Cursor::default();
        socket.extensions.insert(c.clone());
        c
    }

    /// Starts holding live messages of `conversation_id` (before the socket joins the
    /// room and reads the log).
    pub fn hold(&self, conversation_id: Uuid) {
        if let Ok(mut lanes) = self.0.lock() {
            let lane = lanes.entry(conversation_id).or_insert(Lane::Held(vec![]));
            // Held already (two joins at once): what waits keeps waiting.
            if matches!(lane, Lane::Live(_)) {
                *lane = Lane::Held(vec![]);
            }
        }
    }

    /// Marks where a plain join stands (a `last_seq` read after the socket joined the
    /// room): older messages a late wake-up or a log read brings are not emitted as live.
    /// A lane already there is left as it is — held, or live because messages reached
    /// the socket between its room join and that read. Those came in `seq` order from
    /// the delivery stage, and the ones after them up to `last_seq` are still on their
    /// way: moving the lane to `last_seq` would skip them, a hole in the middle of the
    /// socket's live stream.
    pub fn start(&self, conversation_id: Uuid, last_seq: i64) {
        if let Ok(mut lanes) = self.0.lock() {
            lanes
                .entry(conversation_id)
                .or_insert(Lane::Live(Some(last_seq)));
        }
    }

    /// Forgets the conversation (the socket left it, or its join failed).
    pub fn forget(&self, conversation_id: Uuid) {
        if let Ok(mut lanes) = self.0.lock() {
            lanes.remove(&conversation_id);
        }
    }

    /// Ends a hold: emits `backlog` (what the log read returned after `since`) when asked,
    /// then the live messages held meanwhile that the backlog did not cover, and goes
    /// live. Emits wait for room in the socket's buffer (a backlog can be far larger than
    /// the buffer); live messages keep being held until everything before them is out.
    /// Returns the last `seq` the socket now has, or `None` when the socket went away.
    pub async fn release(
        &self,
        socket: &SocketRef,
        conversation_id: Uuid,
        since: i64,
        backlog: &[Message],
        emit_backlog: bool,
    ) -> Option<i64> {
        let mut last = since;
        for message in backlog.iter().filter(|m| m.seq > since) {
            if emit_backlog {
                let data = serde_json::to_value(message).ok()?;
                let out = Outgoing::new(&message.platform_context.room_id, &data);
                out.emit_patiently(socket, true).await?;
            }
            last = last.max(message.seq);
        }
        loop {
            let held = {
                let mut lanes = self.0.lock().ok()?;
                match lanes.get_mut(&conversation_id) {
                    Some(Lane::Held(held)) if !held.is_empty() => std::mem::take(held),
                    Some(Lane::Held(_)) => {
                        lanes.insert(conversation_id, Lane::Live(Some(last)));
                        return Some(last);
                    }
                    // Another join of the same conversation finished first and went live.
                    Some(Lane::Live(_)) | None => return Some(last),
                }
            };
            for event in held {
                let Some(seq) = event.data["seq"].as_i64() else {
                    continue;
                };
                if seq <= last {
                    crate::metrics::delivery_duplicate();
                    continue;
                }
                last = seq;
                Outgoing::new(&event.room, &event.data)
                    .emit_patiently(socket, !skips_origin(socket, &event))
                    .await?;
            }
        }
    }

    /// Offers one live message (the delivery stage's order) to the socket.
    pub fn offer(
        &self,
        socket: &SocketRef,
        event: &Arc<Event>,
        seq: i64,
        out: &Outgoing,
    ) -> Offered {
        let Ok(mut lanes) = self.0.lock() else {
            return Offered::Dropped;
        };
        match admit(&mut lanes, event, seq) {
            Admitted::Held => Offered::Held,
            Admitted::Full => {
                drop(lanes);
                slow(socket);
                Offered::Dropped
            }
            Admitted::Repeat => {
                crate::metrics::delivery_duplicate();
                Offered::Skipped
            }
            Admitted::Emit => {
                let broadcast = !skips_origin(socket, event);
                match out.emit(socket, broadcast) {
                    Ok(()) if broadcast => Offered::Emitted,
                    Ok(()) => Offered::Skipped,
                    Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                        drop(lanes);
                        slow(socket);
                        Offered::Dropped
                    }
                    Err(_) => Offered::Dropped,
                }
            }
        }
    }
}

/// What a socket's lanes make of one live message.
#[derive(Debug, PartialEq, Eq)]
enum Admitted {
    /// Live and new: emit it (the lane has moved on to it).
    Emit,
    /// Live, and the socket already has it.
    Repeat,
    /// Waiting behind a log read.
    Held,
    /// Waiting behind a log read, and the wait is full.
    Full,
}

fn admit(lanes: &mut HashMap<Uuid, Lane>, event: &Arc<Event>, seq: i64) -> Admitted {
    match lanes
        .entry(event.conversation_id)
        .or_insert(Lane::Live(None))
    {
        Lane::Held(held) if held.len() < MAX_HELD => {
            held.push(event.clone());
            Admitted::Held
        }
        Lane::Held(_) => Admitted::Full,
        Lane::Live(last) if last.is_some_and(|l| seq <= l) => Admitted::Repeat,
        Lane::Live(last) => {
            *last = Some(seq);
            Admitted::Emit
        }
    }
}

/// The sending socket of a `chat_message` has its ack as its copy (contract §4).
fn skips_origin(socket: &SocketRef, event: &Event) -> bool {
    !event.origin.echo
        && event
            .origin
            .socket_id
            .as_deref()
            .is_some_and(|sid| sid == socket.id.as_str())
}

/// The Socket.IO payloads of one message, built once for every socket it goes to: the
/// broadcast is serialised to JSON text once (a 1,000-member room would otherwise
/// serialise it 1,000 times) and handed to each socket as raw JSON.
pub struct Outgoing {
    broadcast: Box<RawValue>,
    /// `messageComplete` after an agent's finished reply.
    complete: Option<Value>,
}

impl Outgoing {
    pub fn new(room: &str, message: &Value) -> Self {
        let broadcast = payload::message_broadcast(room, message);
        Self {
            broadcast: serde_json::value::to_raw_value(&broadcast).unwrap_or_else(|_| {
                // A Value always serialises; keep the type total anyway.
                RawValue::from_string("null".to_owned()).unwrap_or_default()
            }),
            complete: payload::completes_reply(message).then(|| {
                payload::message_complete(room, &message["conversation_id"], &message["sender_id"])
            }),
        }
    }

    /// `messageBroadcast` (unless the socket is the sender, whose ack is its copy), then
    /// `messageComplete` (the sender included).
    fn emit(&self, socket: &SocketRef, broadcast: bool) -> Result<(), SendError> {
        if broadcast {
            socket.emit("messageBroadcast", &self.broadcast)?;
        }
        if let Some(complete) = &self.complete {
            socket.emit("messageComplete", complete)?;
        }
        Ok(())
    }

    /// As [`Outgoing::emit`], waiting (up to [`PATIENCE`]) for room in the socket's buffer;
    /// a socket that stays full that long is disconnected. `None`: the socket is gone.
    async fn emit_patiently(&self, socket: &SocketRef, broadcast: bool) -> Option<()> {
        if broadcast {
            patiently(socket, "messageBroadcast", &self.broadcast).await?;
        }
        if let Some(complete) = &self.complete {
            patiently(socket, "messageComplete", complete).await?;
        }
        Some(())
    }
}

/// How long a backlog emit waits for a full socket buffer to drain.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

async fn patiently<T: serde::Serialize + ?Sized>(
    socket: &SocketRef,
    event: &str,
    data: &T,
) -> Option<()> {
    let started = std::time::Instant::now();
    loop {
        match socket.emit(event, data) {
            Ok(()) => return Some(()),
            Err(SendError::Socket(SocketError::InternalChannelFull))
                if started.elapsed() < PATIENCE =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                slow(socket);
                return None;
            }
            Err(_) => return None,
        }
    }
}

/// A socket that cannot take its messages as fast as they come is disconnected rather
/// than silently skipped: the guarantee is "every message while connected", and the
/// client resumes from its last `seq` when it reconnects.
fn slow(socket: &SocketRef) {
    crate::metrics::slow_consumer_disconnected();
    tracing::info!(sid = %socket.id, "disconnecting a socket that cannot keep up; it resumes on reconnect");
    let _ = socket.clone().disconnect();
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::events::{EventKind, Origin};

    fn message(conversation_id: Uuid, seq: i64) -> Arc<Event> {
        Arc::new(Event::new(
            EventKind::MessageCreated,
            conversation_id,
            String::new(),
            json!({ "seq": seq }),
            Origin {
                socket_id: None,
                echo: true,
            },
        ))
    }

    fn offer(cursor: &Cursor, conversation_id: Uuid, seq: i64) -> Admitted {
        let mut lanes = cursor.0.lock().expect("lanes");
        admit(&mut lanes, &message(conversation_id, seq), seq)
    }

    /// The socket joined the room, 363 reached it, then the join read `last_seq` 364
    /// (committed, its wake-up still on the way): 364 must still reach the socket.
    #[test]
    fn a_join_position_read_after_live_messages_arrived_skips_none_still_coming() {
        let (cursor, c) = (Cursor::default(), Uuid::now_v7());
        assert_eq!(offer(&cursor, c, 363), Admitted::Emit);
        cursor.start(c, 364);
        assert_eq!(offer(&cursor, c, 364), Admitted::Emit);
        assert_eq!(offer(&cursor, c, 364), Admitted::Repeat);
        assert_eq!(offer(&cursor, c, 365), Admitted::Emit);
    }

    #[test]
    fn a_join_before_any_live_message_starts_after_its_position() {
        let (cursor, c) = (Cursor::default(), Uuid::now_v7());
        cursor.start(c, 10);
        assert_eq!(offer(&cursor, c, 9), Admitted::Repeat);
        assert_eq!(offer(&cursor, c, 10), Admitted::Repeat);
        assert_eq!(offer(&cursor, c, 11), Admitted::Emit);
        // A second join of the same conversation does not move a lane that is live.
        cursor.start(c, 20);
        assert_eq!(offer(&cursor, c, 12), Admitted::Emit);
    }

    #[test]
    fn a_plain_join_leaves_a_held_lane_held() {
        let (cursor, c) = (Cursor::default(), Uuid::now_v7());
        cursor.hold(c);
        cursor.start(c, 5);
        assert_eq!(offer(&cursor, c, 6), Admitted::Held);
        cursor.forget(c);
        assert_eq!(offer(&cursor, c, 7), Admitted::Emit);
    }
}
