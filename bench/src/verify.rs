//! After a write scenario: the conversations' stored logs, read back through the public
//! history API, and the check that every acknowledged message is stored exactly once.

use std::collections::{BTreeMap, HashMap};

use futures::{StreamExt, TryStreamExt, stream};

use crate::Ctx;

pub struct Acked {
    pub conversation: String,
    pub client_id: String,
    pub id: String,
    pub timed: bool,
}

/// One stored message, as the history API returns it.
pub struct Stored {
    pub seq: i64,
    pub id: String,
    pub sender_id: String,
    pub client_message_id: Option<String>,
}

/// Each conversation's stored log in `seq` order, by conversation id.
pub type Logs = HashMap<String, Vec<Stored>>;

pub struct Check {
    pub problems: u64,
    pub summary: String,
}

/// Reads the whole log of each `(conversation, reader)`, paging forward with `after_seq`;
/// `reader` is a participant allowed to read it.
pub async fn read_logs(ctx: &Ctx, conversations: &[(String, String)]) -> anyhow::Result<Logs> {
    stream::iter(conversations)
        .map(|(conversation, reader)| async move {
            read_log(ctx, conversation, reader)
                .await
                .map(|log| (conversation.clone(), log))
        })
        .buffer_unordered(4)
        .try_collect()
        .await
}

async fn read_log(ctx: &Ctx, conversation: &str, reader: &str) -> anyhow::Result<Vec<Stored>> {
    let mut log = Vec::new();
    let mut after = 0i64;
    loop {
        let page = ctx
            .get(
                reader,
                &format!("/messages/conversations/{conversation}?after_seq={after}&limit=100"),
            )
            .await?;
        let items = page["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for m in items {
            let seq = m["seq"].as_i64().unwrap_or(-1);
            after = after.max(seq);
            log.push(Stored {
                seq,
                id: m["id"].as_str().unwrap_or_default().to_owned(),
                sender_id: m["sender_id"].as_str().unwrap_or_default().to_owned(),
                client_message_id: m["client_message_id"].as_str().map(str::to_owned),
            });
        }
        if page["has_more"] != true || items.is_empty() {
            break;
        }
    }
    Ok(log)
}

/// Counts the acked client ids in each conversation's log (each must be stored once, with
/// the acked id); also checks `seq` runs 1, 2, 3… without gaps.
pub fn exactly_once(acked: &[Acked], logs: &Logs) -> Check {
    let mut by_conversation: BTreeMap<&str, Vec<&Acked>> = BTreeMap::new();
    for a in acked {
        by_conversation.entry(&a.conversation).or_default().push(a);
    }
    let (mut problems, mut stored) = (0u64, 0usize);
    let empty = Vec::new();
    for (conversation, acks) in by_conversation {
        let log = logs.get(conversation).unwrap_or(&empty);
        let mut seen: HashMap<&str, (usize, &str)> = HashMap::new();
        let mut expected_seq = 1i64;
        for m in log {
            if m.seq != expected_seq {
                problems += 1;
            }
            expected_seq = m.seq + 1;
            if let Some(cid) = m.client_message_id.as_deref() {
                seen.entry(cid).or_insert((0, &m.id)).0 += 1;
            }
        }
        for a in acks {
            match seen.get(a.client_id.as_str()) {
                Some((1, id)) if *id == a.id => stored += 1,
                _ => problems += 1,
            }
        }
    }
    Check {
        problems,
        summary: if problems == 0 {
            format!(
                "exactly-once OK ({stored}/{} acked stored once, seq gapless)",
                acked.len()
            )
        } else {
            format!(
                "exactly-once FAILED: {problems} problems, {stored}/{} ok",
                acked.len()
            )
        },
    }
}
