//! Per-socket delivery checks for the real-time scenarios. Each joined socket records the
//! `messageBroadcast`s it receives (conversation, `seq`, times) in arrival order; after the
//! run they are compared with the conversation's stored log (contract §4, "Delivery
//! guarantees": every joined socket gets each message exactly once, in `seq` order, except
//! that the socket that sent a `chat_message` has its ack as its copy).
//!
//! The event callback only appends to the socket's own list under an uncontended lock;
//! everything else happens after the run.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use serde_json::Value;

use crate::{sio::OnEvent, stats::Latency, verify::Logs};

/// One `messageBroadcast` as a socket received it.
struct Receipt {
    seq: i64,
    /// When the sender emitted it (`t=<µs>` in the text), 0 when not measured.
    sent_us: u64,
    received_us: u64,
}

/// Everything one socket received, per conversation, in arrival order.
#[derive(Default)]
struct Received {
    by_conversation: HashMap<String, Vec<Receipt>>,
    /// Broadcasts that named no conversation or no `seq`.
    unreadable: u64,
}

/// One joined socket whose deliveries are checked.
pub struct Watched {
    /// The principal the socket is authenticated as. Each principal has one socket in
    /// these scenarios, so its own `chat_message`s are the ones stored with its
    /// `sender_id`: those come back to it as acks, not as broadcasts.
    principal: String,
    /// Conversations joined, each with its `last_seq` in the join ack: messages after it
    /// are owed to the socket.
    joined: Vec<(String, i64)>,
    /// Whether its receipts count toward the delivery latency (the dedicated listeners).
    timed: bool,
    received: Arc<Mutex<Received>>,
}

impl Watched {
    pub fn new(principal: &str, timed: bool) -> Self {
        Self {
            principal: principal.to_owned(),
            joined: Vec::new(),
            timed,
            received: Arc::default(),
        }
    }

    /// The socket's event callback: records each `messageBroadcast`.
    pub fn on_event(&self) -> OnEvent {
        let (received, timed) = (self.received.clone(), self.timed);
        Box::new(move |name: &str, data: &Value| {
            if name != "messageBroadcast" {
                return;
            }
            let received_us = crate::realtime::now_us();
            let sent_us = if timed {
                data["text"]
                    .as_str()
                    .and_then(|t| t.rsplit_once("t="))
                    .and_then(|(_, t)| t.parse::<u64>().ok())
                    .unwrap_or(0)
            } else {
                0
            };
            let Ok(mut r) = received.lock() else { return };
            let (Some(conversation), Some(seq)) =
                (data["conversationId"].as_str(), data["seq"].as_i64())
            else {
                r.unreadable += 1;
                return;
            };
            let receipt = Receipt {
                seq,
                sent_us,
                received_us,
            };
            match r.by_conversation.get_mut(conversation) {
                Some(list) => list.push(receipt),
                None => {
                    r.by_conversation
                        .insert(conversation.to_owned(), vec![receipt]);
                }
            }
        })
    }

    /// Records a join: `horizon` is the conversation's `last_seq` in the join ack.
    pub fn joined(&mut self, conversation: &str, horizon: i64) {
        self.joined.push((conversation.to_owned(), horizon));
    }
}

/// The delivery figures of a scenario, summed over its watched sockets. All zero in a
/// healthy run.
#[derive(Clone, Copy, Default, Debug)]
pub struct Figures {
    /// Sockets checked.
    pub sockets: usize,
    /// Broadcasts whose `seq` was not greater than the previous one the socket received
    /// in that conversation.
    pub out_of_order: u64,
    /// Stored messages after the join that the socket never received (its own
    /// `chat_message`s excepted).
    pub missed: u64,
    /// Broadcasts received more than once (each extra copy counts), and broadcasts of a
    /// socket's own `chat_message` (its ack is its copy).
    pub dup_delivered: u64,
    /// Broadcasts that match nothing stored: no `seq`, a `seq` not in the log, or a
    /// conversation the socket did not join.
    pub stray: u64,
}

impl Figures {
    pub fn healthy(&self) -> bool {
        self.out_of_order == 0 && self.missed == 0 && self.dup_delivered == 0 && self.stray == 0
    }

    /// One line for notes and warnings.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "out_of_order={} missed={} dup_delivered={}",
            self.out_of_order, self.missed, self.dup_delivered
        );
        if self.stray > 0 {
            s.push_str(&format!(" stray={}", self.stray));
        }
        format!("{s} over {} sockets", self.sockets)
    }
}

/// What [`check`] found.
pub struct Check {
    pub figures: Figures,
    /// Emit → receipt at the timed sockets, for messages sent from `timed_from_us` on.
    pub latency: Latency,
    /// Broadcasts the timed sockets received (copies included).
    pub listener_receipts: u64,
}

