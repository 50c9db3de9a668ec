use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{api, spawn_app, token, token_of};
use colloquy::auth::PrincipalKind;

#[tokio::test]
async fn sending_stores_the_message_verbatim_with_the_next_seq() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    let (s, body) = app
        .post(
            &api(&format!("/messages/conversations/{id}")),
            &token("alice"),
            json!({"text": "<script>alert(1)</script> & hi", "client_message_id": "c-1", "thread_id": "t-1",
                   "metadata": {"mood": "ok"}, "attachments": [{"type": "image", "url": "https://x/y.png", "size": 10}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let m = &body["data"];
    assert_eq!(m["seq"], 1);
    assert_eq!(m["text"], "<script>alert(1)</script> & hi");
    assert_eq!(m["sender_id"], "alice");
    assert_eq!(m["sender_type"], "user");
    assert_eq!(m["client_message_id"], "c-1");
    assert_eq!(m["thread_id"], "t-1");
    assert_eq!(m["platform_context"]["room_id"], id.as_str());
    assert_eq!(m["platform_context"]["platform"], "websocket");
    assert!(m["attachments"][0]["id"].is_string());
    assert_eq!(
        uuid::Uuid::parse_str(m["id"].as_str().unwrap())
            .unwrap()
            .get_version_num(),
        7
    );
    let second = app.send("bob", &id, "second").await;
    assert_eq!(second["seq"], 2);
    let (_, conv) = app
        .get(&api(&format!("/conversations/{id}")), &token("alice"))
        .await;
    assert_eq!(conv["data"]["message_count"], 2);
    assert_eq!(conv["data"]["last_seq"], 2);
    assert_eq!(conv["data"]["unread_count"], 1);
}

#[tokio::test]
async fn sending_twice_with_the_same_client_id_stores_one_message() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    let path = api(&format!("/messages/conversations/{id}"));
    let (s1, first) = app
        .post(
            &path,
            &token("alice"),
            json!({"text": "once", "client_message_id": "k"}),
        )
        .await;
    let (s2, again) = app
        .post(
            &path,
            &token("alice"),
            json!({"text": "once", "client_message_id": "k"}),
        )
        .await;
    assert_eq!(s1, StatusCode::CREATED);
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(first["data"]["id"], again["data"]["id"]);
    // The same key from another sender is another message.
    let (s3, other) = app
        .post(
            &path,
            &token("bob"),
            json!({"text": "mine", "client_message_id": "k"}),
        )
        .await;
    assert_eq!(s3, StatusCode::CREATED);
    assert_eq!(other["data"]["seq"], 2);
}

#[tokio::test]
async fn only_services_may_send_as_someone_else() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    let path = api(&format!("/messages/conversations/{id}"));
    let (s, body) = app
        .post(
            &path,
            &token("bob"),
            json!({"text": "I am alice", "sender_id": "alice"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "FORBIDDEN");
    let relay = token_of("telegram-relay", PrincipalKind::Service, false);
    let (s, body) = app
        .post(&path, &relay, json!({"text": "from telegram", "sender_id": "tg:42", "sender_name": "Tom", "sender_type": "user"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["sender_id"], "tg:42");
    assert_eq!(body["data"]["sender_name"], "Tom");
    // The relayed sender joined the conversation.
    let (_, parts) = app
        .get(
            &api(&format!("/conversations/{id}/participants")),
            &token("alice"),
        )
        .await;
    assert!(
        parts["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["participant_id"] == "tg:42")
    );
}

#[tokio::test]
async fn agents_send_as_agents() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bot"]).await;
    let (s, body) = app
        .post(
            &api(&format!("/messages/conversations/{id}")),
            &token_of("bot", PrincipalKind::Agent, false),
            json!({"text": "beep"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(body["data"]["sender_type"], "agent");
}

#[tokio::test]
async fn a_message_is_read_edited_and_soft_deleted() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    let m = app.send("alice", &id, "first draft").await;
    let mid = m["id"].as_str().unwrap();
    let path = api(&format!("/messages/{mid}"));
    let (s, one) = app.get(&path, &token("bob")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["data"]["text"], "first draft");
    let (s, _) = app
        .request(
            Method::PATCH,
            &path,
            Some(&token("bob")),
            Some(json!({"text": "hijack"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, edited) = app
        .request(
            Method::PATCH,
            &path,
            Some(&token("alice")),
            Some(json!({"text": "final"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{edited}");
    assert_eq!(edited["data"]["text"], "final");
    assert_eq!(edited["data"]["is_edited"], true);
    assert_eq!(edited["data"]["edit_history"][0]["text"], "first draft");
    let (s, _) = app
        .request(Method::DELETE, &path, Some(&token("bob")), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, deleted) = app
        .request(Method::DELETE, &path, Some(&token("alice")), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(deleted["data"]["text"], "");
    assert!(deleted["data"]["deleted_at"].is_string());
    // The row and its seq stay; the text does not come back.
    let (_, hist) = app
        .get(
            &api(&format!("/messages/conversations/{id}")),
            &token("bob"),
        )
        .await;
    assert_eq!(hist["data"]["items"][0]["seq"], 1);
    assert_eq!(hist["data"]["items"][0]["text"], "");
    assert_eq!(hist["data"]["items"][0]["edit_history"], json!([]));
    let (s, body) = app
        .request(
            Method::PATCH,
            &path,
            Some(&token("alice")),
            Some(json!({"text": "again"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(body["code"], "MESSAGE_DELETED");
    // The owner may delete anyone's message.
    let other = app.send("bob", &id, "rude").await;
    let (s, _) = app
        .request(
            Method::DELETE,
            &api(&format!("/messages/{}", other["id"].as_str().unwrap())),
            Some(&token("alice")),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn reactions_count_once_per_principal_and_emoji() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    let m = app.send("alice", &id, "react to me").await;
    let path = api(&format!(
        "/messages/{}/reactions",
        m["id"].as_str().unwrap()
    ));
    let (s, _) = app
        .post(&path, &token("alice"), json!({"emoji": "👍"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = app
        .post(&path, &token("alice"), json!({"emoji": "👍"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, body) = app.post(&path, &token("bob"), json!({"emoji": "👍"})).await;
    assert_eq!(body["data"]["reactions"]["👍"], 2);
    assert_eq!(body["data"]["reaction_count"], 2);
    let (s, body) = app
        .request(
            Method::DELETE,
            &format!("{path}/%F0%9F%91%8D"),
            Some(&token("bob")),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["reactions"]["👍"], 1);
    let (s, _) = app
        .request(
            Method::DELETE,
            &format!("{path}/%F0%9F%91%8D"),
            Some(&token("bob")),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .post(&path, &token("mallory"), json!({"emoji": "👎"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn mark_read_only_moves_forward_and_drives_unread_counts() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    for i in 0..5 {
        app.send("alice", &id, &format!("m{i}")).await;
    }
    let path = api(&format!("/messages/conversations/{id}/mark-read"));
    let (_, conv) = app
        .get(&api(&format!("/conversations/{id}")), &token("bob"))
        .await;
    assert_eq!(conv["data"]["unread_count"], 5);
    let (s, body) = app
        .post(&path, &token("bob"), json!({"up_to_seq": 3}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["last_read_seq"], 3);
    assert_eq!(body["data"]["unread_count"], 2);
    let (_, body) = app
        .post(&path, &token("bob"), json!({"up_to_seq": 1}))
        .await;
    assert_eq!(
        body["data"]["last_read_seq"], 3,
        "the horizon never moves back"
    );
    // No body: everything.
    let (s, body) = app
        .request(Method::POST, &path, Some(&token("bob")), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["unread_count"], 0);
    assert_eq!(body["data"]["last_read_seq"], 5);
    // Reading past the end clamps.
    let (_, body) = app
        .post(&path, &token("bob"), json!({"up_to_seq": 99}))
        .await;
    assert_eq!(body["data"]["last_read_seq"], 5);
    // The sender's own messages are never unread, and status turns to read.
    let (_, conv) = app
        .get(&api(&format!("/conversations/{id}")), &token("alice"))
        .await;
    assert_eq!(conv["data"]["unread_count"], 0);
    let (_, hist) = app
        .get(
            &api(&format!("/messages/conversations/{id}")),
            &token("alice"),
        )
        .await;
    assert_eq!(hist["data"]["items"][4]["status"], "read");
    // Marking for someone else is for services.
    let (s, _) = app
        .post(&path, &token("alice"), json!({"user_id": "bob"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let svc = token_of("svc", PrincipalKind::Service, false);
    let (s, _) = app
        .post(&path, &svc, json!({"user_id": "bob", "up_to_seq": 5}))
        .await;
    assert_eq!(s, StatusCode::OK);
}
