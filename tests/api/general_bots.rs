//! Seed 001/004 (General Bots) as a client written from the seed would call it.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, api, spawn_app, token};
use crate::sio::{Sio, Ws};

const GB: &str = "/compat/general-bots";

fn gb(path: &str) -> String {
    format!("{GB}{path}")
}

async fn start(app: &TestApp, who: &str, body: Value) -> (StatusCode, Value) {
    app.post(&gb("/api/conversations/start"), &token(who), body)
        .await
}

#[tokio::test]
async fn the_seed_flow_start_send_history_list_works_in_the_seeds_shapes() {
    let app = spawn_app().await;
    // The seed's own example request.
    let (status, started) = start(
        &app,
        "alice",
        json!({ "bot_id": "bot-123", "initial_message": "Hello" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["status"], "active");
    let id = started["conversation_id"].as_str().expect("id").to_owned();
    assert_eq!(started["session_id"], id.as_str());

    let (status, sent) = app
        .post(
            &gb(&format!("/api/conversations/{id}/messages")),
            &token("alice"),
            json!({ "content": "User message", "attachments": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    assert_eq!(sent["status"], "delivered");
    assert!(sent["message_id"].is_string() && sent["timestamp"].is_string());

    // The bot answers through v1 (it is an agent principal).
    let bot = crate::helpers::token_of("bot-123", colloquy::auth::PrincipalKind::Agent, false);
    let (status, _) = app
        .post(
            &api(&format!("/messages/conversations/{id}")),
            &bot,
            json!({ "text": "Hi! How can I help you?" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, history) = app
        .get(
            &gb(&format!("/api/conversations/{id}/history")),
            &token("alice"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let messages = history["messages"].as_array().expect("messages");
    let senders: Vec<&str> = messages
        .iter()
        .map(|m| m["sender"].as_str().unwrap())
        .collect();
    assert_eq!(senders, ["user", "user", "bot"]);
    assert_eq!(messages[0]["content"], "Hello");
    assert_eq!(messages[2]["content"], "Hi! How can I help you?");
    for m in messages {
        assert!(m["id"].is_string() && m["timestamp"].is_string(), "{m}");
    }
    assert_eq!(history["has_more"], false);

    let (status, list) = app
        .get(
            &gb("/api/conversations?bot_id=bot-123&status=active"),
            &token("alice"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 1);
    let c = &list["conversations"][0];
    assert_eq!(c["id"], id.as_str());
    assert_eq!(c["bot_id"], "bot-123");
    assert_eq!(c["bot_name"], "bot-123");
    assert_eq!(c["last_message"], "Hi! How can I help you?");
    assert_eq!(c["status"], "active");
    assert!(c["last_activity"].is_string());
    let (_, none) = app
        .get(&gb("/api/conversations?status=archived"), &token("alice"))
        .await;
    assert_eq!(none["total"], 0);
}

#[tokio::test]
async fn history_pages_by_timestamp_cursors_without_skipping_or_repeating() {
    let app = spawn_app().await;
    let (_, started) = start(&app, "alice", json!({ "bot_id": "bot-1" })).await;
    let id = started["conversation_id"].as_str().unwrap().to_owned();
    // Concurrent sends commit together and share timestamps: the cursor must cope.
    let mut sends = Vec::new();
    for i in 0..30 {
        let app_http = app.http.clone();
        let url = format!(
            "{}{}",
            app.base,
            gb(&format!("/api/conversations/{id}/messages"))
        );
        sends.push(tokio::spawn(async move {
            app_http
                .post(url)
                .bearer_auth(token("alice"))
                .json(&json!({ "content": format!("m{i}") }))
                .send()
                .await
                .expect("send")
                .status()
        }));
    }
    for s in sends {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
    // Backwards with `before`.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let q = match &before {
            Some(b) => format!("?limit=7&before={}", urlencode(b)),
            None => "?limit=7".into(),
        };
        let (status, page) = app
            .get(
                &gb(&format!("/api/conversations/{id}/history{q}")),
                &token("alice"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let msgs = page["messages"].as_array().unwrap().clone();
        for m in msgs.iter().rev() {
            seen.push(m["id"].as_str().unwrap().to_owned());
        }
        if page["has_more"] == false {
            break;
        }
        before = Some(msgs[0]["timestamp"].as_str().unwrap().to_owned());
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), 30, "every message once");
    assert_eq!(unique.len(), 30);
    // Forwards with `after`.
    let mut forward = 0;
    let mut after = "1970-01-01T00:00:00Z".to_owned();
    loop {
        let (_, page) = app
            .get(
                &gb(&format!(
                    "/api/conversations/{id}/history?limit=9&after={}",
                    urlencode(&after)
                )),
                &token("alice"),
            )
            .await;
        let msgs = page["messages"].as_array().unwrap();
        forward += msgs.len();
        if page["has_more"] == false {
            break;
        }
        after = msgs.last().unwrap()["timestamp"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    assert_eq!(forward, 30);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn errors_use_the_seeds_codes_and_access_is_enforced() {
    let app = spawn_app().await;
    let (_, started) = start(&app, "alice", json!({ "bot_id": "bot-1" })).await;
    let id = started["conversation_id"].as_str().unwrap().to_owned();

    // 401 unauthorized
    let (status, body) = app
        .request(
            Method::POST,
            &gb("/api/conversations/start"),
            None,
            Some(json!({"bot_id": "b"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthorized");
    assert!(body["message"].is_string());

    // 400 invalid_message: empty, missing or non-string content; bad cursors and limits.
    for bad in [
        json!({"content": ""}),
        json!({}),
        json!({"content": 5}),
        json!({"content": "a\u{0}b"}),
    ] {
        let (status, body) = app
            .post(
                &gb(&format!("/api/conversations/{id}/messages")),
                &token("alice"),
                bad.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} {body}");
        assert_eq!(body["error"], "invalid_message");
    }
    for q in [
        "limit=0",
        "limit=101",
        "limit=x",
        "before=yesterday",
        "after=%00",
    ] {
        let (status, body) = app
            .get(
                &gb(&format!("/api/conversations/{id}/history?{q}")),
                &token("alice"),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q} {body}");
        assert_eq!(body["error"], "invalid_message", "{q}");
    }
    // 404 not_found: someone else's conversation, an unknown one, a non-UUID id.
    for (who, conv) in [
        ("mallory", id.as_str()),
        ("alice", "conv-456"),
        ("alice", "00000000-0000-0000-0000-000000000000"),
    ] {
        let (status, body) = app
            .get(
                &gb(&format!("/api/conversations/{conv}/history")),
                &token(who),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{who} {conv}");
        assert_eq!(body["error"], "not_found");
        let (status, _) = app
            .post(
                &gb(&format!("/api/conversations/{conv}/messages")),
                &token(who),
                json!({"content": "x"}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // Mallory's list does not show Alice's conversation.
    let (_, list) = app.get(&gb("/api/conversations"), &token("mallory")).await;
    assert_eq!(list["total"], 0);
    // Starting with oneself or a malformed bot id is refused.
    let (status, _) = start(&app, "alice", json!({"bot_id": "alice"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = start(&app, "alice", json!({"bot_id": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn the_seeds_rate_limit_on_list_is_thirty_per_minute_with_headers() {
    let app = spawn_app().await;
    let mut last = None;
    for i in 0..31 {
        let res = app
            .http
            .get(format!("{}{}", app.base, gb("/api/conversations")))
            .bearer_auth(token("alice"))
            .send()
            .await
            .unwrap();
        if i == 0 {
            assert_eq!(res.headers()["x-ratelimit-limit"], "30");
        }
        last = Some(res);
    }
    let res = last.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Other routes have their own allowance.
    let (status, _) = start(&app, "alice", json!({"bot_id": "bot-1"})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_message_through_general_bots_reaches_socket_io_ws_and_v1_and_back() {
    let app = spawn_app().await;
    let (_, started) = start(&app, "alice", json!({ "bot_id": "bot-9" })).await;
    let id = started["conversation_id"].as_str().unwrap().to_owned();
    let bot = crate::helpers::token_of("bot-9", colloquy::auth::PrincipalKind::Agent, false);
    let mut sio = Sio::connect(&app, Some(&bot)).await.unwrap();
    assert_eq!(
        sio.call("join", json!({"conversation_id": id})).await["success"],
        true
    );
    // The seed's `/ws`: session_id is the conversation id.
    let mut ws = Ws::connect(&app, &id, &token("alice")).await.unwrap();

    app.post(
        &gb(&format!("/api/conversations/{id}/messages")),
        &token("alice"),
        json!({ "content": "from general bots" }),
    )
    .await;
    let b = sio
        .next_event("messageBroadcast", 3000)
        .await
        .expect("socket.io hears it");
    assert_eq!(b["text"], "from general bots");
    let f = ws.next("message", 3000).await.expect("/ws hears it");
    assert_eq!(f["content"], "from general bots");

    // The seed's ws frame, answered by the bot over Socket.IO, shows in GB history.
    ws.send(json!({ "type": "message", "content": "over ws", "session_id": id }))
        .await;
    let echo = ws.next("message", 3000).await.expect("stored and echoed");
    assert_eq!(echo["content"], "over ws");
    let ack = sio
        .call(
            "chat_message",
            json!({"conversationId": id, "message": "bot reply"}),
        )
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    let (_, v1) = app
        .get(
            &api(&format!("/messages/conversations/{id}")),
            &token("alice"),
        )
        .await;
    let texts: Vec<&str> = v1["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(
        texts.contains(&"from general bots") && texts.contains(&"bot reply"),
        "{texts:?}"
    );
    let (_, history) = app
        .get(
            &gb(&format!("/api/conversations/{id}/history")),
            &token("alice"),
        )
        .await;
    let last = history["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"], "bot reply");
    assert_eq!(last["sender"], "bot");
}

#[tokio::test]
async fn a_refused_start_leaves_no_conversation_behind() {
    let app = spawn_app().await;
    let long = "x".repeat(10_001);
    let (status, body) = start(
        &app,
        "alice",
        json!({ "bot_id": "bot-1", "initial_message": long }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM conversations")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 0);
}
