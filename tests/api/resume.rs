//! Joining mid-stream, resuming after a dropped connection, and the inbox channel
//! (contract §4): what a socket gets from the log and what it gets live never overlap,
//! never cross, and never leave a hole.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, api, spawn_app_with, token},
    sio::{Sio, Ws},
};

/// Sends `n` messages as `who` over REST, one after another, in a task.
fn sender(app: &TestApp, who: &'static str, cid: &str, n: usize) -> tokio::task::JoinHandle<()> {
    let http = reqwest::Client::new();
    let url = format!(
        "{}{}",
        app.base,
        api(&format!("/messages/conversations/{cid}"))
    );
    tokio::spawn(async move {
        for i in 0..n {
            let r = http
                .post(&url)
                .bearer_auth(token(who))
                .json(&json!({ "text": format!("{who} {i}"), "client_message_id": format!("{who}-{i}") }))
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), StatusCode::CREATED);
        }
    })
}

async fn last_seq(app: &TestApp, cid: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT last_seq FROM conversations WHERE id = $1::uuid")
        .bind(cid)
        .fetch_one(&app.db)
        .await
        .expect("last_seq");
    n
}

async fn wait_for_seq(app: &TestApp, cid: &str, at_least: i64) {
    for _ in 0..500 {
        if last_seq(app, cid).await >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the conversation never reached seq {at_least}");
}

/// `messageBroadcast` seqs until `until` is seen (or time runs out).
async fn broadcasts_until(s: &mut Sio, until: i64, ms: u64) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    let mut seqs = vec![];
    while seqs.last().is_none_or(|l| *l < until) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match s
            .next_event("messageBroadcast", left.as_millis() as u64)
            .await
        {
            Some(m) => seqs.push(m["seq"].as_i64().expect("seq")),
            None => break,
        }
    }
    seqs
}

fn assert_exactly(who: &str, seqs: &[i64], from: i64, to: i64) {
    let expected: Vec<i64> = (from..=to).collect();
    assert_eq!(
        seqs,
        expected.as_slice(),
        "{who}: not {from}..{to} in order, once each"
    );
}

