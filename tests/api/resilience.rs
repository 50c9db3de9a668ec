//! Database outages: start before Postgres is reachable, and lose it while serving.
//!
//! The server reaches the real test Postgres through a TCP relay the test can cut: while
//! it is down, new connections are closed at once and live ones are dropped, which is
//! what clients see when Postgres restarts.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    helpers::{TestApp, api, fresh_database, spawn_unready, token},
    sio::Sio,
};

struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Relay {
    async fn start(target: SocketAddr, up: bool) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let up = Arc::new(AtomicBool::new(up));
        let (cut, _) = watch::channel(0u64);
        let (flag, cuts) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { addr, up, cut }
    }

    /// Postgres "stops": live connections drop, new ones are refused.
    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A fresh database, and the same URL through a relay that starts `up` or not.
async fn database_behind_relay(up: bool) -> (String, Relay) {
    let direct = url::Url::parse(&fresh_database().await).expect("url");
    let target: SocketAddr = format!(
        "{}:{}",
        direct.host_str().unwrap_or("127.0.0.1"),
        direct.port().unwrap_or(5432)
    )
    .parse()
    .expect("the test database is addressed by IP");
    let relay = Relay::start(target, up).await;
    let mut relayed = direct.clone();
    relayed.set_port(Some(relay.addr.port())).expect("port");
    (relayed.to_string(), relay)
}

async fn wait_until_ready(app: &TestApp, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        let (s, _) = app.request(Method::GET, "/readyz", None, None).await;
        if s == StatusCode::OK {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn the_server_starts_before_postgres_and_becomes_ready_when_it_appears() {
    let (url, relay) = database_behind_relay(false).await;
    let app = spawn_unready(&url, |_| {}).await;

    let (s, _) = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK, "alive without a database");
    let (s, body) = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (s, body) = app.get(&api("/conversations"), &token("alice")).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("UNAVAILABLE")),
        "{body}"
    );
    assert!(
        !body.to_string().contains("connect"),
        "no internals leak: {body}"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.up();
    assert!(
        wait_until_ready(&app, Duration::from_secs(20)).await,
        "ready once Postgres is reachable"
    );
    let c = app.conversation("alice", &[]).await;
    app.send("alice", &c, "first light").await;
}

#[tokio::test]
async fn a_postgres_outage_is_503_and_recovers_without_losing_acknowledged_messages() {
    let (url, relay) = database_behind_relay(true).await;
    let app = spawn_unready(&url, |_| {}).await;
    assert!(wait_until_ready(&app, Duration::from_secs(20)).await);
    let c = app.conversation("alice", &["bob"]).await;
    let mut sio = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("socket");
    let joined = sio.call("join", json!({"conversation_id": c})).await;
    assert_eq!(joined["success"], true, "{joined}");

    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(app.send("alice", &c, &format!("before {i}")).await["id"].clone());
    }

    relay.down();
    // The same two sends are made during the outage and retried after it.
    let (path, alice) = (api(&format!("/messages/conversations/{c}")), token("alice"));
    let rest_send = || {
        app.post(
            &path,
            &alice,
            json!({"text": "during", "client_message_id": "outage-1"}),
        )
    };
    let socket_send =
        json!({"conversation_id": c, "message": "socket during", "messageId": "outage-2"});
    let (s, body) = rest_send().await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("UNAVAILABLE")),
        "{body}"
    );
    let ack = sio.call("chat_message", socket_send.clone()).await;
    assert_eq!(
        (ack["success"].clone(), ack["code"].clone()),
        (json!(false), json!("UNAVAILABLE")),
        "{ack}"
    );
    let (s, _) = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);

    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.up();
    assert!(wait_until_ready(&app, Duration::from_secs(20)).await);

    // The client retries with the same ids: stored once, and the socket still works.
    let retry = async {
        for _ in 0..50 {
            let (s, body) = rest_send().await;
            if s.is_success() {
                return body["data"]["id"].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("REST never recovered");
    };
    acked.push(retry.await);
    let ack = sio.call("chat_message", socket_send.clone()).await;
    assert_eq!(ack["success"], true, "{ack}");
    acked.push(ack["data"]["id"].clone());

    let (s, history) = app
        .get(
            &api(&format!("/messages/conversations/{c}?limit=100")),
            &token("alice"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let items = history["data"]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ids: Vec<_> = items.iter().map(|m| m["id"].clone()).collect();
    let seqs: Vec<i64> = items.iter().filter_map(|m| m["seq"].as_i64()).collect();
    assert_eq!(ids, acked, "every acknowledged message, once, in order");
    assert_eq!(
        seqs,
        (1..=12).collect::<Vec<i64>>(),
        "no seq burned by the outage"
    );
}
