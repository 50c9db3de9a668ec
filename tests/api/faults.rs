//! Real `colloquy` processes under faults (contract §4): a process killed mid-stream, and
//! SIGTERM under load. Counted from outside: what was acked, what is stored, what each
//! listener received.

use std::{collections::BTreeSet, time::Duration};

use serde_json::{Value, json};

use crate::{
    helpers::{api, fresh_database, token},
    hostile::Process,
    sio::{Sio, Ws},
};

pub async fn stored_seqs(db: &sqlx::PgPool, cid: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM messages WHERE conversation_id = $1::uuid ORDER BY seq")
        .bind(cid)
        .fetch_all(db)
        .await
        .expect("stored")
}

pub fn assert_stream(who: &str, got: &[i64], stored: &[i64]) {
    assert_eq!(
        got, stored,
        "{who}: must receive every stored message once, in seq order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_on_a_surviving_process_get_everything_the_killed_one_committed() {
    let database_url = fresh_database().await;
    let a = Process::start_on(database_url.clone(), &[]).await;
    let b = Process::start_on(database_url.clone(), &[]).await;
    let (app_a, app_b) = (a.app(), b.app());
    let cid = app_a.conversation("alice", &["bob"]).await;

    let mut bob_sio = Sio::connect(&app_b, Some(&token("bob")))
        .await
        .expect("connect");
    let ack = bob_sio
        .call("join", json!({ "conversation_id": cid }))
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    let mut bob_ws = Ws::connect(&app_b, &cid, &token("bob")).await.expect("ws");
    bob_ws.next("status", 3000).await.expect("status");

    // Alice sends to A as fast as it answers; A is killed mid-stream.
    let url = format!(
        "{}{}",
        app_a.base,
        api(&format!("/messages/conversations/{cid}"))
    );
    let load = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut acked = 0;
        for i in 0..100_000 {
            let sent = http
                .post(&url)
                .bearer_auth(token("alice"))
                .json(&json!({ "text": format!("a{i}"), "client_message_id": format!("a{i}") }))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => acked += 1,
                _ => break,
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.signal("KILL");
    let acked = load.await.expect("load");
    assert!(acked > 10, "the load ran ({acked} acked)");
    // Then more through B, which must follow the killed process's messages in order.
    for i in 0..5 {
        app_b.send("alice", &cid, &format!("b{i}")).await;
    }
    let db = sqlx::PgPool::connect(&database_url).await.expect("db");
    let stored = stored_seqs(&db, &cid).await;
    assert!(stored.len() >= acked + 5, "acked messages are stored");
    let last = *stored.last().expect("stored");
    assert_stream(
        "bob on B (Socket.IO)",
        &bob_sio.seqs_until(last, 4000).await,
        &stored,
    );
    assert_stream(
        "bob on B (/ws)",
        &bob_ws.seqs_until(last, 4000).await,
        &stored,
    );
    let errors = b.error_lines().await;
    assert!(errors.is_empty(), "{errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_send_it_took_and_delivers_what_it_committed() {
    let database_url = fresh_database().await;
    let mut p = Process::start_on(database_url.clone(), &[]).await;
    let q = Process::start_on(database_url.clone(), &[]).await;
    let (app_p, app_q) = (p.app(), q.app());
    let cid = app_p.conversation("alice", &["bob", "carol"]).await;

    let mut carol_p = Sio::connect(&app_p, Some(&token("carol")))
        .await
        .expect("connect");
    assert_eq!(
        carol_p
            .call("join", json!({ "conversation_id": cid }))
            .await["success"],
        true
    );
    let mut carol_q = Sio::connect(&app_q, Some(&token("carol")))
        .await
        .expect("connect");
    assert_eq!(
        carol_q
            .call("join", json!({ "conversation_id": cid }))
            .await["success"],
        true
    );

    // Four sockets send to P with acks, each until P refuses or goes away.
    let mut senders = vec![];
    for s in 0..4 {
        let mut socket = Sio::connect(&app_p, Some(&token("alice")))
            .await
            .expect("connect");
        let cid = cid.clone();
        senders.push(tokio::spawn(async move {
            let mut acked = BTreeSet::new();
            let mut refused = 0;
            let mut unanswered = 0;
            for i in 0..100_000 {
                let id = format!("s{s}-{i}");
                let ack: Value = socket
                    .call(
                        "chat_message",
                        json!({ "conversation_id": cid, "message": id, "messageId": id }),
                    )
                    .await;
                if ack["success"] == true {
                    acked.insert(id);
                } else if ack["code"] == "UNAVAILABLE" {
                    refused += 1;
                    break;
                } else if ack.is_null() {
                    // The connection closed: this send is unanswered (checked below
                    // against what was stored).
                    unanswered += 1;
                    break;
                } else {
                    panic!("unexpected ack {ack}");
                }
            }
            (acked, refused, unanswered)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    p.signal("TERM");
    let mut acked = BTreeSet::new();
    for s in senders {
        let (a, _, _) = s.await.expect("sender");
        acked.extend(a);
    }
    assert_eq!(
        p.exited(Duration::from_secs(30)).await,
        Some(0),
        "clean exit"
    );

    let db = sqlx::PgPool::connect(&database_url).await.expect("db");
    let stored: BTreeSet<String> = sqlx::query_scalar(
        "SELECT client_message_id FROM messages WHERE conversation_id = $1::uuid",
    )
    .bind(&cid)
    .fetch_all(&db)
    .await
    .expect("stored")
    .into_iter()
    .collect();
    assert!(acked.len() > 10, "the load ran");
    assert_eq!(
        acked, stored,
        "acked = stored: every send P took was answered"
    );
    let seqs = stored_seqs(&db, &cid).await;
    let last = *seqs.last().expect("stored");
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "no seq gap");
    // A listener on P got everything P committed before it closed the socket; one on Q
    // got everything.
    assert_stream("carol on P", &carol_p.seqs_until(last, 3000).await, &seqs);
    assert_stream("carol on Q", &carol_q.seqs_until(last, 4000).await, &seqs);
    let errors = q.error_lines().await;
    assert!(errors.is_empty(), "{errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_pool_answers_sends_unavailable_in_bounded_time_and_readyz_says_so() {
    use sqlx::{Connection, PgConnection};
    let app = crate::helpers::spawn_app_with(|c| c.database_max_connections = 2).await;
    let (c1, c2, c3) = (
        app.conversation("alice", &["bob"]).await,
        app.conversation("alice", &["bob"]).await,
        app.conversation("alice", &["bob"]).await,
    );
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    assert_eq!(
        bob.call("join", json!({ "conversation_id": c1 })).await["success"],
        true
    );
    // Two conversations locked from outside: both writers wait on them holding both
    // pooled connections.
    let mut blocker = PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    let mut tx = blocker.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM conversations WHERE id = ANY($1::uuid[]) FOR UPDATE")
        .bind(vec![c1.clone(), c2.clone()])
        .execute(&mut *tx)
        .await
        .expect("lock");
    let send = |cid: String, id: &'static str| {
        let app_base = app.base.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = reqwest::Client::new()
                .post(format!(
                    "{app_base}{}",
                    api(&format!("/messages/conversations/{cid}"))
                ))
                .bearer_auth(token("alice"))
                .json(&json!({ "text": id, "client_message_id": id }))
                .send()
                .await
                .expect("answered");
            (r.status(), started.elapsed())
        })
    };
    let first = send(c1.clone(), "held-1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = send(c2.clone(), "held-2");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = send(c3.clone(), "starved-3");

    // Readiness says so while no connection can be had.
    let mut unready = false;
    for _ in 0..20 {
        let r = app
            .http
            .get(format!("{}/readyz", app.base))
            .send()
            .await
            .expect("readyz");
        if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            unready = true;
            break;
        }
    }
    assert!(unready, "/readyz stayed 200 with the pool exhausted");
    for (name, task) in [("held", first), ("held", second), ("starved", third)] {
        let (status, took) = task.await.expect("send");
        assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert!(took < Duration::from_secs(8), "{name} took {took:?}");
    }
    // The trouble ends: what was held commits, is delivered once, and a retry finds it.
    tx.rollback().await.expect("release");
    let got = bob.seqs_until(1, 5000).await;
    assert_eq!(got, vec![1], "the held send, delivered once");
    let (status, _) = app
        .post(
            &api(&format!("/messages/conversations/{c1}")),
            &token("alice"),
            json!({ "text": "held-1", "client_message_id": "held-1" }),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "already stored");
    assert!(bob.next_event("messageBroadcast", 500).await.is_none());
}