fn seqs_of(messages: &Value) -> Vec<i64> {
    messages
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["seq"].as_i64()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_seq_and_the_live_stream_never_overlap_or_cross() {
    let app = spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    let cid = app.conversation("alice", &["bob", "carol"]).await;
    const N: usize = 150;
    let load = sender(&app, "alice", &cid, N);
    wait_for_seq(&app, &cid, 30).await;

    // Bob joins from the start while messages keep coming.
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    let ack = bob
        .call("join", json!({ "conversation_id": cid, "since_seq": 0 }))
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(
        bob.queued("messageBroadcast"),
        0,
        "a live message arrived before the ack that carries the log"
    );
    let mut seen = seqs_of(&ack["data"]["messages"]);
    assert!(!seen.is_empty());

    // Carol joins later from seq 10.
    wait_for_seq(&app, &cid, 80).await;
    let mut carol = Sio::connect(&app, Some(&token("carol")))
        .await
        .expect("connect");
    let ack = carol
        .call("join", json!({ "conversation_id": cid, "since_seq": 10 }))
        .await;
    let mut carol_seen = seqs_of(&ack["data"]["messages"]);

    load.await.expect("sender");
    let n = N as i64;
    seen.extend(broadcasts_until(&mut bob, n, 5000).await);
    assert_exactly("bob (ack, then live)", &seen, 1, n);
    carol_seen.extend(broadcasts_until(&mut carol, n, 5000).await);
    assert_exactly("carol (ack from 10, then live)", &carol_seen, 11, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_since_seq_without_an_ack_gets_the_missed_messages_as_broadcasts_first() {
    let app = spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    let cid = app.conversation("alice", &["bob"]).await;
    const N: usize = 120;
    let load = sender(&app, "alice", &cid, N);
    wait_for_seq(&app, &cid, 40).await;
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    bob.emit("join", json!({ "conversation_id": cid, "since_seq": 5 }))
        .await;
    load.await.expect("sender");
    let seqs = broadcasts_until(&mut bob, N as i64, 5000).await;
    assert_exactly("bob", &seqs, 6, N as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_resumes_in_the_handshake_with_what_it_missed_first_and_nothing_twice() {
    let app = spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    let cid = app.conversation("alice", &["bob"]).await;
    let other = app.conversation("alice", &["bob"]).await;
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    for c in [&cid, &other] {
        let ack = bob.call("join", json!({ "conversation_id": c })).await;
        assert_eq!(ack["success"], true);
    }
    for i in 0..5 {
        app.send("alice", &cid, &format!("before {i}")).await;
    }
    let got = broadcasts_until(&mut bob, 5, 3000).await;
    assert_eq!(got.last(), Some(&5));
    app.send("alice", &other, "other 1").await;
    let other_first = bob
        .next_event("messageBroadcast", 3000)
        .await
        .expect("other 1");
    assert_eq!(other_first["seq"], 1);
    // The connection drops; messages go on without bob.
    bob.close().await;
    const N: usize = 200;
    let load = sender(&app, "alice", &cid, N);
    wait_for_seq(&app, &cid, 60).await;
    app.send("alice", &other, "other 2").await;

    let auth = json!({ "token": token("bob"), "resume": { cid.clone(): 5, other.clone(): 1 } });
    let mut bob = Sio::connect_auth(&app, "/", auth).await.expect("reconnect");
    load.await.expect("sender");
    let total = 5 + N as i64;
    let seqs = {
        let mut seqs = vec![];
        let mut other_seqs = vec![];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while seqs.last().is_none_or(|l| *l < total) && tokio::time::Instant::now() < deadline {
            let Some(m) = bob.next_event("messageBroadcast", 2000).await else {
                break;
            };
            if m["conversationId"] == json!(cid) {
                seqs.push(m["seq"].as_i64().expect("seq"));
            } else {
                other_seqs.push(m["seq"].as_i64().expect("seq"));
            }
        }
        assert_eq!(other_seqs, vec![2], "the other conversation resumed too");
        seqs
    };
    assert_exactly("bob after resume", &seqs, 6, total);
    let resumed = bob.next_event("resumed", 3000).await.expect("resumed");
    assert_eq!(resumed["failed"], json!([]), "{resumed}");
    assert_eq!(resumed["conversations"].as_array().map(Vec::len), Some(2));
    // And it is live again.
    app.send("alice", &cid, "after").await;
    let next = bob
        .next_event("messageBroadcast", 3000)
        .await
        .expect("live");
    assert_eq!(next["seq"], total + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resume_event_refuses_what_the_socket_may_not_read_and_names_bad_fields() {
    let app = spawn_app_with(|_| {}).await;
    let cid = app.conversation("alice", &["bob"]).await;
    let private = app.conversation("alice", &["carol"]).await;
    for i in 0..3 {
        app.send("alice", &cid, &format!("m{i}")).await;
        app.send("alice", &private, &format!("p{i}")).await;
    }
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    let ack = bob
        .call(
            "resume",
            json!({ "conversations": { cid.clone(): 1, private.clone(): 0, "00000000-0000-0000-0000-000000000000": 0 } }),
        )
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    let failed = ack["data"]["failed"].as_array().expect("failed").clone();
    assert_eq!(failed.len(), 2, "{ack}");
    assert!(failed.iter().all(|f| f["code"] == "NOT_FOUND"), "{ack}");
    let seqs = broadcasts_until(&mut bob, 3, 3000).await;
    assert_exactly("bob", &seqs, 2, 3);
    assert_eq!(
        bob.queued("messageBroadcast"),
        0,
        "nothing from the unreadable conversation"
    );
    // The backlog went out before the ack.
    for bad in [
        json!({ "conversations": { cid.clone(): "x" } }),
        json!({ "conversations": [1] }),
        json!({ "conversations": { cid.clone(): -1 } }),
        json!({}),
    ] {
        let ack = bob.call("resume", bad.clone()).await;
        let refused = ack["success"] == false
            || ack["data"]["failed"]
                .as_array()
                .is_some_and(|f| f.len() == 1 && f[0]["code"] == "VALIDATION_ERROR");
        assert!(refused, "{bad} → {ack}");
    }
    let ack = bob
        .call("resume", json!({ "conversations": { cid.clone(): "x" } }))
        .await;
    assert!(
        ack["message"]
            .as_str()
            .is_some_and(|m| m.contains("conversations")),
        "{ack}"
    );
    // A handshake with a malformed resume is refused with the reason.
    let err = Sio::connect_auth(
        &app,
        "/",
        json!({ "token": token("bob"), "resume": { cid.clone(): "x" } }),
    )
    .await
    .expect_err("refused");
    assert!(err.contains("resume"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_of_a_principal_hears_its_inbox_and_reads_sync_across_devices() {
    let app = spawn_app_with(|_| {}).await;
    let cid = app.conversation("bob", &["alice"]).await;
    // Two devices of alice, neither joined to the conversation.
    let mut phone = Sio::connect(&app, Some(&token("alice")))
        .await
        .expect("phone");
    let mut laptop = Sio::connect(&app, Some(&token("alice")))
        .await
        .expect("laptop");
    app.send("bob", &cid, "hi alice").await;
    app.send("bob", &cid, "are you there?").await;
    for device in [&mut phone, &mut laptop] {
        // Coalesced: one or two updates, each consistent, the last describing message 2.
        let last = loop {
            let u = device
                .next_event("inboxUpdated", 3000)
                .await
                .expect("inboxUpdated");
            assert_eq!(u["last_message"]["seq"], u["last_seq"], "{u}");
            if u["last_seq"] == 2 {
                break u;
            }
        };
        assert_eq!(last["conversation_id"], json!(cid));
        assert_eq!(last["last_seq"], 2);
        assert_eq!(last["unread_count"], 2, "{last}");
        assert_eq!(last["last_message"]["text"], "are you there?");
    }
    // Read on the phone: the laptop's count follows.
    let ack = phone
        .call("mark_read", json!({ "conversation_id": cid }))
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    let synced = laptop
        .next_event("inboxUpdated", 3000)
        .await
        .expect("read synced");
    assert_eq!(synced["unread_count"], 0, "{synced}");
    assert_eq!(synced["last_seq"], 2);

    // Added to a new conversation: both devices hear of it; a stranger does not.
    let mut stranger = Sio::connect(&app, Some(&token("mallory")))
        .await
        .expect("stranger");
    let added = app.conversation("bob", &["alice"]).await;
    for device in [&mut phone, &mut laptop] {
        // (The first conversation's may come too: it was created as they connected.)
        let e = loop {
            let e = device
                .next_event("conversationAdded", 3000)
                .await
                .expect("conversationAdded");
            if e["conversation_id"] == json!(added) {
                break e;
            }
            assert_eq!(e["conversation_id"], json!(cid), "{e}");
        };
        assert_eq!(e["conversation"]["id"], json!(added));
    }
    app.send("bob", &added, "welcome").await;
    assert!(
        stranger.next_event("inboxUpdated", 500).await.is_none(),
        "someone else's inbox leaked"
    );
    assert!(
        stranger
            .next_event("conversationAdded", 100)
            .await
            .is_none()
    );

    // Removed: both devices hear it.
    let (status, _) = app
        .request(
            reqwest::Method::DELETE,
            &api(&format!("/conversations/{added}/participants/alice")),
            Some(&token("bob")),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    let gone = phone
        .next_event("conversationRemoved", 3000)
        .await
        .expect("conversationRemoved");
    assert_eq!(gone["conversation_id"], json!(added));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ws_client_reconnecting_with_since_seq_gets_the_missed_messages_first() {
    let app = spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    let cid = app.conversation("alice", &["bob"]).await;
    for i in 0..10 {
        app.send("alice", &cid, &format!("m{i}")).await;
    }
    let load = sender(&app, "alice", &cid, 100);
    let url = format!(
        "ws://{}/ws?session_id={cid}&token={}&since_seq=4",
        app.addr,
        token("bob")
    );
    let mut ws = Ws::connect_url(&url).await.expect("ws");
    ws.next("status", 3000).await.expect("status");
    load.await.expect("sender");
    let mut seqs = vec![];
    while seqs.last().is_none_or(|l| *l < 110) {
        let Some(m) = ws.next("message", 5000).await else {
            break;
        };
        seqs.push(m["seq"].as_i64().expect("seq"));
    }
    assert_exactly("bob over /ws", &seqs, 5, 110);
    let bad = format!(
        "ws://{}/ws?session_id={cid}&token={}&since_seq=x",
        app.addr,
        token("bob")
    );
    let (code, frame) = Ws::connect_url(&bad).await.expect_err("refused");
    assert_eq!(code, 4400, "{frame}");
}

/// Stores `n` messages straight into the log (fast; no wake-ups).
async fn bulk(app: &TestApp, cid: &str, n: i64) {
    sqlx::query(
        r#"
        WITH c AS (
            UPDATE conversations SET last_seq = last_seq + $2, message_count = message_count + $2
            WHERE id = $1::uuid RETURNING last_seq, platform, platform_conversation_id
        )
        INSERT INTO messages (id, conversation_id, seq, sender_id, sender_type, text, platform_context)
        SELECT gen_random_uuid(), $1::uuid, c.last_seq - $2 + g, 'alice', 'user', 'bulk ' || g,
               jsonb_build_object('platform', c.platform, 'room_id', c.platform_conversation_id,
                                  'channel_id', c.platform_conversation_id)
        FROM c, generate_series(1, $2) AS g
        "#,
    )
    .bind(cid)
    .bind(n)
    .execute(&app.db)
    .await
    .expect("bulk insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_resume_sends_at_most_ten_thousand_messages_and_says_what_is_left() {
    let app = spawn_app_with(|_| {}).await;
    let first = app.conversation("alice", &["bob"]).await;
    let second = app.conversation("alice", &["bob"]).await;
    assert!(first < second, "ids are time-ordered");
    bulk(&app, &first, 9_990).await;
    bulk(&app, &second, 20).await;
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    let ack = bob
        .call(
            "resume",
            json!({ "conversations": { first.clone(): 0, second.clone(): 0 } }),
        )
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    let done = ack["data"]["conversations"]
        .as_array()
        .expect("list")
        .clone();
    assert_eq!(done[0]["delivered"], 9_990);
    assert_eq!(done[0]["complete"], true);
    assert_eq!(done[1]["delivered"], 10, "{ack}");
    assert_eq!(done[1]["complete"], false, "{ack}");
    assert_eq!(
        bob.queued("messageBroadcast"),
        10_000,
        "sent before the ack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_past_the_end_neither_silences_the_conversation_nor_its_owner() {
    let app = spawn_app_with(|_| {}).await;
    let cid = app.conversation("alice", &["bob", "carol"]).await;
    app.send("alice", &cid, "before").await;
    // Bob names a position far past the end, first thing on this process.
    let url = format!(
        "ws://{}/ws?session_id={cid}&token={}&since_seq={}",
        app.addr,
        token("bob"),
        i64::MAX
    );
    let mut bob_ws = Ws::connect_url(&url).await.expect("ws");
    bob_ws.next("status", 3000).await.expect("status");
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    let ack = bob
        .call(
            "join",
            json!({ "conversation_id": cid, "since_seq": i64::MAX }),
        )
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(ack["data"]["messages"], json!([]));
    let ack = bob
        .call(
            "resume",
            json!({ "conversations": { cid.clone(): i64::MAX } }),
        )
        .await;
    assert_eq!(ack["data"]["conversations"][0]["last_seq"], 1, "{ack}");
    let mut carol = Sio::connect(&app, Some(&token("carol")))
        .await
        .expect("connect");
    assert_eq!(
        carol.call("join", json!({ "conversation_id": cid })).await["success"],
        true
    );
    for i in 0..3 {
        app.send("alice", &cid, &format!("after {i}")).await;
    }
    // Carol joined plainly as the stream started: message 1 may still reach her live.
    let carol_seqs = broadcasts_until(&mut carol, 4, 3000).await;
    let from = carol_seqs.first().copied().unwrap_or(2).min(2);
    assert_exactly("carol", &carol_seqs, from, 4);
    assert_exactly("bob", &broadcasts_until(&mut bob, 4, 3000).await, 2, 4);
    let mut ws_seqs = vec![];
    while let Some(m) = bob_ws.next("message", 3000).await {
        ws_seqs.push(m["seq"].as_i64().expect("seq"));
        if ws_seqs.len() == 3 {
            break;
        }
    }
    assert_exactly("bob over /ws", &ws_seqs, 2, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_participant_hears_nothing_more_from_the_inbox() {
    let app = spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    let cid = app.conversation("alice", &["bob"]).await;
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    app.send("alice", &cid, "hello").await;
    bob.next_event("inboxUpdated", 3000).await.expect("inbox");
    // A message marks bob's inbox, then he is removed before the update goes out.
    app.send("alice", &cid, "last one for bob").await;
    let (status, _) = app
        .request(
            reqwest::Method::DELETE,
            &api(&format!("/conversations/{cid}/participants/bob")),
            Some(&token("alice")),
            None,
        )
        .await;
    assert!(status.is_success());
    app.send("alice", &cid, "after bob left").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    while let Some(u) = bob.next_event("inboxUpdated", 100).await {
        assert_ne!(
            u["last_message"]["text"], "after bob left",
            "a removed participant saw a later message: {u}"
        );
    }
}