/// Compares what every watched socket received with the stored `logs`. Call it after the
/// senders have stopped and in-flight deliveries have had time to arrive; it takes the
/// receipts recorded so far.
pub fn check(watched: &[Watched], logs: &Logs, timed_from_us: u64) -> Check {
    let mut figures = Figures {
        sockets: watched.len(),
        ..Figures::default()
    };
    let mut latency = Latency::default();
    let mut listener_receipts = 0u64;
    let empty = Vec::new();
    for w in watched {
        let mut received = match w.received.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(_) => Received::default(),
        };
        figures.stray += received.unreadable;
        for (conversation, horizon) in &w.joined {
            let receipts = received
                .by_conversation
                .remove(conversation)
                .unwrap_or_default();
            let log = logs.get(conversation).unwrap_or(&empty);
            let senders: HashMap<i64, &str> =
                log.iter().map(|m| (m.seq, m.sender_id.as_str())).collect();
            let mut seen: HashSet<i64> = HashSet::with_capacity(receipts.len());
            let mut previous: Option<i64> = None;
            for r in &receipts {
                if previous.is_some_and(|p| r.seq <= p) {
                    figures.out_of_order += 1;
                }
                previous = Some(r.seq);
                match senders.get(&r.seq) {
                    None => figures.stray += 1,
                    Some(sender) if *sender == w.principal => figures.dup_delivered += 1,
                    Some(_) if !seen.insert(r.seq) => figures.dup_delivered += 1,
                    Some(_) => {}
                }
                if w.timed {
                    listener_receipts += 1;
                    if r.sent_us != 0 && r.sent_us >= timed_from_us {
                        latency.record_us(r.received_us.saturating_sub(r.sent_us));
                    }
                }
            }
            figures.missed += log
                .iter()
                .filter(|m| m.seq > *horizon && m.sender_id != w.principal)
                .filter(|m| !seen.contains(&m.seq))
                .count() as u64;
        }
        // Whatever is left came from conversations the socket never joined.
        figures.stray += received
            .by_conversation
            .values()
            .map(|v| v.len() as u64)
            .sum::<u64>();
    }
    Check {
        figures,
        latency,
        listener_receipts,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::verify::Stored;

    const C: &str = "c1";

    fn log(senders: &[&str]) -> Logs {
        let stored = senders
            .iter()
            .enumerate()
            .map(|(i, sender)| Stored {
                seq: i as i64 + 1,
                id: format!("m{i}"),
                sender_id: (*sender).to_owned(),
                client_message_id: None,
            })
            .collect();
        HashMap::from([(C.to_owned(), stored)])
    }

    fn socket(principal: &str, horizon: i64, seqs: &[i64]) -> Watched {
        let mut w = Watched::new(principal, true);
        w.joined(C, horizon);
        let on_event = w.on_event();
        for seq in seqs {
            on_event(
                "messageBroadcast",
                &json!({"conversationId": C, "seq": seq, "text": "x t=1"}),
            );
        }
        on_event("typing", &json!({"conversation_id": C}));
        w
    }

    #[test]
    fn complete_in_order_delivery_is_healthy() {
        let c = check(&[socket("l", 0, &[1, 2, 3])], &log(&["a", "b", "a"]), 0);
        assert!(c.figures.healthy(), "{:?}", c.figures);
        assert_eq!(c.listener_receipts, 3);
    }

    #[test]
    fn counts_out_of_order_duplicates_and_misses() {
        // 4 never arrives, 2 arrives twice, 3 comes after 5.
        let c = check(
            &[socket("l", 0, &[1, 2, 2, 5, 3, 6])],
            &log(&["a", "a", "a", "a", "a", "a"]),
            0,
        );
        let f = c.figures;
        assert_eq!(
            (f.out_of_order, f.missed, f.dup_delivered, f.stray),
            (2, 1, 1, 0)
        );
    }

    #[test]
    fn own_messages_are_not_owed_and_their_echo_is_a_duplicate() {
        let quiet = check(&[socket("a", 0, &[2])], &log(&["a", "b", "a"]), 0);
        assert!(quiet.figures.healthy(), "{:?}", quiet.figures);
        let echoed = check(&[socket("a", 0, &[1, 2])], &log(&["a", "b"]), 0);
        assert_eq!(echoed.figures.dup_delivered, 1);
    }

    #[test]
    fn only_messages_after_the_join_are_owed() {
        let c = check(&[socket("l", 2, &[3])], &log(&["a", "a", "a"]), 0);
        assert!(c.figures.healthy(), "{:?}", c.figures);
    }

    #[test]
    fn unstored_and_unreadable_broadcasts_are_stray() {
        let w = socket("l", 0, &[1, 9]);
        w.on_event()("messageBroadcast", &json!({"conversationId": C}));
        w.on_event()(
            "messageBroadcast",
            &json!({"conversationId": "other", "seq": 1}),
        );
        let c = check(&[w], &log(&["a"]), 0);
        assert_eq!(c.figures.stray, 3);
    }
}
