//! The log is the stream (contract §4): every stored message reaches every connected
//! member once and in `seq` order, also when its sender never heard back, when wake-ups
//! arrive out of order, and when the process that stored it never announced it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::{
    helpers::{api, spawn_app_with, spawn_on, token},
    sio::{Sio, Ws},
};

/// Every `seq` of `name` events (`messageBroadcast`) a socket gets within `ms` of quiet.
async fn sio_seqs(s: &mut Sio, want: usize, ms: u64) -> Vec<i64> {
    let mut seqs = vec![];
    while seqs.len() < want {
        match s.next_event("messageBroadcast", ms).await {
            Some(m) => seqs.push(m["seq"].as_i64().expect("seq")),
            None => break,
        }
    }
    // Anything more would be a duplicate.
    while let Some(m) = s.next_event("messageBroadcast", 300).await {
        seqs.push(m["seq"].as_i64().expect("seq"));
    }
    seqs
}

async fn ws_seqs(w: &mut Ws, want: usize, ms: u64) -> Vec<i64> {
    let mut seqs = vec![];
    while seqs.len() < want {
        match w.next("message", ms).await {
            Some(m) => seqs.push(m["seq"].as_i64().expect("seq")),
            None => break,
        }
    }
    while let Some(m) = w.next("message", 300).await {
        seqs.push(m["seq"].as_i64().expect("seq"));
    }
    seqs
}

