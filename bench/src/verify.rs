//! After a write scenario: every acknowledged message is stored exactly once, read back
//! through the public history API.

use std::collections::{BTreeMap, HashMap};

use crate::Ctx;

pub struct Acked {
    pub conversation: String,
    pub client_id: String,
    pub id: String,
    pub timed: bool,
}

pub struct Check {
    pub problems: u64,
    pub summary: String,
}

/// Pages each conversation's history forward (`after_seq`) and counts the acked client
/// ids; also checks `seq` runs 1, 2, 3… without gaps.
pub async fn exactly_once(ctx: &Ctx, acked: &[Acked]) -> anyhow::Result<Check> {
    let mut by_conversation: BTreeMap<&str, Vec<&Acked>> = BTreeMap::new();
    for a in acked {
        by_conversation.entry(&a.conversation).or_default().push(a);
    }
    let (mut problems, mut stored) = (0u64, 0usize);
    for (conversation, acks) in by_conversation {
        // Any participant may read: the senders are named in the client ids.
        let reader = acks[0].client_id.rsplit_once('-').map_or("", |(w, _)| w);
        let mut seen: HashMap<String, (usize, String)> = HashMap::new();
        let (mut after, mut expected_seq) = (0i64, 1i64);
        loop {
            let page = ctx
                .get(
                    reader,
                    &format!("/messages/conversations/{conversation}?after_seq={after}&limit=100"),
                )
                .await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            for m in &items {
                let seq = m["seq"].as_i64().unwrap_or(-1);
                if seq != expected_seq {
                    problems += 1;
                }
                expected_seq = seq + 1;
                after = seq;
                if let Some(cid) = m["client_message_id"].as_str() {
                    let e = seen
                        .entry(cid.to_owned())
                        .or_insert((0, m["id"].as_str().unwrap_or_default().to_owned()));
                    e.0 += 1;
                }
            }
            if page["has_more"] != true || items.is_empty() {
                break;
            }
        }
        for a in acks {
            match seen.get(&a.client_id) {
                Some((1, id)) if *id == a.id => stored += 1,
                _ => problems += 1,
            }
        }
    }
    Ok(Check {
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
    })
}
