//! The Redis event bus (contract §6) with a real `redis-server` and real `colloquy`
//! processes: delivery across three processes, per-conversation interest (asserted from
//! the processes' metrics), and Redis killed and restarted under load.
//!
//! `redis-server` is the Debian package `scripts/test` installs; each test starts its own
//! on a free loopback port, with a password (so the URL's auth is exercised), as the
//! `redis` user when the tests run as root.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    faults::{assert_stream, stored_seqs},
    helpers::{TestApp, api, fresh_database, token},
    hostile::{Process, errors_in},
    sio::{Sio, Ws},
};

const PASSWORD: &str = "bus-secret-7d1f";

/// A `redis-server` child on a loopback port, without persistence.
struct Redis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl Redis {
    async fn start() -> Redis {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut redis = Redis { port, child: None };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://:{PASSWORD}@127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers.
    async fn restart(&mut self) {
        let server = which("redis-server").expect(
            "redis-server is not installed: scripts/test installs it (apt-get install redis-server)",
        );
        let args = [
            "--port".to_owned(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--requirepass".into(),
            PASSWORD.into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            std::env::temp_dir().display().to_string(),
        ];
        // As root, drop to the package's `redis` user (setpriv execs: the pid stays the
        // server's, so a kill reaches it).
        let mut command = if is_root() {
            let mut c = tokio::process::Command::new("setpriv");
            c.args(["--reuid=redis", "--regid=redis", "--init-groups"])
                .arg(&server);
            c
        } else {
            tokio::process::Command::new(&server)
        };
        command
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        self.child = Some(command.spawn().expect("start redis-server"));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9` (no shutdown, no goodbye to the clients).
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.exists())
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `n` processes on one fresh database and `redis`, each connected to the bus.
async fn start_cluster(n: usize, redis: &Redis) -> (String, Vec<Process>, Vec<TestApp>) {
    let database_url = fresh_database().await;
    let url = redis.url();
    let mut processes = vec![];
    for _ in 0..n {
        processes.push(Process::start_on(database_url.clone(), &[("EVENT_BUS", &url)]).await);
    }
    let apps: Vec<TestApp> = processes.iter().map(Process::app).collect();
    for app in &apps {
        wait_bus(app, "ok", Duration::from_secs(10)).await;
    }
    (database_url, processes, apps)
}

/// Alice's `i`th send through `app` from sender `p` (its own client id, so retries and
/// the count of what is stored stay exact).
async fn alice_sends(
    http: &reqwest::Client,
    app_base: &str,
    cid: &str,
    p: usize,
    i: usize,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!(
        "{app_base}{}",
        api(&format!("/messages/conversations/{cid}"))
    ))
    .bearer_auth(token("alice"))
    .json(&json!({ "text": format!("p{p} m{i}"), "client_message_id": format!("p{p}-{i}") }))
    .send()
    .await
}

/// A Socket.IO client of `who` on `app`, joined to `conversation`.
async fn joined(app: &TestApp, who: &str, conversation: &str) -> Sio {
    let mut s = Sio::connect(app, Some(&token(who))).await.expect("connect");
    let ack = s
        .call("join", json!({ "conversation_id": conversation }))
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    s
}

/// A sample's value in a process's `/metrics` (0 when absent).
async fn metric(app: &TestApp, sample: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const RECEIVED: &str = "colloquy_bus_received_total{bus=\"redis\"}";
const CONVERSATION_SUBSCRIPTIONS: &str = "colloquy_bus_subscriptions{kind=\"conversation\"}";

async fn bus_status(app: &TestApp) -> Value {
    let r = reqwest::get(format!("{}/readyz", app.base))
        .await
        .expect("readyz");
    r.json::<Value>().await.expect("readyz json")["event_bus"].clone()
}

async fn wait_bus(app: &TestApp, status: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let bus = bus_status(app).await;
        if bus["status"] == status {
            assert_eq!(bus["engine"], "redis");
            return;
        }
        assert!(
            started.elapsed() < within,
            "the bus did not become {status}: {bus}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_redis_deliver_every_message_to_every_member_once_in_order() {
    let redis = Redis::start().await;
    let (database_url, processes, apps) = start_cluster(3, &redis).await;
    let cid = apps[0]
        .conversation("alice", &["bob", "carol", "dave", "erin"])
        .await;

    // On each process a Socket.IO member and a /ws member; erin is connected to the last
    // without joining the conversation (she hears of it through her inbox only).
    let people = ["bob", "carol", "dave"];
    let mut sios = vec![];
    let mut wss = vec![];
    for (i, app) in apps.iter().enumerate() {
        sios.push(joined(app, people[i], &cid).await);
        let mut w = Ws::connect(app, &cid, &token(people[(i + 1) % 3]))
            .await
            .expect("ws");
        w.next("status", 3000).await.expect("status");
        wss.push(w);
    }
    let mut erin = Sio::connect(&apps[2], Some(&token("erin")))
        .await
        .expect("erin");

    // Past two of the bus's periodic looks at its subscriptions (each with a ping): they
    // must keep the connection, not cost it.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    // Alice sends through all three at once.
    let mut senders = vec![];
    for (p, app) in apps.iter().enumerate() {
        let (base, cid) = (app.base.clone(), cid.clone());
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..20 {
                let r = alice_sends(&http, &base, &cid, p, i).await.expect("send");
                assert!(r.status().is_success(), "{}", r.status());
            }
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
    let db = sqlx::PgPool::connect(&database_url).await.expect("db");
    let stored = stored_seqs(&db, &cid).await;
    assert_eq!(stored.len(), 60, "every send is stored once");
    let last = *stored.last().expect("stored");
    for (i, s) in sios.iter_mut().enumerate() {
        assert_stream(
            &format!("Socket.IO on process {i}"),
            &s.seqs_until(last, 3000).await,
            &stored,
        );
        assert!(
            s.next_event("messageBroadcast", 300).await.is_none(),
            "no repeats"
        );
    }
    for (i, w) in wss.iter_mut().enumerate() {
        assert_stream(
            &format!("/ws on process {i}"),
            &w.seqs_until(last, 3000).await,
            &stored,
        );
    }
    // Erin's inbox, on a process where nobody joined the conversation, ends at the last.
    let started = Instant::now();
    loop {
        let update = erin
            .next_event("inboxUpdated", 3000)
            .await
            .expect("erin hears of the conversation through her inbox");
        assert_eq!(update["conversation_id"], cid.as_str());
        if update["last_seq"] == last {
            assert_eq!(update["unread_count"], last);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{update}");
    }
    for (app, p) in apps.iter().zip(processes) {
        // Every wake-up came by the bus: no reconnect, no message read from the log.
        assert_eq!(
            metric(app, "colloquy_bus_reconnects_total{bus=\"redis\"}").await,
            0.0
        );
        assert_eq!(
            metric(app, "colloquy_bus_publish_failures_total{bus=\"redis\"}").await,
            0.0
        );
        assert_eq!(metric(app, "colloquy_delivery_gap_filled_total").await, 0.0);
        let errors = p.error_lines().await;
        assert!(errors.is_empty(), "{errors:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_hears_only_the_conversations_its_own_clients_follow() {
    let redis = Redis::start().await;
    let (_, processes, apps) = start_cluster(3, &redis).await;
    let x = apps[0].conversation("alice", &["bob"]).await;
    let y = apps[0].conversation("carol", &["dave"]).await;
    // Bob follows X on B; carol follows Y on C (C has clients, none of them in X).
    let mut bob = joined(&apps[1], "bob", &x).await;
    let mut carol = joined(&apps[2], "carol", &y).await;
    let before_b = metric(&apps[1], RECEIVED).await;
    let before_c = metric(&apps[2], RECEIVED).await;
    for i in 0..30 {
        apps[0].send("alice", &x, &format!("x{i}")).await;
    }
    assert_eq!(bob.seqs_until(30, 3000).await, (1..=30).collect::<Vec<_>>());
    let heard_b = metric(&apps[1], RECEIVED).await - before_b;
    let heard_c = metric(&apps[2], RECEIVED).await - before_c;
    assert!(heard_b >= 30.0, "B follows X and hears it: {heard_b}");
    assert_eq!(heard_c, 0.0, "C has no member in X and hears none of it");
    // A message in Y reaches C.
    apps[0].send("dave", &y, "y1").await;
    assert_eq!(carol.seqs_until(1, 3000).await, vec![1]);
    assert!(metric(&apps[2], RECEIVED).await - before_c >= 1.0);

    // Once bob is gone, B drops X's (and bob's inbox) channel and hears nothing more of X.
    bob.close().await;
    let started = Instant::now();
    while metric(&apps[1], CONVERSATION_SUBSCRIPTIONS).await > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "B still subscribed to X after its last member left"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_b = metric(&apps[1], RECEIVED).await;
    for i in 0..10 {
        apps[0].send("alice", &x, &format!("later {i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(&apps[1], RECEIVED).await - before_b,
        0.0,
        "B has no client left in X"
    );
    for p in processes {
        let errors = p.error_lines().await;
        assert!(errors.is_empty(), "{errors:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_loses_nothing() {
    let mut redis = Redis::start().await;
    let (database_url, processes, apps) = start_cluster(2, &redis).await;
    let (a, b) = (&apps[0], &apps[1]);
    let cid = a.conversation("alice", &["bob", "carol", "dave"]).await;
    let mut bob_b = joined(b, "bob", &cid).await;
    // Dave is removed through A while Redis is down: B never hears the removal on the
    // bus, and must still cut him once it is back.
    let mut dave_b = joined(b, "dave", &cid).await;
    let mut dave_ws = Ws::connect(b, &cid, &token("dave")).await.expect("ws");
    dave_ws.next("status", 3000).await.expect("status");
    let mut carol_b = Ws::connect(b, &cid, &token("carol")).await.expect("ws");
    carol_b.next("status", 3000).await.expect("status");
    let mut carol_a = joined(a, "carol", &cid).await;

    // Alice sends through both processes for 3 s; Redis dies at 1 s and is back at 2 s.
    let stop = Instant::now() + Duration::from_secs(3);
    let mut senders = vec![];
    for (p, app) in [a, b].into_iter().enumerate() {
        let (base, cid) = (app.base.clone(), cid.clone());
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut acked, mut failed) = (0, 0);
            let mut i = 0;
            while Instant::now() < stop {
                match alice_sends(&http, &base, &cid, p, i).await {
                    Ok(r) if r.status().is_success() => acked += 1,
                    _ => failed += 1,
                }
                i += 1;
            }
            (acked, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.kill().await;
    wait_bus(b, "degraded", Duration::from_secs(5)).await;
    let (removed, body) = a
        .request(
            reqwest::Method::DELETE,
            &api(&format!("/conversations/{cid}/participants/dave")),
            Some(&token("alice")),
            None,
        )
        .await;
    assert!(removed.is_success(), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await;
    let (mut acked, mut failed) = (0, 0);
    for s in senders {
        let (ok, bad) = s.await.expect("sender");
        acked += ok;
        failed += bad;
    }
    assert_eq!(failed, 0, "sends commit and are acked while Redis is down");
    let db = sqlx::PgPool::connect(&database_url).await.expect("db");
    let stored = stored_seqs(&db, &cid).await;
    assert_eq!(stored.len(), acked, "acked = stored");
    let last = *stored.last().expect("stored");
    // Wake-ups lost while Redis was down are read from the log (within the watched
    // conversations' sweep): every listener ends with everything, once, in order. All
    // three are read at once: a client left unread while the others are (thousands of
    // messages) would fill its socket's buffer and be cut as a slow consumer.
    let (bob_got, carol_b_got, carol_a_got) = tokio::join!(
        bob_b.seqs_until(last, 8000),
        carol_b.seqs_until(last, 8000),
        carol_a.seqs_until(last, 8000),
    );
    if [&bob_got, &carol_b_got, &carol_a_got]
        .iter()
        .any(|got| *got != &stored)
    {
        // What the processes said is the first thing to look at.
        let mut notes = String::new();
        for p in processes {
            let log = p.log().await;
            for line in log
                .lines()
                .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
            {
                notes.push_str(line);
                notes.push('\n');
            }
        }
        eprintln!("the processes logged:\n{notes}");
        assert_stream("bob on B (Socket.IO)", &bob_got, &stored);
        assert_stream("carol on B (/ws)", &carol_b_got, &stored);
        assert_stream("carol on A (Socket.IO)", &carol_a_got, &stored);
        unreachable!("one of the streams differs from what is stored");
    }

    // Reconnected and subscribed again by itself: live delivery is back on the bus.
    for app in [a, b] {
        wait_bus(app, "ok", Duration::from_secs(10)).await;
        assert!(metric(app, "colloquy_bus_reconnects_total{bus=\"redis\"}").await >= 1.0);
    }
    let sent = Instant::now();
    let m = a.send("alice", &cid, "after the restart").await;
    let seq = m["seq"].as_i64().expect("seq");
    assert_eq!(bob_b.seqs_until(seq, 3000).await, vec![seq]);
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "delivered by the bus again, not by the log sweep: {:?}",
        sent.elapsed()
    );
    // The removal missed on the bus was caught on reconnect: nothing sent after it reaches
    // dave (his /ws session was closed; his socket left the room).
    let dave_got = dave_b.seqs_until(seq, 1500).await;
    assert!(
        dave_got.iter().all(|s| *s < seq),
        "a removed participant still receives messages ({} received, the last {:?})",
        dave_got.len(),
        dave_got.last()
    );
    let closed = dave_ws.closed(3000).await;
    assert!(
        closed.is_some(),
        "the removed participant's /ws session is closed"
    );
    for p in processes {
        let log = p.log().await;
        // The loss of the bus is a warning, never an error; the password is never logged.
        let errors = errors_in(&log);
        assert!(errors.is_empty(), "{errors:#?}");
        assert!(!log.contains(PASSWORD), "the Redis password was logged");
        assert!(
            log.contains("lost the Redis event bus"),
            "the loss is logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_starts_and_serves_without_redis_and_joins_the_bus_when_it_comes() {
    // Nothing listens on the port yet; one process has the wrong password.
    let mut redis = Redis {
        port: {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        },
        child: None,
    };
    let database_url = fresh_database().await;
    let a = Process::start_on(database_url.clone(), &[("EVENT_BUS", &redis.url())]).await;
    let wrong = format!("redis://:not-{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let b = Process::start_on(database_url.clone(), &[("EVENT_BUS", &wrong)]).await;
    let (app_a, app_b) = (a.app(), b.app());
    // Ready (the database answers), the bus reported degraded.
    wait_bus(&app_a, "degraded", Duration::from_secs(5)).await;
    let cid = app_a.conversation("alice", &["bob"]).await;
    let mut bob = joined(&app_a, "bob", &cid).await;
    // Sends commit and local members hear them without a bus.
    let m = app_a.send("alice", &cid, "no bus yet").await;
    assert_eq!(
        bob.seqs_until(1, 3000).await,
        vec![m["seq"].as_i64().expect("seq")]
    );

    redis.restart().await;
    wait_bus(&app_a, "ok", Duration::from_secs(10)).await;
    // The wrong password never connects, and says so (misconfigured, one ERROR) without
    // the secret.
    wait_bus(&app_b, "misconfigured", Duration::from_secs(10)).await;
    // Bob, on A, hears a message sent through B: B's wake-ups are lost, so A's delivery
    // stage reads it from the log (bounded by its sweep of followed conversations).
    let sent = Instant::now();
    let m = app_b
        .send("alice", &cid, "through the process without a bus")
        .await;
    assert_eq!(
        bob.seqs_until(2, 8000).await,
        vec![m["seq"].as_i64().expect("seq")]
    );
    assert!(
        sent.elapsed() < Duration::from_secs(7),
        "{:?}",
        sent.elapsed()
    );
    let log = a.log().await;
    let errors = errors_in(&log);
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(!log.contains(PASSWORD), "a Redis password was logged");
    let log = b.log().await;
    let errors = errors_in(&log);
    assert_eq!(
        errors.len(),
        1,
        "one ERROR for refused credentials: {errors:#?}"
    );
    assert!(errors[0].contains("credentials"), "{errors:#?}");
    assert!(!log.contains(PASSWORD), "a Redis password was logged");
}
