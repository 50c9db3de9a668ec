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

/// Sends that arrive together are stored together (group commit); each still gets the
/// answer it would get alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_burst_is_answered_as_if_each_send_were_alone() {
    let app = spawn_app().await;
    let open = app.conversation("alice", &["bob"]).await;
    let other = app.conversation("carol", &["dave"]).await;
    let archived = app.conversation("alice", &[]).await;
    let (s, _) = app
        .post(
            &api(&format!("/conversations/{archived}/archive")),
            &token("alice"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // (who, conversation, client id, expected status)
    let mut plan: Vec<(String, String, String, StatusCode)> = Vec::new();
    for i in 0..40 {
        let (who, conv) = match i % 4 {
            0 | 1 => (if i % 8 == 0 { "alice" } else { "bob" }, &open),
            2 => ("dave", &other),
            _ => ("carol", &other),
        };
        plan.push((
            who.into(),
            conv.clone(),
            format!("burst-{i}"),
            StatusCode::CREATED,
        ));
    }
    for i in 0..5 {
        // The same client id twice in one burst: one 201, one 200, one message.
        plan.push((
            "bob".into(),
            open.clone(),
            format!("twice-{i}"),
            StatusCode::CREATED,
        ));
        plan.push((
            "bob".into(),
            open.clone(),
            format!("twice-{i}"),
            StatusCode::OK,
        ));
        plan.push((
            "mallory".into(),
            open.clone(),
            format!("stranger-{i}"),
            StatusCode::NOT_FOUND,
        ));
        plan.push((
            "alice".into(),
            archived.clone(),
            format!("archived-{i}"),
            StatusCode::CONFLICT,
        ));
    }
    let results = join_all(plan.iter().map(|(who, conv, cid, _)| {
        let app = &app;
        async move {
            app.post(
                &api(&format!("/messages/conversations/{conv}")),
                &token(who),
                json!({"text": format!("{who} says {cid}"), "client_message_id": cid}),
            )
            .await
        }
    }))
    .await;
    let mut twice: std::collections::HashMap<&str, Vec<(StatusCode, serde_json::Value)>> =
        std::collections::HashMap::new();
    for ((_, _, cid, expected), (status, body)) in plan.iter().zip(&results) {
        if cid.starts_with("twice-") {
            twice
                .entry(cid)
                .or_default()
                .push((*status, body["data"]["id"].clone()));
        } else {
            assert_eq!(status, expected, "{cid}: {body}");
        }
    }
    for (cid, answers) in twice {
        let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, vec![200, 201], "{cid}");
        assert_eq!(answers[0].1, answers[1].1, "{cid}: one message");
    }
    // Some sends really were stored together.
    let (_, metrics) = app
        .request(reqwest::Method::GET, "/metrics", None, None)
        .await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let figure = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        figure("colloquy_write_batch_size_sum") > figure("colloquy_write_batch_size_count"),
        "no batch stored more than one send:\n{metrics}"
    );
    for (conv, expected) in [(&open, 25i64), (&other, 20), (&archived, 0)] {
        let (n, max, last): (i64, Option<i64>, i64) = sqlx::query_as(
            "SELECT count(*), max(seq), (SELECT last_seq FROM conversations WHERE id = $1::uuid)
             FROM messages WHERE conversation_id = $1::uuid",
        )
        .bind(conv)
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(
            (n, max.unwrap_or(0), last),
            (expected, expected, expected),
            "{conv}"
        );
    }
}

/// Two processes batching sends to the same conversations at once: each batch locks its
/// conversations in id order, so they queue rather than deadlock, and `seq` stays gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_batching_into_the_same_conversations_keep_seq_gapless() {
    let a = spawn_app().await;
    let b = crate::helpers::spawn_on(&a.database_url, |_| {}).await;
    let members: Vec<String> = (0..10).map(|i| format!("member{i}")).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let conversations = [
        a.conversation("alice", &refs).await,
        a.conversation("alice", &refs).await,
        a.conversation("alice", &refs).await,
    ];
    let sends = (0..120).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let conv = &conversations[i % 3];
        let who = &members[i % members.len()];
        async move {
            let started = std::time::Instant::now();
            let (s, body) = app
                .post(
                    &api(&format!("/messages/conversations/{conv}")),
                    &token(who),
                    json!({"text": format!("m{i}"), "client_message_id": format!("x-{i}")}),
                )
                .await;
            (s, body, started.elapsed())
        }
    });
    let results = join_all(sends).await;
    for (s, body, _) in &results {
        assert_eq!(*s, StatusCode::CREATED, "{body}");
    }
    // Postgres counts deadlocks per database (this test's own); statistics may lag, so
    // this can miss one but never invents one.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (deadlocks,): (i64,) =
        sqlx::query_as("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(&a.db)
            .await
            .unwrap();
    assert_eq!(deadlocks, 0, "batches deadlocked");
    for conv in &conversations {
        let seqs: Vec<(i64,)> = sqlx::query_as(
            "SELECT seq FROM messages WHERE conversation_id = $1::uuid ORDER BY seq",
        )
        .bind(conv)
        .fetch_all(&a.db)
        .await
        .unwrap();
        let seqs: Vec<i64> = seqs.into_iter().map(|(s,)| s).collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "{conv}");
    }
}
