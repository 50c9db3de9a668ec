//! Agent responders (contract §8) against a fake OpenAI-compatible streaming provider
//! started by the test: the full event sequence, failures that store nothing, no loops.

use std::time::Duration;

use colloquy::auth::PrincipalKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, api, spawn_app_with, token, token_of},
    receiver::Provider,
    sio::{Sio, Ws},
};

fn admin() -> String {
    token_of("root", PrincipalKind::User, true)
}

fn config(c: &mut colloquy::config::Config) {
    c.webhook_allow_private = "true".into();
    c.responder_timeout_seconds = 1;
    c.rate_limit_per_minute = 100_000;
}

/// A conversation between `user` and `agent` (an agent participant).
async fn with_agent(app: &TestApp, user: &str, agents: &[&str]) -> String {
    let participants: Vec<Value> = agents
        .iter()
        .map(|a| json!({ "participant_id": a, "participant_type": "agent" }))
        .collect();
    let (s, body) = app
        .post(
            &api("/conversations"),
            &token(user),
            json!({ "name": "help", "participants": participants }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body["conversation_id"].as_str().unwrap().to_owned()
}

async fn set_responder(app: &TestApp, who: &str, agent: &str, body: Value) -> (StatusCode, Value) {
    app.request(
        Method::PUT,
        &api(&format!("/agents/{agent}/responder")),
        Some(who),
        Some(body),
    )
    .await
}

async fn history(app: &TestApp, conv: &str) -> Vec<Value> {
    let (_, body) = app
        .get(
            &api(&format!("/messages/conversations/{conv}?limit=100")),
            &admin(),
        )
        .await;
    let mut items = body["data"]["messages"]
        .as_array()
        .or_else(|| body["data"]["items"].as_array())
        .or_else(|| body["data"].as_array())
        .cloned()
        .unwrap_or_else(|| panic!("history: {body}"));
    items.sort_by_key(|m| m["seq"].as_i64());
    items
}

/// Waits until the conversation holds `n` messages (or `ms` pass).
async fn wait_for_messages(app: &TestApp, conv: &str, n: usize, ms: u64) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        let h = history(app, conv).await;
        if h.len() >= n || tokio::time::Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_user_message_streams_typing_deltas_then_one_stored_reply_and_complete() {
    let app = spawn_app_with(config).await;
    let provider = Provider::start().await;
    let (s, body) = app
        .post(
            &api("/agents"),
            &admin(),
            json!({ "agent_id": "helper", "owner_id": "olivia" }),
        )
        .await;
    assert!(s.is_success(), "{body}");
    // Only the agent, its owner, an admin or a service configure it.
    let settings = json!({
        "model": "chunks", "system_prompt": "Be brief.", "temperature": 0.2, "max_history": 10,
        "base_url": provider.base_url(), "api_key": "sk-very-secret",
    });
    let (s, _) = set_responder(&app, &token("mallory"), "helper", settings.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for bad in [
        json!({"model": ""}),
        json!({"model": "m", "temperature": 9}),
        json!({"model": "m", "max_history": -1}),
        json!({"model": "m", "base_url": "ftp://x"}),
    ] {
        let (s, body) = set_responder(&app, &token("olivia"), "helper", bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    }
    let (s, body) = set_responder(&app, &token("olivia"), "helper", settings).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert!(
        !body.to_string().contains("sk-very-secret"),
        "the key is never returned"
    );
    assert_eq!(body["data"]["has_api_key"], true);

    let conv = with_agent(&app, "alice", &["helper"]).await;
    let mut sio = Sio::connect(&app, Some(&token("alice"))).await.unwrap();
    let ack = sio.call("join", json!({ "conversation_id": conv })).await;
    assert_eq!(ack["success"], true, "{ack}");
    let mut ws = Ws::connect(&app, &conv, &token("alice")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await; // the responder set is re-read

    let ack = sio
        .call(
            "chat_message",
            json!({ "conversation_id": conv, "message": "hi there", "messageId": "c-1" }),
        )
        .await;
    assert_eq!(ack["success"], true, "{ack}");

    let typing = sio.next_event("typing", 5000).await.expect("typing");
    assert_eq!(typing["user_id"], "helper");
    assert_eq!(typing["is_typing"], true);
    let mut text = String::new();
    let mut stream_id = Value::Null;
    while !text.ends_with("(re: hi there)") {
        let delta = sio.next_event("messageStream", 5000).await.expect("delta");
        assert_eq!(delta["conversation_id"], conv.as_str());
        if stream_id.is_null() {
            stream_id = delta["stream_id"].clone();
        }
        assert_eq!(delta["stream_id"], stream_id, "one stream");
        text.push_str(delta["delta"].as_str().unwrap());
    }
    assert_eq!(text, "Hello world (re: hi there)");
    let reply = sio
        .next_event("messageBroadcast", 5000)
        .await
        .expect("the stored reply");
    assert_eq!(reply["senderId"], "helper");
    assert_eq!(reply["text"], text);
    let complete = sio
        .next_event("messageComplete", 5000)
        .await
        .expect("complete");
    assert_eq!(complete["agentId"], "helper");
    let off = sio.next_event("typing", 5000).await.expect("typing off");
    assert_eq!(off["is_typing"], false);
    // `/ws` sees the same stream and the reply.
    let frame = ws.next("messageStream", 5000).await.expect("ws delta");
    assert_eq!(frame["stream_id"], stream_id);
    let stored = ws.next("message", 5000).await.expect("ws reply");
    assert_eq!(stored["sender_id"], "helper");

    // The provider got the key, the model, the system prompt and the history.
    let requests = provider.requests();
    let (headers, request) = requests.last().unwrap();
    assert_eq!(headers["authorization"], "Bearer sk-very-secret");
    assert_eq!(request["model"], "chunks");
    assert_eq!(request["stream"], true);
    assert_eq!(
        request["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        request["messages"].as_array().unwrap().last().unwrap()["content"],
        "hi there"
    );

    // Three messages in a row: three replies, one each, in order.
    for i in 0..3 {
        app.send("alice", &conv, &format!("q{i}")).await;
    }
    let h = wait_for_messages(&app, &conv, 8, 10_000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h2 = history(&app, &conv).await;
    assert_eq!(h.len(), h2.len(), "nothing more is stored");
    // One reply per user message, in order, each after the message it answers. How the
    // three sends and the replies interleave depends on timing: a reply may be stored
    // before the next send arrives.
    let texts: Vec<(&str, &str)> = h2
        .iter()
        .map(|m| {
            (
                m["sender_id"].as_str().unwrap(),
                m["text"].as_str().unwrap(),
            )
        })
        .collect();
    let count = |who: &str| texts.iter().filter(|(s, _)| *s == who).count();
    assert_eq!((count("alice"), count("helper")), (4, 4), "{texts:?}");
    let replies: Vec<&str> = texts
        .iter()
        .filter(|(s, _)| *s == "helper")
        .map(|(_, t)| *t)
        .collect();
    assert!(
        replies[1].ends_with("(re: q0)")
            && replies[2].ends_with("(re: q1)")
            && replies[3].ends_with("(re: q2)"),
        "{replies:?}"
    );
    for i in 0..3 {
        let asked = texts
            .iter()
            .position(|(_, t)| *t == format!("q{i}"))
            .expect("asked");
        let answered = texts
            .iter()
            .position(|(s, t)| *s == "helper" && t.ends_with(&format!("(re: q{i})")))
            .expect("answered");
        assert!(
            asked < answered,
            "q{i} is answered after it is asked: {texts:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn provider_errors_stalls_and_malformed_streams_end_with_an_error_and_store_nothing() {
    let app = spawn_app_with(config).await;
    let provider = Provider::start().await;
    let conv = with_agent(&app, "alice", &["helper"]).await;
    let mut sio = Sio::connect(&app, Some(&token("alice"))).await.unwrap();
    sio.call("join", json!({ "conversation_id": conv })).await;
    let agent = token_of("helper", PrincipalKind::Agent, false);
    for (model, code) in [
        ("http500", "RESPONDER_FAILED"),
        ("error-mid", "RESPONDER_FAILED"),
        ("malformed", "RESPONDER_FAILED"),
        ("stall", "RESPONDER_TIMEOUT"),
    ] {
        let (s, body) = set_responder(
            &app,
            &agent,
            "helper",
            json!({ "model": model, "base_url": provider.base_url() }),
        )
        .await;
        assert!(s.is_success(), "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = history(&app, &conv).await.len();
        app.send("alice", &conv, &format!("try {model}")).await;
        let error = sio
            .next_event("error", 8000)
            .await
            .unwrap_or_else(|| panic!("{model}: no error event"));
        assert_eq!(error["code"], code, "{model}: {error}");
        assert_eq!(error["agent_id"], "helper");
        assert!(!error["stream_id"].is_null());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = history(&app, &conv).await;
        assert_eq!(
            after.len(),
            before + 1,
            "{model}: only the user's message is stored"
        );
        assert!(after.iter().all(|m| m["sender_id"] != "helper"));
        let off = loop {
            let t = sio.next_event("typing", 3000).await.expect("typing");
            if t["is_typing"] == false {
                break t;
            }
        };
        assert_eq!(off["user_id"], "helper");
    }
    // Disabled: nothing at all.
    let (s, _) = set_responder(
        &app,
        &agent,
        "helper",
        json!({ "model": "chunks", "base_url": provider.base_url(), "enabled": false }),
    )
    .await;
    assert!(s.is_success());
    let calls = provider.requests().len();
    app.send("alice", &conv, "anyone?").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(provider.requests().len(), calls);
    app.stop().await;
}

#[tokio::test]
async fn responders_answer_users_only_never_agents_or_themselves() {
    let app = spawn_app_with(|c| {
        config(c);
        // The server's own key never goes to a provider an agent's controller chose.
        c.openai_api_key = Some(colloquy::config::Secret::new("sk-server-key"));
    })
    .await;
    let provider = Provider::start().await;
    for agent in ["ann", "ben"] {
        let (s, body) = set_responder(
            &app,
            &admin(),
            agent,
            json!({ "model": "chunks", "base_url": provider.base_url() }),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let conv = with_agent(&app, "alice", &["ann", "ben"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.send("alice", &conv, "hello both").await;
    let h = wait_for_messages(&app, &conv, 3, 10_000).await;
    // Each agent answered the user once; neither answered the other's reply.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let h2 = history(&app, &conv).await;
    assert_eq!(h.len(), 3);
    assert_eq!(h2.len(), 3, "no loop: {h2:?}");
    // An agent's own message is not answered either.
    let (s, _) = app
        .post(
            &api(&format!("/messages/conversations/{conv}")),
            &token_of("ann", PrincipalKind::Agent, false),
            json!({"text": "from ann"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(history(&app, &conv).await.len(), 4);
    assert_eq!(provider.requests().len(), 2);
    assert!(
        provider
            .requests()
            .iter()
            .all(|(h, _)| h.get("authorization").is_none())
    );
    app.stop().await;
}

#[tokio::test]
async fn a_process_killed_mid_stream_stores_no_half_reply() {
    let provider = Provider::start().await;
    let env = [
        ("WEBHOOK_ALLOW_PRIVATE", "true"),
        ("RESPONDER_TIMEOUT_SECONDS", "60"),
    ];
    let process = crate::hostile::Process::start(&env).await;
    let app = process.app();
    let (s, body) = set_responder(
        &app,
        &admin(),
        "helper",
        json!({ "model": "stall", "base_url": provider.base_url() }),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let conv = with_agent(&app, "alice", &["helper"]).await;
    let mut sio = Sio::connect(&app, Some(&token("alice"))).await.unwrap();
    sio.call("join", json!({ "conversation_id": conv })).await;
    app.send("alice", &conv, "think hard").await;
    // The first delta went out: the reply is mid-stream.
    let delta = sio
        .next_event("messageStream", 5000)
        .await
        .expect("a delta");
    assert_eq!(delta["delta"], "Thinking");
    process.signal("KILL");
    let database_url = process.database_url.clone();
    drop(process);
    let again = crate::hostile::Process::start_on(database_url, &env).await;
    let app = again.app();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h = history(&app, &conv).await;
    assert_eq!(h.len(), 1, "only the user's message: {h:?}");
    assert_eq!(h[0]["sender_id"], "alice");
}