fn assert_in_order_once(who: &str, seqs: &[i64], n: i64) {
    let expected: Vec<i64> = (1..=n).collect();
    assert_eq!(
        seqs,
        expected.as_slice(),
        "{who}: not 1..{n} in order, once each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_sender_gave_up_is_still_delivered_once() {
    let app = spawn_app_with(|_| {}).await;
    let cid = app.conversation("alice", &["bob"]).await;
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    assert_eq!(
        bob.call("join", json!({ "conversation_id": cid })).await["success"],
        true
    );

    // Hold the conversation row from another connection: the send waits, and the client
    // gives up on it.
    let mut blocker = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    let mut tx = blocker.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM conversations WHERE id = $1::uuid FOR UPDATE")
        .bind(&cid)
        .execute(&mut *tx)
        .await
        .expect("lock");
    let body = json!({ "text": "are you there?", "client_message_id": "lost-ack-1" });
    let url = format!(
        "{}{}",
        app.base,
        api(&format!("/messages/conversations/{cid}"))
    );
    let abandoned = app
        .http
        .post(&url)
        .bearer_auth(token("alice"))
        .json(&body)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(abandoned.is_err(), "the first attempt should time out");
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.rollback().await.expect("release");

    // The retry finds it stored; the listener got it once, with no help from the retry.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let retry = app
        .http
        .post(&url)
        .bearer_auth(token("alice"))
        .json(&body)
        .send()
        .await
        .expect("retry");
    assert_eq!(retry.status(), StatusCode::OK, "already stored");
    let seqs = sio_seqs(&mut bob, 1, 3000).await;
    assert_in_order_once("bob", &seqs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_on_two_processes_see_every_message_in_seq_order_once() {
    let a = spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    let b = spawn_on(&a.database_url, |c| c.rate_limit_per_minute = 1_000_000).await;
    let cid = a
        .conversation("alice", &["bob", "carol", "dave", "erin"])
        .await;
    let mut dave_a = Sio::connect(&a, Some(&token("dave")))
        .await
        .expect("connect");
    assert_eq!(
        dave_a.call("join", json!({ "conversation_id": cid })).await["success"],
        true
    );
    let mut erin_b = Sio::connect(&b, Some(&token("erin")))
        .await
        .expect("connect");
    assert_eq!(
        erin_b.call("join", json!({ "conversation_id": cid })).await["success"],
        true
    );
    let mut dave_ws_b = Ws::connect(&b, &cid, &token("dave")).await.expect("ws");
    dave_ws_b.next("status", 3000).await.expect("status");

    const EACH: usize = 60;
    let rest = |app_base: String, who: &'static str| {
        let http = reqwest::Client::new();
        let cid = cid.clone();
        tokio::spawn(async move {
            for i in 0..EACH {
                let r = http
                    .post(format!("{app_base}{}", api(&format!("/messages/conversations/{cid}"))))
                    .bearer_auth(token(who))
                    .json(&json!({ "text": format!("{who} {i}"), "client_message_id": format!("{who}-{i}") }))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        })
    };
    let mut carol = Sio::connect(&b, Some(&token("carol")))
        .await
        .expect("connect");
    let socket_sender = {
        let cid = cid.clone();
        tokio::spawn(async move {
            for i in 0..EACH {
                let ack: Value = carol
                    .call("chat_message", json!({ "conversation_id": cid, "message": format!("carol {i}"), "messageId": format!("carol-{i}") }))
                    .await;
                assert_eq!(ack["success"], true, "{ack}");
            }
        })
    };
    let senders = [rest(a.base.clone(), "alice"), rest(b.base.clone(), "bob")];
    for s in senders {
        s.await.expect("sender");
    }
    socket_sender.await.expect("socket sender");
    let n = (EACH * 3) as i64;
    assert_in_order_once(
        "dave on A (Socket.IO)",
        &sio_seqs(&mut dave_a, EACH * 3, 5000).await,
        n,
    );
    assert_in_order_once(
        "erin on B (Socket.IO)",
        &sio_seqs(&mut erin_b, EACH * 3, 5000).await,
        n,
    );
    assert_in_order_once(
        "dave on B (/ws)",
        &ws_seqs(&mut dave_ws_b, EACH * 3, 5000).await,
        n,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_message_nobody_announced_is_delivered_from_the_log() {
    let app = spawn_app_with(|_| {}).await;
    let cid = app.conversation("alice", &["bob"]).await;
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    assert_eq!(
        bob.call("join", json!({ "conversation_id": cid })).await["success"],
        true
    );
    let mut bob_ws = Ws::connect(&app, &cid, &token("bob")).await.expect("ws");
    bob_ws.next("status", 3000).await.expect("status");
    app.send("alice", &cid, "first, announced").await;

    // What a process that died right after its commit leaves behind: a stored message and
    // no wake-up anywhere.
    sqlx::query(
        r#"
        WITH c AS (
            UPDATE conversations SET last_seq = last_seq + 1, message_count = message_count + 1
            WHERE id = $1::uuid RETURNING last_seq, platform, platform_conversation_id
        )
        INSERT INTO messages (id, conversation_id, seq, sender_id, sender_type, text, platform_context)
        SELECT gen_random_uuid(), $1::uuid, c.last_seq, 'alice', 'user', 'second, never announced',
               jsonb_build_object('platform', c.platform, 'room_id', c.platform_conversation_id,
                                  'channel_id', c.platform_conversation_id)
        FROM c
        "#,
    )
    .bind(&cid)
    .execute(&app.db)
    .await
    .expect("a silent insert");

    let seqs = sio_seqs(&mut bob, 2, 5000).await;
    assert_in_order_once("bob (Socket.IO)", &seqs, 2);
    let seqs = ws_seqs(&mut bob_ws, 2, 5000).await;
    assert_in_order_once("bob (/ws)", &seqs, 2);
    // And the next announced message follows it, not before it.
    app.send("alice", &cid, "third").await;
    let third = bob
        .next_event("messageBroadcast", 3000)
        .await
        .expect("third");
    assert_eq!(third["seq"], 3);
}

/// Sockets that join while messages stream in — on a process that hears of them over the
/// bus, so some are committed but not yet announced there when the join reads its
/// position — get, from their first live message on, every later one with no hole, and
/// never start above the `last_seq` the join's ack reported. (A join that read its
/// position just after a live message reached the socket once skipped the messages
/// between that one and the position.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_joining_mid_stream_get_a_live_stream_without_holes() {
    let a = spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    let b = spawn_on(&a.database_url, |c| c.rate_limit_per_minute = 1_000_000).await;
    let cid = a.conversation("alice", &["bob"]).await;
    // The senders keep going until every joiner is in.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..3)
        .map(|s| {
            let (base, cid, stop) = (a.base.clone(), cid.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let r = http
                        .post(format!("{base}{}", api(&format!("/messages/conversations/{cid}"))))
                        .bearer_auth(token("alice"))
                        .json(&json!({ "text": format!("{s}-{i}"), "client_message_id": format!("{s}-{i}") }))
                        .send()
                        .await
                        .expect("send");
                    assert_eq!(r.status(), StatusCode::CREATED);
                }
                i
            })
        })
        .collect();
    // Joiners on B, one after another while the senders run: half with `join`, half
    // with `join_all`.
    let mut joiners = vec![];
    for i in 0..16 {
        let mut s = Sio::connect(&b, Some(&token("bob")))
            .await
            .expect("connect");
        let at = if i % 2 == 0 {
            let ack = s.call("join", json!({ "conversation_id": cid })).await;
            assert_eq!(ack["success"], true, "{ack}");
            ack["data"]["conversation"]["last_seq"].as_i64()
        } else {
            let ack = s.call("join_all", json!({})).await;
            assert_eq!(ack["data"]["joined"], 1, "{ack}");
            None
        };
        joiners.push((i, s, at));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut n = 0;
    for s in senders {
        n += s.await.expect("sender");
    }
    let mut started_mid_stream = 0;
    for (i, mut s, at) in joiners {
        let seqs = s.seqs_until(n, 5000).await;
        let Some(first) = seqs.first().copied() else {
            panic!("joiner {i} got nothing")
        };
        let breaks: Vec<(i64, i64)> = seqs
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .map(|w| (w[0], w[1]))
            .collect();
        assert!(
            breaks.is_empty(),
            "joiner {i}: holes or repeats (got … a, b …): {breaks:?}"
        );
        assert_eq!(seqs.last(), Some(&n), "joiner {i}: did not get to the end");
        if let Some(at) = at {
            assert!(
                first <= at + 1,
                "joiner {i}: ack said last_seq {at}, stream began at {first}"
            );
        }
        if first > 1 {
            started_mid_stream += 1;
        }
    }
    assert!(started_mid_stream > 0, "no joiner joined mid-stream");
}
