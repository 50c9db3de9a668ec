//! Seed 003 (the localStorage CRUD API) as a client written from the seed would call it,
//! and the localStorage migration through its `messages` arrays.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, api, spawn_app, token, token_of};
use crate::sio::Sio;

const CRUD: &str = "/compat/crud/api/conversations";

async fn call(
    app: &TestApp,
    method: Method,
    who: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    app.request(method, CRUD, Some(&token(who)), body).await
}

#[tokio::test]
async fn create_list_update_delete_follow_the_seed() {
    let app = spawn_app().await;
    // The seed's "Create Conversation" example, with its response shape.
    let (status, created) = call(
        &app,
        Method::POST,
        "user-123",
        Some(json!({ "userId": "user-123", "title": "New Conversation", "messages": [],
                     "agentId": "agent-uuid", "mode": "mode_1_interactive_manual", "isPinned": false })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["success"], true);
    assert_eq!(created["message"], "Conversation created successfully");
    assert!(created["requestId"].is_string());
    let c = &created["conversation"];
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(c["title"], "New Conversation");
    assert_eq!(c["messages"], json!([]));
    assert!(c["createdAt"].is_i64() && c["updatedAt"].is_i64());
    assert_eq!(c["agentId"], "agent-uuid");
    assert_eq!(c["mode"], "mode_1_interactive_manual");
    assert_eq!(c["userId"], "user-123");
    assert_eq!(c["isPinned"], false);

    // The seed's fetch('/api/conversations?userId=user-123').
    let res = app
        .http
        .get(format!("{}{CRUD}?userId=user-123", app.base))
        .bearer_auth(token("user-123"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-ratelimit-limit"], "100");
    assert!(res.headers().contains_key("x-ratelimit-remaining"));
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["success"], true);
    assert_eq!(list["count"], 1);
    assert!(list["requestId"].is_string());
    assert_eq!(list["conversations"][0]["id"], id.as_str());

    // Update: title, pin and new messages (epoch ms timestamps kept).
    let (status, updated) = call(
        &app,
        Method::PUT,
        "user-123",
        Some(json!({ "userId": "user-123", "conversationId": id, "title": "Updated Title",
                     "isPinned": true,
                     "messages": [ { "role": "user", "content": "Hello", "timestamp": 1_700_000_000_000_i64 },
                                   { "role": "assistant", "content": "Hi there", "timestamp": 1_700_000_001_000_i64 } ] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["message"], "Conversation updated successfully");
    let c = &updated["conversation"];
    assert_eq!(c["title"], "Updated Title");
    assert_eq!(c["isPinned"], true);
    assert_eq!(
        c["messages"][0],
        json!({"role": "user", "content": "Hello", "timestamp": 1_700_000_000_000_i64})
    );
    assert_eq!(c["messages"][1]["role"], "assistant");
    assert_eq!(c["messages"][1]["timestamp"], 1_700_000_001_000_i64);

    // The same array again, and a longer one: only the new entry is stored.
    let mut msgs = c["messages"].as_array().unwrap().clone();
    let (status, _) = call(
        &app,
        Method::PUT,
        "user-123",
        Some(json!({ "userId": "user-123", "conversationId": id, "messages": msgs })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    msgs.push(json!({ "role": "user", "content": "More", "timestamp": 1_700_000_002_000_i64 }));
    let (_, again) = call(
        &app,
        Method::PUT,
        "user-123",
        Some(json!({ "userId": "user-123", "conversationId": id, "messages": msgs })),
    )
    .await;
    assert_eq!(
        again["conversation"]["messages"].as_array().unwrap().len(),
        3
    );

    // Rewriting stored history is a 409 naming the index.
    msgs[1]["content"] = json!("Something else");
    let (status, conflict) = call(
        &app,
        Method::PUT,
        "user-123",
        Some(json!({ "userId": "user-123", "conversationId": id, "messages": msgs })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["code"], "HISTORY_CONFLICT");
    assert_eq!(conflict["context"]["index"], 1);
    assert!(conflict["error"].is_string() && conflict["requestId"].is_string());

    // The v1 view: the assistant's messages are the agent's; the agent takes part.
    let (_, v1) = app
        .get(
            &api(&format!("/messages/conversations/{id}")),
            &token("user-123"),
        )
        .await;
    let items = v1["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[1]["sender_id"], "agent-uuid");
    assert_eq!(items[1]["sender_type"], "agent");
    assert_eq!(items[0]["created_at"], "2023-11-14T22:13:20Z");

    let (status, deleted) = call(
        &app,
        Method::DELETE,
        "user-123",
        Some(json!({ "userId": "user-123", "conversationId": id })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["message"], "Conversation deleted successfully");
    let (status, gone) = call(
        &app,
        Method::DELETE,
        "user-123",
        Some(json!({ "userId": "user-123", "conversationId": id })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(gone["code"], "NOT_FOUND");
}

#[tokio::test]
async fn bad_input_and_other_users_get_the_seeds_errors() {
    let app = spawn_app().await;
    let (_, created) = call(
        &app,
        Method::POST,
        "alice",
        Some(json!({ "userId": "alice", "title": "mine" })),
    )
    .await;
    let id = created["conversation"]["id"].as_str().unwrap().to_owned();

    // 400: missing userId (query and body), missing conversationId.
    let (status, body) = app.get(CRUD, &token("alice")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "VALIDATION_ERROR");
    assert_eq!(body["context"]["field"], "userId");
    let (status, _) = call(&app, Method::POST, "alice", Some(json!({ "title": "x" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &app,
        Method::PUT,
        "alice",
        Some(json!({ "userId": "alice", "title": "x" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &app,
        Method::DELETE,
        "alice",
        Some(json!({ "userId": "alice" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Malformed messages name the entry.
    for (bad, field) in [
        (
            json!([{ "role": "user", "content": 5 }]),
            "messages[0].content",
        ),
        (
            json!([{ "role": "user", "content": "ok" }, { "content": "x" }]),
            "messages[1].role",
        ),
        (
            json!([{ "role": "user", "content": "x", "timestamp": "soon" }]),
            "messages[0].timestamp",
        ),
        (
            json!([{ "role": "user", "content": "x", "timestamp": true }]),
            "messages[0].timestamp",
        ),
        (
            json!([{ "role": "user", "content": "x", "timestamp": -99_999_999_999_999_i64 }]),
            "messages[0].timestamp",
        ),
    ] {
        let (status, body) = call(
            &app,
            Method::PUT,
            "alice",
            Some(json!({ "userId": "alice", "conversationId": id, "messages": bad })),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["context"]["field"], field, "{body}");
    }
    let (status, _) = call(
        &app,
        Method::PUT,
        "alice",
        Some(json!({ "userId": "alice", "conversationId": id,
        "messages": [{ "role": "user", "content": "a\u{0}" }] })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Naming someone else's userId: permission denied.
    let res = app
        .http
        .get(format!("{}{CRUD}?userId=alice", app.base))
        .bearer_auth(token("mallory"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "PERMISSION_DENIED");
    // Another user's conversation, under their own userId: 404 in the seed's format.
    for method in [Method::PUT, Method::DELETE] {
        let (status, body) = call(
            &app,
            method,
            "mallory",
            Some(json!({ "userId": "mallory", "conversationId": id, "title": "pwned" })),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["code"], "NOT_FOUND");
        assert_eq!(body["error"], "Not Found");
    }
    let (status, _) = call(
        &app,
        Method::PUT,
        "alice",
        Some(json!({ "userId": "alice", "conversationId": "conv-123", "title": "x" })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // No token at all.
    let (status, body) = app
        .request(Method::GET, &format!("{CRUD}?userId=alice"), None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "UNAUTHORIZED");
    // A client's own id is scoped to its user: Mallory re-using Alice's local id gets her own.
    let (_, a) = call(
        &app,
        Method::POST,
        "alice",
        Some(json!({ "userId": "alice", "id": "local-1", "title": "a" })),
    )
    .await;
    let (_, m) = call(
        &app,
        Method::POST,
        "mallory",
        Some(json!({ "userId": "mallory", "id": "local-1", "title": "m" })),
    )
    .await;
    assert_ne!(a["conversation"]["id"], m["conversation"]["id"]);
    assert_eq!(m["conversation"]["title"], "m");
}

#[tokio::test]
async fn a_localstorage_export_imported_twice_stores_each_message_once_and_is_searchable() {
    // A migration job: a service acting for the user (the seed's 100/min is per user).
    let app = crate::helpers::spawn_app_with(|c| c.rate_limit_per_minute = 100_000).await;
    let migrator = token_of(
        "migration-job",
        colloquy::auth::PrincipalKind::Service,
        false,
    );
    let user = "user-migrating";
    let base: i64 = 1_690_000_000_000;
    let conversations: Vec<Value> = (0..200)
        .map(|c| {
            let messages: Vec<Value> = (0..50)
                .map(|m| {
                    json!({ "role": if m % 2 == 0 { "user" } else { "assistant" },
                            "content": format!("conversation {c} message {m} zebracorn{c}x{m}"),
                            "timestamp": base + c * 100_000 + m * 1000 })
                })
                .collect();
            json!({ "id": format!("local-{c}"), "userId": user, "title": format!("Chat {c}"),
                    "messages": messages, "agentId": "helper-bot", "isPinned": c == 7 })
        })
        .collect();
    for round in 0..2 {
        let mut tasks = Vec::new();
        for chunk in conversations.chunks(25) {
            let chunk = chunk.to_vec();
            let http = app.http.clone();
            let migrator = migrator.clone();
            let url = format!("{}{CRUD}", app.base);
            tasks.push(tokio::spawn(async move {
                for c in chunk {
                    let res = http
                        .post(&url)
                        .bearer_auth(&migrator)
                        .json(&c)
                        .send()
                        .await
                        .unwrap();
                    let status = res.status();
                    let body: Value = res.json().await.unwrap();
                    assert!(
                        status == StatusCode::CREATED || status == StatusCode::OK,
                        "{body}"
                    );
                    assert_eq!(
                        body["conversation"]["messages"].as_array().unwrap().len(),
                        50
                    );
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(count, 200 * 50, "round {round}: each message once");
    }
    // Timestamps kept, order kept, seq gapless.
    let (bad,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT seq, row_number() OVER (PARTITION BY conversation_id ORDER BY seq) AS n,
                created_at, lag(created_at) OVER (PARTITION BY conversation_id ORDER BY seq) AS prev
         FROM messages) x WHERE seq <> n OR created_at <= prev",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(bad, 0);
    // The whole list comes back in the seed's shape.
    let (_, list) = app
        .get(&format!("{CRUD}?userId={user}"), &token(user))
        .await;
    assert_eq!(list["count"], 200);
    let seventh = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["title"] == "Chat 7")
        .unwrap();
    assert_eq!(seventh["isPinned"], true);
    assert_eq!(
        seventh["messages"][3]["timestamp"],
        base + 7 * 100_000 + 3000
    );
    // Search finds an imported message.
    let (_, found) = app
        .get(&api("/messages/search?q=zebracorn123x45"), &token(user))
        .await;
    assert_eq!(found["data"]["total"], 1, "{found}");
    assert_eq!(
        found["data"]["items"][0]["message"]["text"],
        "conversation 123 message 45 zebracorn123x45"
    );
}

#[tokio::test]
async fn crud_and_v1_see_each_others_messages_live() {
    let app = spawn_app().await;
    let (_, created) = call(
        &app,
        Method::POST,
        "alice",
        Some(json!({ "userId": "alice", "title": "t" })),
    )
    .await;
    let id = created["conversation"]["id"].as_str().unwrap().to_owned();
    let mut sio = Sio::connect(&app, Some(&token("alice"))).await.unwrap();
    assert_eq!(
        sio.call("join", json!({"conversation_id": id})).await["success"],
        true
    );
    let (status, _) = call(&app, Method::PUT, "alice", Some(json!({ "userId": "alice", "conversationId": id,
        "messages": [{ "role": "user", "content": "saved from the widget", "timestamp": 1_700_000_000_000_i64 }] }))).await;
    assert_eq!(status, StatusCode::OK);
    let b = sio
        .next_event("messageBroadcast", 3000)
        .await
        .expect("live");
    assert_eq!(b["text"], "saved from the widget");
    app.send("alice", &id, "sent over v1").await;
    let (_, list) = app
        .get(&format!("{CRUD}?userId=alice"), &token("alice"))
        .await;
    let msgs = list["conversations"][0]["messages"].as_array().unwrap();
    assert_eq!(msgs.last().unwrap()["content"], "sent over v1");
    assert_eq!(msgs.last().unwrap()["role"], "user");
}

#[tokio::test]
async fn only_the_owner_writes_the_transcript_and_a_client_may_keep_its_own_id() {
    let app = spawn_app().await;
    let (_, created) = call(
        &app,
        Method::POST,
        "alice",
        Some(json!({ "userId": "alice", "id": "local-7", "title": "t", "agentId": "helper" })),
    )
    .await;
    let id = created["conversation"]["id"].as_str().unwrap().to_owned();
    // Migrated ids are name-based (version 5): no one can take one through v1 before the
    // migration asks for it.
    for squat in [id.as_str(), "6f1d52c4-8a0e-5b8e-9c1f-0c0d2a3b003c"] {
        let (status, body) = app
            .post(
                &api("/conversations"),
                &token("mallory"),
                json!({ "conversation_id": squat, "name": "mine now" }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{squat}: {body}");
        assert_eq!(body["code"], "VALIDATION_ERROR", "{body}");
    }
    let (status, _) = app
        .post(
            &api(&format!("/conversations/{id}/participants")),
            &token("alice"),
            json!({ "participant_id": "bob" }),
        )
        .await;
    assert!(status.is_success());
    // Bob, a member, may not put words in the agent's (or anyone's) mouth.
    let forged = json!({ "userId": "bob", "conversationId": id, "agentId": "helper",
        "messages": [{ "role": "assistant", "content": "I approve the refund" }] });
    let (status, body) = call(&app, Method::PUT, "bob", Some(forged)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "PERMISSION_DENIED");
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0);
    // A body spreading the stored object (`id` and `conversationId` both), or naming the
    // client's own id, reaches the conversation.
    let (status, body) = call(
        &app,
        Method::PUT,
        "alice",
        Some(json!({ "userId": "alice", "id": id, "conversationId": id, "title": "renamed" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&app, Method::PUT, "alice", Some(json!({ "userId": "alice", "conversationId": "local-7", "messages": [{ "role": "user", "content": "hi" }] }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["conversation"]["id"], id.as_str());
    assert_eq!(body["conversation"]["title"], "renamed");
    // Lines without a principal of their own use reserved ids no token can carry.
    let (status, _) = call(&app, Method::PUT, "alice", Some(json!({ "userId": "alice", "conversationId": id,
        "messages": [{ "role": "user", "content": "hi" }, { "role": "system", "content": "be brief" }] }))).await;
    assert_eq!(status, StatusCode::OK);
    let (sender,): (String,) =
        sqlx::query_as("SELECT sender_id FROM messages WHERE text = 'be brief'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(sender, "colloquy:system");
    let (status, _) = app
        .get(
            &api("/users/colloquy:system/export"),
            &token("colloquy:system"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
