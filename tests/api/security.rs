//! The access holes found from outside, each pinned by a test: agent ownership, live
//! access after removal, `nbf` in both key modes, CORS with credentials and on upgrades,
//! `/ws` close codes, erasure on delete, and conversations past the create limit.

use std::time::Duration;

use colloquy::auth::PrincipalKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    access::{not_yet_valid_token, subject_token},
    helpers::{SECRET, TestApp, api, spawn_app, spawn_app_with, token, token_of},
    sio::{Sio, Ws},
};

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// A conversation `creator` starts with `agent` taking part as an agent.
async fn with_agent(app: &TestApp, creator: &str, agent: &str) -> String {
    let (status, made) = app
        .post(
            &api("/conversations"),
            &token(creator),
            json!({ "participants": [{ "participant_id": agent, "participant_type": "agent" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    made["conversation_id"].as_str().expect("id").to_owned()
}

async fn register(app: &TestApp, caller: &str, body: Value) -> (StatusCode, Value) {
    app.post(&api("/agents"), caller, body).await
}

#[tokio::test]
async fn only_a_party_controlling_an_agent_id_can_grant_its_ownership() {
    let app = spawn_app().await;
    let secret_chat = app.conversation("victim", &["friend"]).await;
    app.send("victim", &secret_chat, "my private plans").await;

    // A user cannot claim someone else's id, nor squat one not used yet.
    for id in ["victim", "future-bot"] {
        let (status, body) = register(&app, &token("mallory"), json!({ "agent_id": id })).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{id}: {body}");
        assert_eq!(body["code"], "FORBIDDEN");
    }
    let (status, _) = app
        .get(
            &api(&format!("/conversations/{secret_chat}")),
            &token("mallory"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .get(&api("/agents/victim/conversations"), &token("mallory"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, found) = app
        .get(&api("/messages/search?q=plans"), &token("mallory"))
        .await;
    assert_eq!(found["data"]["total"], 0, "{found}");

    // The agent itself names its owner.
    let bot = token_of("bot-1", PrincipalKind::Agent, false);
    let (status, body) = register(&app, &bot, json!({ "agent_id": "bot-1" })).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "owner_id is required: {body}"
    );
    let (status, body) = register(
        &app,
        &bot,
        json!({ "agent_id": "bot-1", "owner_id": "olivia" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["owner_id"], "olivia");
    // ... but not another agent's.
    let (status, _) = register(
        &app,
        &bot,
        json!({ "agent_id": "bot-2", "owner_id": "olivia" }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // An admin or a service names any owner.
    let admin = token_of("root", PrincipalKind::User, true);
    let (status, _) = register(
        &app,
        &admin,
        json!({ "agent_id": "bot-3", "owner_id": "olivia" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let service = token_of("bridge", PrincipalKind::Service, false);
    let (status, body) = register(
        &app,
        &service,
        json!({ "agent_id": "bot-3", "ownerId": "oscar" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["owner_id"], "oscar");

    // The owner view covers only conversations where the id takes part as an agent.
    let as_agent = with_agent(&app, "victim", "bot-1").await;
    let as_user = app.conversation("victim", &["bot-1"]).await;
    let (status, _) = app
        .get(
            &api(&format!("/conversations/{as_agent}")),
            &token("olivia"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .get(&api(&format!("/conversations/{as_user}")), &token("olivia"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "bot-1 is only a user there");
    let (_, view) = app
        .get(&api("/agents/bot-1/conversations"), &token("olivia"))
        .await;
    let ids: Vec<&str> = view["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, vec![as_agent.as_str()], "{view}");
}

#[tokio::test]
async fn an_agent_tokens_signed_owner_claim_is_recorded_on_first_use() {
    let app = spawn_app().await;
    let bot =
        hs(json!({ "sub": "claimed-bot", "kind": "agent", "owner": "oscar", "exp": now() + 600 }));
    let cid = with_agent(&app, "carol", "claimed-bot").await;
    let (status, _) = app
        .get(&api(&format!("/conversations/{cid}")), &token("oscar"))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "not recorded before the agent shows up"
    );
    let (status, _) = app.get(&api("/unread"), &bot).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .get(&api(&format!("/conversations/{cid}")), &token("oscar"))
        .await;
    assert_eq!(status, StatusCode::OK);
    // A user token's owner claim means nothing.
    let user = hs(json!({ "sub": "plain-user", "owner": "oscar", "exp": now() + 600 }));
    app.get(&api("/unread"), &user).await;
    let (status, _) = app
        .get(&api("/agents/plain-user/conversations"), &token("oscar"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_removed_participant_loses_live_access_on_every_transport() {
    let app = spawn_app().await;
    let cid = app.conversation("alice", &["bob"]).await;
    let mut bob_sio = Sio::connect(&app, Some(&token("bob")))
        .await
        .expect("connect");
    let joined = bob_sio
        .call("join", json!({ "conversation_id": cid }))
        .await;
    assert_eq!(joined["success"], true);
    let mut bob_ws = Ws::connect(&app, &cid, &token("bob")).await.expect("ws");
    bob_ws.next("status", 3000).await.expect("status");
    app.send("alice", &cid, "before").await;
    assert!(bob_sio.next_event("messageBroadcast", 3000).await.is_some());
    assert!(bob_ws.next("message", 3000).await.is_some());

    let (status, _) = app
        .request(
            Method::DELETE,
            &api(&format!("/conversations/{cid}/participants/bob")),
            Some(&token("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (code, reason) = bob_ws
        .closed(5000)
        .await
        .expect("the /ws session is closed");
    assert_eq!(code, 4403, "{reason}");
    // The socket is out of the room: the next message does not reach it.
    assert!(bob_sio.next_event("participantLeft", 3000).await.is_some());
    app.send("alice", &cid, "after").await;
    assert!(
        bob_sio.next_event("messageBroadcast", 1500).await.is_none(),
        "still receiving after removal"
    );
    let typing = bob_sio
        .call("typing", json!({ "conversation_id": cid }))
        .await;
    assert_eq!(typing["success"], false);
    let rejoin = bob_sio
        .call("join", json!({ "conversation_id": cid }))
        .await;
    assert_eq!(rejoin["code"], "NOT_FOUND");
    assert_eq!(
        Ws::connect(&app, &cid, &token("bob")).await.err(),
        Some(4404)
    );
}

#[tokio::test]
async fn ws_typing_needs_write_access() {
    let app = spawn_app().await;
    let admin = token_of("root", PrincipalKind::User, true);
    register(
        &app,
        &admin,
        json!({ "agent_id": "watched-bot", "owner_id": "olivia" }),
    )
    .await;
    let cid = with_agent(&app, "alice", "watched-bot").await;
    let mut alice = Sio::connect(&app, Some(&token("alice")))
        .await
        .expect("connect");
    alice.call("join", json!({ "conversation_id": cid })).await;
    let mut olivia = Ws::connect(&app, &cid, &token("olivia"))
        .await
        .expect("read-only owners may watch");
    olivia.next("status", 3000).await.expect("status");
    olivia
        .send(json!({ "type": "typing", "is_typing": true }))
        .await;
    let refused = olivia.next("error", 3000).await.expect("error frame");
    assert_eq!(refused["code"], "FORBIDDEN", "{refused}");
    assert!(
        alice.next_event("typing", 1000).await.is_none(),
        "a read-only owner typed"
    );
    olivia
        .send(json!({ "type": "message", "content": "hi" }))
        .await;
    assert_eq!(
        olivia.next("error", 3000).await.expect("error")["code"],
        "FORBIDDEN"
    );
}

#[tokio::test]
async fn ws_close_codes_tell_refusals_apart_and_closes_are_clean() {
    let app = spawn_app().await;
    let cid = app.conversation("alice", &["bob"]).await;
    for (token_value, session, code) in [
        ("not-a-token".to_owned(), cid.clone(), 4401),
        (not_yet_valid_token("alice"), cid.clone(), 4401),
        (subject_token("al\u{0}ice"), cid.clone(), 4401),
        (token("mallory"), cid.clone(), 4404),
        (token("alice"), "no-such-session".to_owned(), 4404),
    ] {
        let url = format!(
            "ws://{}/ws?session_id={session}&token={token_value}",
            app.addr
        );
        let (got, frame) = Ws::connect_url(&url).await.expect_err("refused");
        assert_eq!(got, code, "{frame}");
        assert_eq!(frame["type"], "error");
        assert!(
            frame["code"].is_string() && frame["message"].is_string(),
            "{frame}"
        );
    }
    let mut ws = Ws::connect(&app, &cid, &token("alice"))
        .await
        .expect("connect");
    assert_eq!(ws.close_normally().await.map(|c| c.0), Some(1000));
    let mut ws = Ws::connect(&app, &cid, &token("alice"))
        .await
        .expect("connect");
    ws.next("status", 3000).await.expect("status");
    app.shutdown.cancel();
    assert_eq!(ws.closed(5000).await.map(|c| c.0), Some(1001));
}

#[tokio::test]
async fn nbf_and_the_subject_are_checked_in_hs256_mode_on_every_transport() {
    let app = spawn_app().await;
    let cid = app.conversation("alice", &["bob"]).await;
    let early = not_yet_valid_token("alice");
    let within_leeway = hs(json!({ "sub": "alice", "exp": now() + 600, "nbf": now() + 10 }));
    let (status, body) = app.get(&api("/conversations"), &early).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["message"].as_str().unwrap_or_default().contains("nbf"),
        "{body}"
    );
    let (status, _) = app.get(&api("/conversations"), &within_leeway).await;
    assert_eq!(status, StatusCode::OK, "nbf has the same leeway as exp");
    assert!(Sio::connect(&app, Some(&early)).await.is_err());
    assert_eq!(Ws::connect(&app, &cid, &early).await.err(), Some(4401));
    for sub in ["a\u{0}b", "tab\there", "\u{7f}", " "] {
        let t = subject_token(sub);
        let (status, _) = app.get(&api("/conversations"), &t).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{sub:?}");
        assert!(Sio::connect(&app, Some(&t)).await.is_err(), "{sub:?}");
    }
}

#[tokio::test]
async fn nbf_and_key_confusion_are_refused_in_rsa_mode() {
    let root = env!("CARGO_MANIFEST_DIR");
    let app = spawn_app_with(|c| {
        c.jwt_secret = None;
        c.jwt_public_key_file = Some(format!("{root}/tests/fixtures/test-rsa-public.pem").into());
    })
    .await;
    let private =
        std::fs::read(format!("{root}/tests/fixtures/test-rsa-private.pem")).expect("key");
    let public = std::fs::read(format!("{root}/tests/fixtures/test-rsa-public.pem")).expect("key");
    let key = EncodingKey::from_rsa_pem(&private).expect("rsa key");
    let rs = |claims: Value| encode(&Header::new(Algorithm::RS256), &claims, &key).expect("sign");
    let good = rs(json!({ "sub": "alice", "exp": now() + 600 }));
    let (status, _) = app.get(&api("/conversations"), &good).await;
    assert_eq!(status, StatusCode::OK);
    let early = rs(json!({ "sub": "alice", "exp": now() + 7200, "nbf": now() + 3600 }));
    let (status, _) = app.get(&api("/conversations"), &early).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(Sio::connect(&app, Some(&early)).await.is_err());
    // HS256 signed with the public key's PEM as the secret: the key-confusion attack.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "alice", "exp": now() + 600 }),
        &EncodingKey::from_secret(&public),
    )
    .expect("sign");
    let (status, _) = app.get(&api("/conversations"), &confused).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let cid = {
        let (_, made) = app.post(&api("/conversations"), &good, json!({})).await;
        made["conversation_id"].as_str().expect("id").to_owned()
    };
    assert_eq!(Ws::connect(&app, &cid, &early).await.err(), Some(4401));
    assert_eq!(Ws::connect(&app, &cid, &confused).await.err(), Some(4401));
}

#[tokio::test]
async fn cors_with_an_origin_list_allows_credentials_and_refuses_other_origins_upgrades() {
    let app = spawn_app_with(|c| c.cors_allowed_origins = "https://app.example".into()).await;
    let cid = app.conversation("alice", &["bob"]).await;
    let preflight = app
        .http
        .request(
            Method::OPTIONS,
            format!("{}{}", app.base, api("/conversations")),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    let get = app
        .http
        .get(format!("{}{}", app.base, api("/conversations")))
        .bearer_auth(token("alice"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("get");
    let exposed = get.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii")
        .to_lowercase();
    for name in ["x-request-id", "x-ratelimit-reset", "retry-after"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    // Socket.IO polling and websocket upgrades from another origin are refused.
    let poll = app
        .http
        .get(format!("{}/socket.io/?EIO=4&transport=polling", app.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("poll");
    assert_eq!(poll.status(), StatusCode::FORBIDDEN);
    let ok_poll = app
        .http
        .get(format!("{}/socket.io/?EIO=4&transport=polling", app.base))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("poll");
    assert_eq!(ok_poll.status(), StatusCode::OK);
    for path in [
        format!("/ws?session_id={cid}&token={}", token("alice")),
        "/socket.io/?EIO=4&transport=websocket".to_owned(),
    ] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}{path}", app.addr)
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("origin", "https://evil.example".parse().expect("header"));
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 403, "{path}")
            }
            other => panic!("{path}: upgrade from another origin was not refused: {other:?}"),
        }
    }
}

#[tokio::test]
async fn errors_keep_the_envelope_405_bad_uuids_and_429_included() {
    let app = spawn_app_with(|c| c.rate_limit_per_minute = 3).await;
    let (status, body) = app
        .request(
            Method::PATCH,
            &api("/conversations"),
            Some(&token("a")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], "METHOD_NOT_ALLOWED");
    let (status, body) = app
        .get(&api("/conversations/not-a-uuid"), &token("a"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["message"], "id: must be a UUID", "{body}");
    assert_eq!(body["details"]["field"], "id");
    let mut limited = None;
    for _ in 0..10 {
        let res = app
            .http
            .get(format!("{}{}", app.base, api("/unread")))
            .bearer_auth(token("b"))
            .send()
            .await
            .expect("request");
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(res);
            break;
        }
    }
    let limited = limited.expect("rate limited");
    for h in [
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(limited.headers().contains_key(h), "429 lacks {h}");
    }
}

#[tokio::test]
async fn deleting_a_message_erases_its_content_from_storage() {
    let app = spawn_app().await;
    let cid = app.conversation("alice", &["bob"]).await;
    let (_, sent) = app
        .post(
            &api(&format!("/messages/conversations/{cid}")),
            &token("alice"),
            json!({ "text": "the secret launch code", "client_message_id": "secret-1",
                    "attachments": [{ "type": "file", "url": "https://files.example/secret.pdf" }],
                    "metadata": { "note": "confidential" } }),
        )
        .await;
    let mid = sent["data"]["id"].as_str().expect("id").to_owned();
    app.request(
        Method::PATCH,
        &api(&format!("/messages/{mid}")),
        Some(&token("alice")),
        Some(json!({ "text": "the secret launch code v2" })),
    )
    .await;
    app.post(
        &api(&format!("/messages/{mid}/reactions")),
        &token("bob"),
        json!({ "emoji": "🔥" }),
    )
    .await;
    let (status, _) = app
        .request(
            Method::DELETE,
            &api(&format!("/messages/{mid}")),
            Some(&token("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let row: (String, Value, Value, Value, Value, bool) = sqlx::query_as(
        "SELECT text, attachments, edit_history, metadata, reactions, search = ''::tsvector
         FROM messages WHERE id = $1::uuid",
    )
    .bind(&mid)
    .fetch_one(&app.db)
    .await
    .expect("the tombstone stays");
    assert_eq!(row.0, "");
    assert_eq!(row.1, json!([]));
    assert_eq!(row.2, json!([]));
    assert_eq!(row.3, json!({}));
    assert_eq!(row.4, json!({}));
    assert!(row.5, "the search vector still holds the text");
    let (reactions,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM reactions WHERE message_id = $1::uuid")
            .bind(&mid)
            .fetch_one(&app.db)
            .await
            .expect("count");
    assert_eq!(reactions, 0);
    let (_, tomb) = app
        .get(&api(&format!("/messages/{mid}")), &token("bob"))
        .await;
    assert_eq!(tomb["data"]["seq"], 1);
    assert_eq!(tomb["data"]["sender_id"], "alice");
    assert!(tomb["data"]["deleted_at"].is_string());
    // A retry of the original send returns the tombstone, never a second message.
    let (_, retry) = app
        .post(
            &api(&format!("/messages/conversations/{cid}")),
            &token("alice"),
            json!({ "text": "the secret launch code", "client_message_id": "secret-1" }),
        )
        .await;
    assert_eq!(retry["data"]["id"], mid.as_str());
    assert_eq!(retry["data"]["text"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_grows_to_ten_thousand_participants_in_batches() {
    let app = spawn_app().await;
    let cid = app.conversation("host", &[]).await;
    let too_many: Vec<String> = (0..501).map(|i| format!("p{i}")).collect();
    let (status, body) = app
        .post(
            &api("/conversations"),
            &token("host"),
            json!({ "participants": too_many }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("batch"),
        "the error says how to go further: {body}"
    );
    for batch in 0..20 {
        let participants: Vec<Value> = (0..500)
            .map(|i| json!({ "participant_id": format!("member-{}", batch * 500 + i) }))
            .collect();
        let (status, body) = app
            .post(
                &api(&format!("/conversations/{cid}/participants")),
                &token("host"),
                json!({ "participants": participants }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"]["added"].as_array().map(Vec::len), Some(500));
    }
    // Repeating a batch adds nobody twice.
    let (_, again) = app
        .post(
            &api(&format!("/conversations/{cid}/participants")),
            &token("host"),
            json!({ "participants": [{ "participant_id": "member-0" }] }),
        )
        .await;
    assert_eq!(again["data"]["already_present"], 1);
    let (status, list) = app
        .get(
            &api(&format!("/conversations/{cid}/participants")),
            &token("member-9999"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(10_001));
    let sent = app.send("member-9999", &cid, "hello, everyone").await;
    assert_eq!(sent["seq"], 1);
    let (status, page) = tokio::time::timeout(
        Duration::from_secs(10),
        app.get(
            &api(&format!("/messages/conversations/{cid}")),
            &token("member-5000"),
        ),
    )
    .await
    .expect("history in time");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["data"]["total"], 1);
    let (status, body) = app
        .post(
            &api(&format!("/conversations/{cid}/participants")),
            &token("member-1"),
            json!({ "participants": [{ "participant_id": "x" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

/// Every socket event and `/ws` frame as each kind of caller: only participants write;
/// an agent's owner reads; strangers, removed participants and squatters see nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_event_answers_each_kind_of_caller_as_documented() {
    let app = spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    let admin = token_of("root", PrincipalKind::User, true);
    register(
        &app,
        &admin,
        json!({ "agent_id": "helper-bot", "owner_id": "olivia" }),
    )
    .await;
    for id in ["alice", "helper-bot"] {
        let (status, _) = register(&app, &token("sam"), json!({ "agent_id": id })).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (_, made) = app
        .post(
            &api("/conversations"),
            &token("alice"),
            json!({ "participants": ["bob", "rita", { "participant_id": "helper-bot", "participant_type": "agent" }] }),
        )
        .await;
    let cid = made["conversation_id"].as_str().expect("id").to_owned();
    app.request(
        Method::DELETE,
        &api(&format!("/conversations/{cid}/participants/rita")),
        Some(&token("alice")),
        None,
    )
    .await;
    app.send("alice", &cid, "hello").await;

    // (caller, join, chat_message, typing, mark_read, complete, eliza send, resume)
    let expectations: [(&str, [&str; 7]); 5] = [
        ("bob", ["ok", "ok", "ok", "ok", "ok", "ok", "ok"]),
        ("mallory", ["NOT_FOUND"; 7]),
        ("rita", ["NOT_FOUND"; 7]),
        ("sam", ["NOT_FOUND"; 7]),
        (
            "olivia",
            [
                "ok",
                "FORBIDDEN",
                "FORBIDDEN",
                "FORBIDDEN",
                "FORBIDDEN",
                "FORBIDDEN",
                "ok",
            ],
        ),
    ];
    let mut failures = vec![];
    for (who, expected) in expectations {
        let mut s = Sio::connect(&app, Some(&token(who)))
            .await
            .expect("connect");
        let events = [
            ("join", json!({ "conversation_id": cid, "since_seq": 0 })),
            (
                "chat_message",
                json!({ "conversation_id": cid, "message": format!("from {who}") }),
            ),
            (
                "typing",
                json!({ "conversation_id": cid, "is_typing": true }),
            ),
            ("mark_read", json!({ "conversation_id": cid })),
            ("complete", json!({ "conversation_id": cid })),
            (
                "message",
                json!({ "type": 2, "payload": { "conversationId": cid, "senderId": who, "message": format!("eliza {who}"), "messageId": format!("m-{who}") } }),
            ),
            ("resume", json!({ "conversations": { cid.clone(): 0 } })),
        ];
        for ((event, payload), want) in events.into_iter().zip(expected) {
            let ack = s.call(event, payload).await;
            let got = if ack["success"] == true {
                "ok"
            } else {
                ack["code"].as_str().unwrap_or("?")
            };
            // A send the echo guard skipped is not a write: count it as refused.
            let got = if ack["data"]["ignored"] == true {
                "ignored"
            } else {
                got
            };
            // A resume answers per conversation: a refused one is in `failed`.
            let got = match ack["data"]["failed"][0]["code"].as_str() {
                Some(code) => code,
                None => got,
            };
            if got != want {
                failures.push(format!("{who} {event}: expected {want}, got {ack}"));
            }
        }
        s.close().await;
        // `/ws`: readers connect, writers write; everyone else is refused at the door.
        match Ws::connect(&app, &cid, &token(who)).await {
            Ok(mut ws) => {
                ws.send(json!({ "type": "typing", "is_typing": true }))
                    .await;
                ws.send(json!({ "type": "message", "content": format!("ws {who}") }))
                    .await;
                let error = ws.next("error", 1500).await;
                let wrote = error.is_none();
                if wrote != (expected[1] == "ok") {
                    failures.push(format!(
                        "{who} /ws: write allowed = {wrote}, error {error:?}"
                    ));
                }
            }
            Err(code) => {
                if expected[0] == "ok" || code != 4404 {
                    failures.push(format!("{who} /ws: refused with {code}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // What the outsiders tried never reached storage.
    let (_, history) = app
        .get(
            &api(&format!("/messages/conversations/{cid}?limit=100")),
            &token("alice"),
        )
        .await;
    let senders: Vec<&str> = history["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["sender_id"].as_str())
        .collect();
    assert!(
        senders.iter().all(|s| ["alice", "bob"].contains(s)),
        "{senders:?}"
    );
}

/// The examples `/openapi.json` prefills in Swagger UI work as they are.
#[tokio::test]
async fn the_documented_request_examples_succeed() {
    let app = spawn_app().await;
    let (_, spec) = app.request(Method::GET, "/openapi.json", None, None).await;
    let create = &spec["paths"]["/api/v1/communication/conversations"]["post"]["requestBody"]["content"]
        ["application/json"];
    let example = create["example"].clone();
    assert!(example.is_object(), "create has an example: {create}");
    let (status, made) = app
        .post(&api("/conversations"), &token("alice"), example)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let cid = made["conversation_id"].as_str().expect("id");
    let send = &spec["paths"]["/api/v1/communication/messages/conversations/{id}"]["post"]["requestBody"]
        ["content"]["application/json"];
    let example = send["example"].clone();
    assert!(example.is_object(), "send has an example: {send}");
    let (status, sent) = app
        .post(
            &api(&format!("/messages/conversations/{cid}")),
            &token("alice"),
            example,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
}

/// A send racing a removal either commits before it or is refused; it never brings the
/// removed participant back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_racing_a_removal_never_readds_the_removed_participant() {
    let app = spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    for round in 0..5 {
        let cid = app.conversation("alice", &["bob"]).await;
        let sender = {
            let app_base = app.base.clone();
            let http = app.http.clone();
            let cid = cid.clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    let _ = http
                        .post(format!(
                            "{app_base}{}",
                            api(&format!("/messages/conversations/{cid}"))
                        ))
                        .bearer_auth(token("bob"))
                        .json(&json!({ "text": format!("spam {i}") }))
                        .send()
                        .await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20 + round * 10)).await;
        let (status, _) = app
            .request(
                Method::DELETE,
                &api(&format!("/conversations/{cid}/participants/bob")),
                Some(&token("alice")),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let _ = sender.await;
        let (_, list) = app
            .get(
                &api(&format!("/conversations/{cid}/participants")),
                &token("alice"),
            )
            .await;
        let ids: Vec<&str> = list["data"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|p| p["participant_id"].as_str())
            .collect();
        assert_eq!(ids, vec!["alice"], "round {round}: bob is back");
    }
}

#[tokio::test]
async fn a_client_chosen_conversation_id_cannot_be_hijacked() {
    let app = spawn_app().await;
    let chosen = uuid::Uuid::new_v4().to_string();
    // mallory takes the id first and adds the victim.
    let (status, _) = app
        .post(
            &api("/conversations"),
            &token("mallory"),
            json!({ "conversation_id": chosen, "participants": ["victim"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app
        .post(
            &api("/conversations"),
            &token("victim"),
            json!({ "conversation_id": chosen }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "CONVERSATION_ID_TAKEN");
    // ... or squats the platform id a chosen id implies.
    let other = uuid::Uuid::new_v4().to_string();
    app.post(
        &api("/conversations"),
        &token("mallory"),
        json!({ "platform_conversation_id": other, "participants": ["victim"] }),
    )
    .await;
    let (status, body) = app
        .post(
            &api("/conversations"),
            &token("victim"),
            json!({ "conversation_id": other }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // A stranger learns nothing more than "taken".
    let (_, stranger) = app
        .post(
            &api("/conversations"),
            &token("eve"),
            json!({ "conversation_id": chosen }),
        )
        .await;
    assert_eq!(stranger["code"], "CONVERSATION_ID_TAKEN");
    // The creator's own retry is idempotent.
    let mine = uuid::Uuid::new_v4().to_string();
    let (first, _) = app
        .post(
            &api("/conversations"),
            &token("victim"),
            json!({ "conversation_id": mine, "name": "mine" }),
        )
        .await;
    let (again, body) = app
        .post(
            &api("/conversations"),
            &token("victim"),
            json!({ "conversation_id": mine, "name": "mine" }),
        )
        .await;
    assert_eq!(
        (first, again),
        (StatusCode::CREATED, StatusCode::OK),
        "{body}"
    );
    assert_eq!(body["data"]["id"], mine.as_str());
    assert_eq!(body["data"]["is_new"], false);
}

#[tokio::test]
async fn removing_an_agent_cuts_its_owners_live_view() {
    let app = spawn_app().await;
    let admin = token_of("root", PrincipalKind::User, true);
    register(
        &app,
        &admin,
        json!({ "agent_id": "seen-bot", "owner_id": "olivia" }),
    )
    .await;
    let cid = with_agent(&app, "alice", "seen-bot").await;
    let mut ws = Ws::connect(&app, &cid, &token("olivia"))
        .await
        .expect("owner watches");
    ws.next("status", 3000).await.expect("status");
    let mut sio = Sio::connect(&app, Some(&token("olivia")))
        .await
        .expect("connect");
    assert_eq!(
        sio.call("join", json!({ "conversation_id": cid })).await["success"],
        true
    );
    app.request(
        Method::DELETE,
        &api(&format!("/conversations/{cid}/participants/seen-bot")),
        Some(&token("alice")),
        None,
    )
    .await;
    assert_eq!(ws.closed(5000).await.map(|c| c.0), Some(4403));
    sio.next_event("participantLeft", 3000).await;
    app.send("alice", &cid, "not for olivia").await;
    assert!(sio.next_event("messageBroadcast", 1500).await.is_none());
}

#[tokio::test]
async fn an_owner_claim_never_overrides_an_explicit_reassignment() {
    let app = spawn_app().await;
    let admin = token_of("root", PrincipalKind::User, true);
    let (status, _) = register(
        &app,
        &admin,
        json!({ "agent_id": "moved-bot", "owner_id": "new-owner" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let old_token = hs(
        json!({ "sub": "moved-bot", "kind": "agent", "owner": "old-owner", "exp": now() + 600 }),
    );
    app.get(&api("/unread"), &old_token).await;
    let (status, _) = app
        .get(&api("/agents/moved-bot/conversations"), &token("new-owner"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .get(&api("/agents/moved-bot/conversations"), &token("old-owner"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn typing_is_rate_limited_and_overlapping_batches_do_not_deadlock() {
    let app = spawn_app().await;
    let cid = app.conversation("alice", &["bob"]).await;
    let mut sio = Sio::connect(&app, Some(&token("alice")))
        .await
        .expect("connect");
    let mut limited = false;
    for _ in 0..80 {
        let ack = sio.call("typing", json!({ "conversation_id": cid })).await;
        if ack["code"] == "RATE_LIMITED" {
            limited = true;
            break;
        }
    }
    assert!(limited, "typing floods are limited");
    let forward: Vec<Value> = (0..200)
        .map(|i| json!({ "participant_id": format!("m{i}") }))
        .collect();
    let backward: Vec<Value> = forward.iter().rev().cloned().collect();
    let path = api(&format!("/conversations/{cid}/participants"));
    let alice = token("alice");
    let (a, b) = tokio::join!(
        app.post(&path, &alice, json!({ "participants": forward })),
        app.post(&path, &alice, json!({ "participants": backward })),
    );
    assert_eq!(
        (a.0, b.0),
        (StatusCode::OK, StatusCode::OK),
        "{} {}",
        a.1,
        b.1
    );
    let added = a.1["data"]["added"].as_array().map_or(0, Vec::len)
        + b.1["data"]["added"].as_array().map_or(0, Vec::len);
    assert_eq!(added, 200);
    // A participant whose id is a word the routes use is an ordinary participant.
    app.post(&path, &token("alice"), json!({ "participant_id": "batch" }))
        .await;
    let (status, _) = app
        .request(
            Method::DELETE,
            &format!("{path}/batch"),
            Some(&token("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_wildcard_inside_an_origin_list_means_any_origin() {
    let app = spawn_app_with(|c| c.cors_allowed_origins = "https://a.example, *".into()).await;
    let (status, _) = app.get(&api("/unread"), &token("a")).await;
    assert_eq!(status, StatusCode::OK);
}
