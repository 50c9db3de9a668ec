//! The hostile-input table (contract §3): the same odd values sent through REST, Socket.IO
//! and `/ws` to a real `colloquy` process. Each must be answered with a 4xx or an error
//! ack/frame carrying a code, the process must log no ERROR line for any of it, and the
//! conversation must read back normally afterwards (history, search, gap fill).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::{
    helpers::{SECRET, api, fresh_database, token},
    sio::{Sio, Ws},
};

/// A `colloquy serve` child process with its log captured.
pub struct Process {
    pub database_url: String,
    pub base: String,
    pub addr: std::net::SocketAddr,
    child: tokio::process::Child,
    http: reqwest::Client,
    /// Readers draining stdout and stderr (so the process never blocks on a full pipe).
    logs: Vec<tokio::task::JoinHandle<String>>,
}

impl Process {
    /// Starts the real binary on a free port over a fresh database, JSON logs on stderr.
    pub async fn start(extra_env: &[(&str, &str)]) -> Process {
        Self::start_on(fresh_database().await, extra_env).await
    }

    /// Starts another process on `database_url` (several processes act as one server).
    pub async fn start_on(database_url: String, extra_env: &[(&str, &str)]) -> Process {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_colloquy"));
        command
            .arg("serve")
            .env("DATABASE_URL", &database_url)
            .env("COLLOQUY_LISTEN", format!("127.0.0.1:{port}"))
            .env("JWT_SECRET", SECRET)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("RATE_LIMIT_PER_MINUTE", "100000")
            // Logs go to stdout; stderr is kept too, for panics.
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start colloquy");
        let mut logs = vec![];
        if let Some(mut out) = child.stdout.take() {
            logs.push(tokio::spawn(async move {
                let mut text = String::new();
                let _ = out.read_to_string(&mut text).await;
                text
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            logs.push(tokio::spawn(async move {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text).await;
                text
            }));
        }
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let process = Process {
            database_url,
            base: format!("http://{addr}"),
            addr,
            child,
            http: reqwest::Client::new(),
            logs,
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = process
                .http
                .get(format!("{}/readyz", process.base))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "colloquy did not get ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    /// Sends a signal (`KILL`, `TERM`) to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    /// Waits for the process to exit; its exit code (`None`: killed by a signal).
    pub async fn exited(&mut self, within: Duration) -> Option<i32> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the process did not exit in time")
            .expect("wait")
            .code()
    }

    pub fn app(&self) -> crate::helpers::TestApp {
        crate::helpers::TestApp::external(self.addr, &self.database_url)
    }

    /// Stops the process and returns the ERROR lines it logged (and any panic), after
    /// checking that it logged at all, so an empty answer means something.
    pub async fn error_lines(self) -> Vec<String> {
        errors_in(&self.log().await)
    }

    /// Stops the process and returns everything it logged.
    pub async fn log(mut self) -> String {
        let _ = self.child.start_kill();
        let mut log = String::new();
        for reader in self.logs.drain(..) {
            if let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(10), reader).await {
                log.push_str(&text);
            }
        }
        assert!(
            log.contains("colloquy listening"),
            "the process's log was not captured:\n{log}"
        );
        log
    }

    /// Sends a raw body (bytes exactly as given) with a JSON content type.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        who: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let res = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token(who))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// The ERROR lines (and panics) of a process's log.
pub fn errors_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("panicked"))
        .map(str::to_owned)
        .collect()
}

const NUL: &str = "a\u{0}b";

/// Deeply nested JSON, `depth` arrays around a number.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// A 4xx in our envelope: a code and a message, no parser internals.
fn assert_client_error(what: &str, status: StatusCode, body: &Value) {
    assert!(status.is_client_error(), "{what}: {status} {body}");
    assert_eq!(body["success"], false, "{what}: {body}");
    assert!(body["code"].is_string(), "{what}: no code in {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{what}: no message");
    for internal in [
        "Cannot parse",
        "UUID parsing failed",
        "Failed to deserialize",
        "sqlx",
        "pg",
    ] {
        assert!(
            !message.contains(internal),
            "{what}: internals leak: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_every_transport_is_refused_cleanly_and_breaks_no_later_read() {
    let server = Process::start(&[]).await;
    let app = server.app();
    let cid = app.conversation("alice", &["bob"]).await;
    let first = app
        .send("alice", &cid, "a normal first message about rockets")
        .await;
    let mid = first["id"].as_str().expect("id").to_owned();

    // ---- REST: U+0000 in every kind of field (bodies, keys, queries, paths) ----
    let conversations = api("/conversations");
    let send = api(&format!("/messages/conversations/{cid}"));
    let participants = api(&format!("/conversations/{cid}/participants"));
    let nul_bodies: Vec<(Method, String, Value)> = vec![
        (Method::POST, send.clone(), json!({ "text": NUL })),
        (
            Method::POST,
            send.clone(),
            json!({ "text": "ok", "client_message_id": NUL }),
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "text": "ok", "thread_id": NUL }),
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "text": "ok", "sender_name": NUL }),
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "text": "ok", "metadata": { "k": NUL } }),
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "text": "ok", "metadata": { NUL: 1 } }),
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "text": "ok", "metadata": { "deep": [[{ "x": NUL }]] } }),
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "text": "ok", "attachments": [{ "type": "image", "url": NUL }] }),
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "text": "ok", "attachments": [{ "type": NUL, "url": "u" }] }),
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "text": "ok", "unknown_field": NUL }),
        ),
        (Method::POST, conversations.clone(), json!({ "name": NUL })),
        (
            Method::POST,
            conversations.clone(),
            json!({ "description": NUL }),
        ),
        (
            Method::POST,
            conversations.clone(),
            json!({ "tags": [NUL] }),
        ),
        (
            Method::POST,
            conversations.clone(),
            json!({ "platform_conversation_id": NUL }),
        ),
        (
            Method::POST,
            conversations.clone(),
            json!({ "participants": [NUL] }),
        ),
        (
            Method::POST,
            conversations.clone(),
            json!({ "creator_id": NUL }),
        ),
        (
            Method::POST,
            conversations.clone(),
            json!({ "platform_metadata": { NUL: NUL } }),
        ),
        (
            Method::PUT,
            api(&format!("/conversations/{cid}")),
            json!({ "name": NUL }),
        ),
        (
            Method::PUT,
            api(&format!("/conversations/{cid}")),
            json!({ "metadata": { "a": NUL } }),
        ),
        (
            Method::POST,
            participants.clone(),
            json!({ "participant_id": "carol", "display_name": NUL }),
        ),
        (
            Method::POST,
            participants.clone(),
            json!({ "participant_id": NUL }),
        ),
        (
            Method::POST,
            participants.clone(),
            json!({ "participants": [{ "participant_id": NUL }] }),
        ),
        (
            Method::PATCH,
            api(&format!("/messages/{mid}")),
            json!({ "text": NUL }),
        ),
        (
            Method::POST,
            api(&format!("/messages/{mid}/reactions")),
            json!({ "emoji": NUL }),
        ),
        (
            Method::POST,
            api("/agents"),
            json!({ "agent_id": NUL, "name": "x" }),
        ),
        (
            Method::POST,
            api(&format!("/messages/conversations/{cid}/mark-read")),
            json!({ "user_id": NUL }),
        ),
    ];
    for (method, path, body) in nul_bodies {
        let what = format!("{method} {path} {body}");
        let (status, answer) = app
            .request(method, &path, Some(&token("alice")), Some(body))
            .await;
        assert_client_error(&what, status, &answer);
        assert_ne!(answer["code"], "INTERNAL", "{what}");
    }
    let nul_urls = [
        api("/messages/search?q=a%00b"),
        api(&format!(
            "/messages/conversations/{cid}?sender_filter=a%00b"
        )),
        api("/conversations?q=a%00b"),
        api("/conversations?tag=a%00b"),
        api("/conversations?platform_conversation_id=a%00b"),
        api("/conversations?with_participant=a%00b"),
        api("/conversations?a%00b=1"),
        api("/agents/a%00b/conversations"),
        api(&format!("/messages/{mid}/reactions/a%00b")),
        api(&format!("/conversations/{cid}/participants/a%00b")),
        api("/conversations/a%00b"),
        api("/messages/a%00b"),
    ];
    for url in nul_urls {
        let method = if url.contains("/reactions/") || url.contains("/participants/") {
            Method::DELETE
        } else {
            Method::GET
        };
        let (status, answer) = app.request(method, &url, Some(&token("alice")), None).await;
        assert_client_error(&url, status, &answer);
    }

    // ---- REST: numbers, nesting, encodings, dates, integers, sizes ----
    let huge = r#"{"text":"huge numbers","metadata":{"max":1.7976931348623157e308,"min":-1.7976931348623157e308,"tiny":5e-324,"u64":18446744073709551615,"point_one":0.1}}"#;
    let (status, stored) = server.raw(Method::POST, &send, "alice", huge.into()).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "finite doubles are stored: {stored}"
    );
    assert_eq!(stored["data"]["metadata"]["max"], json!(f64::MAX));
    let refused: Vec<(&str, Vec<u8>)> = vec![
        (
            "a non-finite number",
            br#"{"text":"x","metadata":{"n":1e999}}"#.to_vec(),
        ),
        ("NaN", br#"{"text":"x","metadata":{"n":NaN}}"#.to_vec()),
        ("an integer past 64 bits", br#"{"text":"x","metadata":{"n":123456789012345678901234567890}}"#.to_vec()),
        ("more digits than a double keeps", br#"{"text":"x","metadata":{"n":0.10000000000000000001}}"#.to_vec()),
        ("an underflowing number", br#"{"text":"x","metadata":{"n":1e-400}}"#.to_vec()),
        ("an integer past 64 bits in an attachment", br#"{"text":"x","attachments":[{"type":"file","url":"u","size":99999999999999999999}]}"#.to_vec()),
        (
            "deep nesting",
            format!(r#"{{"text":"x","metadata":{{"n":{}}}}}"#, nested(100)).into_bytes(),
        ),
        (
            "nesting past the parser's limit",
            format!(r#"{{"text":"x","metadata":{{"n":{}}}}}"#, nested(5000)).into_bytes(),
        ),
        ("invalid UTF-8", b"{\"text\":\"\xff\xfe\"}".to_vec()),
        ("a lone surrogate", br#"{"text":"\ud800"}"#.to_vec()),
        ("an escaped NUL", br#"{"text":"a\u0000b"}"#.to_vec()),
        ("a wrong type", br#"{"text":42}"#.to_vec()),
        ("not JSON", b"text=hello".to_vec()),
        ("an array body", b"[1,2,3]".to_vec()),
        (
            "text past the limit",
            format!(r#"{{"text":"{}"}}"#, "x".repeat(10_001)).into_bytes(),
        ),
        (
            "a body over 1 MiB",
            format!(
                r#"{{"text":"x","metadata":{{"pad":"{}"}}}}"#,
                "x".repeat(1_100_000)
            )
            .into_bytes(),
        ),
    ];
    for (what, body) in refused {
        let (status, answer) = server.raw(Method::POST, &send, "alice", body).await;
        assert_client_error(what, status, &answer);
    }
    let bad_queries = [
        format!("/messages/conversations/{cid}?start_date=-262143-01-01T00:00:00Z"),
        format!("/messages/conversations/{cid}?end_date=%2B262142-12-31T23:59:59Z"),
        format!("/conversations/{cid}/analytics?start_date=-262143-01-01T00:00:00Z"),
        format!("/conversations/{cid}/analytics?end_date=%2B262142-12-31T23:59:59Z"),
        format!("/messages/conversations/{cid}?limit=99999999999999999999"),
        format!("/messages/conversations/{cid}?before_seq=-1"),
        format!("/messages/conversations/{cid}?after_seq=9223372036854775808"),
        format!("/messages/conversations/{cid}?offset=1e3"),
        "/conversations?limit=0".to_owned(),
        "/conversations?include_archived=maybe".to_owned(),
        "/conversations?platform=myspace".to_owned(),
    ];
    for q in bad_queries {
        let (status, answer) = app.get(&api(&q), &token("alice")).await;
        assert_client_error(&q, status, &answer);
    }

    // ---- Socket.IO: the same values in event payloads ----
    let mut sio = Sio::connect(&app, Some(&token("alice")))
        .await
        .expect("connect");
    let joined = sio.call("join", json!({ "conversation_id": cid })).await;
    assert_eq!(joined["success"], true, "{joined}");
    let socket_cases = [
        (
            "chat_message",
            json!({ "conversation_id": cid, "message": NUL }),
        ),
        (
            "chat_message",
            json!({ "conversation_id": cid, "message": "ok", "metadata": { NUL: 1 } }),
        ),
        (
            "chat_message",
            json!({ "conversation_id": cid, "message": "ok", "messageId": NUL }),
        ),
        (
            "chat_message",
            json!({ "conversation_id": cid, "message": "ok", "senderName": NUL }),
        ),
        (
            "chat_message",
            json!({ "conversation_id": NUL, "message": "ok" }),
        ),
        (
            "chat_message",
            json!({ "conversation_id": cid, "message": 12 }),
        ),
        (
            "join",
            json!({ "conversation_id": cid, "since_seq": 1e300 }),
        ),
        ("join", json!({ "platform_conversation_id": NUL })),
        ("join", json!({ "conversation_id": cid, "since_seq": -1 })),
        ("resume", json!({ "conversations": { NUL: 0 } })),
        ("resume", json!({ "conversations": { cid.clone(): 1e300 } })),
        ("resume", json!({ "conversations": "all" })),
        ("typing", json!({ "conversation_id": NUL })),
        (
            "mark_read",
            json!({ "conversation_id": cid, "up_to_seq": "lots" }),
        ),
        (
            "message",
            json!({ "type": 2, "payload": { "message": NUL, "roomId": cid, "senderId": "alice" } }),
        ),
    ];
    for (event, payload) in socket_cases {
        let ack = sio.call(event, payload.clone()).await;
        assert_eq!(ack["success"], false, "{event} {payload}: {ack}");
        assert!(ack["code"].is_string(), "{event}: {ack}");
        assert_ne!(ack["code"], "INTERNAL", "{event}: {ack}");
    }
    let inexact = sio
        .call_raw(
            "chat_message",
            &format!(r#"{{"conversation_id":"{cid}","message":"ok","metadata":{{"n":123456789012345678901234567890}}}}"#),
        )
        .await;
    assert_eq!(inexact["code"], "VALIDATION_ERROR", "{inexact}");
    let huge_ack = sio
        .call(
            "chat_message",
            json!({ "conversation_id": cid, "message": "huge over socket.io", "metadata": { "n": f64::MAX } }),
        )
        .await;
    assert_eq!(huge_ack["success"], true, "{huge_ack}");
    // A packet the protocol parser cannot read may cost its sender the connection, never
    // anyone else theirs; a well-formed packet with a NUL is answered like any bad event.
    let mut vandal = Sio::connect(&app, Some(&token("alice")))
        .await
        .expect("connect");
    vandal.raw(&format!("42{}", nested(5000))).await;
    sio.raw("42[\"chat_message\",{\"conversation_id\":\"x\",\"message\":\"\\u0000\"}]")
        .await;
    let still = sio.call("join", json!({ "conversation_id": cid })).await;
    assert_eq!(still["success"], true, "{still}");

    // ---- /ws: frames and the session id ----
    let nul_session = format!(
        "ws://{}/ws?session_id=a%00b&token={}",
        app.addr,
        token("alice")
    );
    let (code, frame) = Ws::connect_url(&nul_session).await.expect_err("refused");
    assert_eq!(code, 4400, "{frame}");
    assert_eq!(frame["code"], "VALIDATION_ERROR");
    let mut ws = Ws::connect(&app, &cid, &token("alice"))
        .await
        .expect("connect");
    ws.next("status", 3000).await.expect("status");
    let ws_cases = [
        json!({ "type": "message", "content": NUL }),
        json!({ "type": "message", "content": "ok", "metadata": { NUL: NUL } }),
        json!({ "type": "message", "content": "ok", "client_message_id": NUL }),
        json!({ "type": NUL }),
        json!({ "type": "message", "content": 5 }),
    ];
    for frame in ws_cases {
        ws.send(frame.clone()).await;
        let error = ws.next("error", 3000).await.expect("an error frame");
        assert!(error["code"].is_string(), "{frame}: {error}");
        assert_ne!(error["code"], "INTERNAL", "{frame}: {error}");
    }
    ws.send_raw(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"type":"message","content":"inexact","metadata":{"n":0.10000000000000000001}}"#.into(),
    ))
    .await;
    assert_eq!(
        ws.next("error", 3000).await.expect("error")["code"],
        "VALIDATION_ERROR"
    );
    ws.send(json!({ "type": "message", "content": "huge over ws", "metadata": { "n": f64::MAX } }))
        .await;
    ws.next("message", 3000)
        .await
        .expect("stored and delivered");

    // ---- Every later read still works ----
    let (status, history) = app
        .get(
            &api(&format!("/messages/conversations/{cid}?limit=100")),
            &token("bob"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let texts: Vec<&str> = history["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert!(texts.contains(&"huge numbers"), "{texts:?}");
    assert!(texts.contains(&"huge over socket.io"), "{texts:?}");
    assert!(texts.contains(&"huge over ws"), "{texts:?}");
    assert!(!texts.iter().any(|t| t.contains('\u{0}')));
    let (status, found) = app
        .get(&api("/messages/search?q=rockets"), &token("bob"))
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    for path in [
        format!("/conversations/{cid}/summary"),
        format!("/conversations/{cid}/analytics"),
        format!("/conversations/{cid}"),
        "/unread".to_owned(),
    ] {
        let (status, body) = app.get(&api(&path), &token("bob")).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let mut bob = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    let gap = bob
        .call("join", json!({ "conversation_id": cid, "since_seq": 0 }))
        .await;
    assert_eq!(gap["success"], true, "{gap}");
    assert!(
        gap["data"]["messages"]
            .as_array()
            .is_some_and(|m| m.len() >= 4),
        "{gap}"
    );

    sio.close().await;
    bob.close().await;
    let errors = server.error_lines().await;
    assert!(
        errors.is_empty(),
        "client mistakes were logged at ERROR:\n{}",
        errors.join("\n")
    );
}
