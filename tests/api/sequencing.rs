//! Concurrency: gapless seq, exactly-once idempotent sends.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{api, spawn_app, token};

#[tokio::test]
async fn fifty_concurrent_senders_get_seq_one_to_fifty_and_retries_store_nothing_more() {
    let app = spawn_app().await;
    let senders: Vec<String> = (0..50).map(|i| format!("user{i}")).collect();
    let refs: Vec<&str> = senders.iter().map(String::as_str).collect();
    let c = app.conversation("alice", &refs).await;
    let path = api(&format!("/messages/conversations/{c}"));
    let send_all = || {
        join_all(senders.iter().map(|s| {
            let path = path.clone();
            let app = &app;
            async move {
                app.post(&path, &token(s), json!({"text": format!("hi from {s}"), "client_message_id": format!("cid-{s}")}))
                    .await
            }
        }))
    };
    let first = send_all().await;
    assert!(
        first.iter().all(|(s, _)| *s == StatusCode::CREATED),
        "{first:?}"
    );
    let mut seqs: Vec<i64> = first
        .iter()
        .map(|(_, b)| b["data"]["seq"].as_i64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());

    let retried = send_all().await;
    assert!(
        retried.iter().all(|(s, _)| *s == StatusCode::OK),
        "{retried:?}"
    );
    for ((_, a), (_, b)) in first.iter().zip(&retried) {
        assert_eq!(a["data"]["id"], b["data"]["id"]);
    }
    let (n, max, count): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), max(seq), (SELECT message_count FROM conversations) FROM messages",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((n, max, count), (50, 50, 50));
}

#[tokio::test]
async fn concurrent_retries_of_one_client_id_store_one_message() {
    let app = spawn_app().await;
    let c = app.conversation("alice", &[]).await;
    let path = api(&format!("/messages/conversations/{c}"));
    let alice = token("alice");
    let results = join_all((0..20).map(|_| {
        app.post(
            &path,
            &alice,
            json!({"text": "dup?", "client_message_id": "same"}),
        )
    }))
    .await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(s, b)| s.is_success() && b["data"]["seq"] == 1)
    );
    let next = app.send("alice", &c, "next").await;
    assert_eq!(next["seq"], 2, "no seq was burned by the duplicates");
}
