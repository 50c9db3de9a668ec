//! Seed 002 (Avee messaging) as its frontend would call it.

use reqwest::StatusCode;
use serde_json::{Value, json};

use colloquy::auth::{PrincipalKind, TokenRequest, mint};

use crate::helpers::{SECRET, TestApp, api, spawn_app, token};
use crate::sio::Sio;

const M: &str = "/compat/messaging/messaging";

/// A token with the profile claims the seed's profiles come from.
fn profile_token(sub: &str, name: &str, handle: &str, picture: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        name: &'a str,
        preferred_username: &'a str,
        picture: &'a str,
    }
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub,
            exp,
            name,
            preferred_username: handle,
            picture,
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn register_agent(app: &TestApp, agent: &str, owner: &str) {
    let t = mint(
        SECRET,
        &TokenRequest {
            sub: agent,
            kind: PrincipalKind::Agent,
            name: Some("John's Agent"),
            ttl: std::time::Duration::from_secs(600),
            admin: false,
            issuer: None,
            audience: None,
            owner: None,
        },
    )
    .unwrap();
    let (status, body) = app
        .post(
            &api("/agents"),
            &t,
            json!({ "agent_id": agent, "name": "John's Agent", "owner_id": owner }),
        )
        .await;
    assert!(status.is_success(), "{body}");
}

#[tokio::test]
async fn profile_chat_start_send_read_and_unread_follow_the_seed() {
    let app = spawn_app().await;
    let alice = profile_token("alice", "Alice A", "alice", "https://img/alice.png");
    let john = profile_token("john", "John Doe", "johndoe", "https://img/john.png");
    // Both have called once, so their profiles are known.
    app.get(&format!("{M}/conversations"), &john).await;

    let (status, started) = app
        .post(
            &format!("{M}/conversations"),
            &alice,
            json!({ "target_user_id": "john", "chat_type": "profile" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["chat_type"], "profile");
    assert_eq!(started["is_new"], true);
    let id = started["id"].as_str().unwrap().to_owned();
    // One conversation per pair and type, whoever starts it.
    let (_, again) = app
        .post(
            &format!("{M}/conversations"),
            &john,
            json!({ "target_user_id": "alice", "chat_type": "profile" }),
        )
        .await;
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["is_new"], false);

    let (status, sent) = app
        .post(
            &format!("{M}/conversations/{id}/messages"),
            &alice,
            json!({ "content": "Hello, how are you?" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    assert_eq!(sent["content"], "Hello, how are you?");
    assert_eq!(sent["conversation_id"], id.as_str());
    assert_eq!(sent["sender_user_id"], "alice");
    assert_eq!(sent["sender_type"], "user");
    assert_eq!(sent["sender_info"]["handle"], "alice");
    assert_eq!(sent["sender_info"]["display_name"], "Alice A");
    assert_eq!(sent["sender_info"]["avatar_url"], "https://img/alice.png");
    assert!(sent["created_at"].is_string() && sent["id"].is_string());

    let (_, list) = app.get(&format!("{M}/conversations"), &john).await;
    let c = &list["conversations"][0];
    assert_eq!(c["id"], id.as_str());
    assert_eq!(c["chat_type"], "profile");
    assert_eq!(
        c["other_participant"],
        json!({"user_id": "alice", "handle": "alice",
        "display_name": "Alice A", "avatar_url": "https://img/alice.png"})
    );
    assert_eq!(c["target_avee"], Value::Null);
    assert_eq!(c["last_message_preview"], "Hello, how are you?");
    assert_eq!(c["unread_count"], 1);
    assert!(c["last_message_at"].is_string());

    // Opening the conversation marks it read.
    let (status, opened) = app
        .get(&format!("{M}/conversations/{id}/messages"), &john)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(opened["messages"].as_array().unwrap().len(), 1);
    assert_eq!(opened["messages"][0]["sender_avee_id"], Value::Null);
    let (_, list) = app.get(&format!("{M}/conversations"), &john).await;
    assert_eq!(list["conversations"][0]["unread_count"], 0);
    let (_, alice_list) = app.get(&format!("{M}/conversations"), &alice).await;
    assert_eq!(
        alice_list["conversations"][0]["other_participant"]["handle"],
        "johndoe"
    );
}

#[tokio::test]
async fn agent_chats_reach_the_owners_view_and_only_an_agent_the_target_owns() {
    let app = spawn_app().await;
    register_agent(&app, "john-avee", "john").await;
    let alice = token("alice");
    let (status, body) = app
        .post(
            &format!("{M}/conversations"),
            &alice,
            json!({ "target_user_id": "john", "chat_type": "agent" }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "target_avee_id is required: {body}"
    );
    assert!(body["detail"].is_string());
    let (status, _) = app.post(&format!("{M}/conversations"), &alice,
        json!({ "target_user_id": "mallory", "chat_type": "agent", "target_avee_id": "john-avee" })).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an agent the target does not own"
    );
    let (status, started) = app.post(&format!("{M}/conversations"), &alice,
        json!({ "target_user_id": "john", "chat_type": "agent", "target_avee_id": "john-avee" })).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["chat_type"], "agent");
    let id = started["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("{M}/conversations/{id}/messages"),
        &alice,
        json!({ "content": "hi agent" }),
    )
    .await;
    let agent = crate::helpers::token_of("john-avee", PrincipalKind::Agent, false);
    app.post(
        &api(&format!("/messages/conversations/{id}")),
        &agent,
        json!({ "text": "hello from the agent" }),
    )
    .await;

    let (_, list) = app.get(&format!("{M}/conversations"), &alice).await;
    let c = &list["conversations"][0];
    assert_eq!(c["chat_type"], "agent");
    assert_eq!(c["other_participant"]["user_id"], "john");
    assert_eq!(c["target_avee"]["id"], "john-avee");
    assert_eq!(c["target_avee"]["display_name"], "John's Agent");

    // The owner's "Agent Chats" tab.
    let (status, owned) = app
        .get(&format!("{M}/agent-conversations"), &token("john"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let o = &owned["conversations"][0];
    assert_eq!(o["id"], id.as_str());
    assert_eq!(o["other_participant"]["user_id"], "alice");
    // The owner reads the history (agent messages carry the owner as sender_user_id)…
    let (status, read) = app
        .get(&format!("{M}/conversations/{id}/messages"), &token("john"))
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    let agent_msg = &read["messages"][1];
    assert_eq!(agent_msg["sender_type"], "agent");
    assert_eq!(agent_msg["sender_avee_id"], "john-avee");
    assert_eq!(agent_msg["sender_user_id"], "john");
    // …but cannot write in it, and strangers see nothing.
    let (status, _) = app
        .post(
            &format!("{M}/conversations/{id}/messages"),
            &token("john"),
            json!({ "content": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .get(
            &format!("{M}/conversations/{id}/messages"),
            &token("mallory"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].is_string());
    let (_, nothing) = app
        .get(&format!("{M}/agent-conversations"), &token("mallory"))
        .await;
    assert_eq!(nothing["conversations"], json!([]));
}

#[tokio::test]
async fn bad_input_is_refused_and_messages_cross_surfaces() {
    let app = spawn_app().await;
    let alice = token("alice");
    for bad in [
        json!({}),
        json!({"target_user_id": "alice"}),
        json!({"target_user_id": "bob", "chat_type": "group"}),
        json!({"target_user_id": 5}),
    ] {
        let (status, body) = app
            .post(&format!("{M}/conversations"), &alice, bad.clone())
            .await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad} {status} {body}"
        );
        assert!(body["detail"].is_string());
    }
    let (status, _) = app
        .get(&format!("{M}/conversations/not-a-uuid/messages"), &alice)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get(&format!("{M}/conversations"), "garbage").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (_, started) = app
        .post(
            &format!("{M}/conversations"),
            &alice,
            json!({ "target_user_id": "bob" }),
        )
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    for bad in [json!({}), json!({"content": ""}), json!({"content": ["x"]})] {
        let (status, _) = app
            .post(&format!("{M}/conversations/{id}/messages"), &alice, bad)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let mut bob = Sio::connect(&app, Some(&token("bob"))).await.unwrap();
    assert_eq!(
        bob.call("join", json!({"conversation_id": id})).await["success"],
        true
    );
    app.post(
        &format!("{M}/conversations/{id}/messages"),
        &alice,
        json!({ "content": "live?" }),
    )
    .await;
    let b = bob
        .next_event("messageBroadcast", 3000)
        .await
        .expect("live");
    assert_eq!(b["text"], "live?");
    app.send("bob", &id, "via v1").await;
    let (_, read) = app
        .get(&format!("{M}/conversations/{id}/messages"), &alice)
        .await;
    assert_eq!(read["messages"][1]["content"], "via v1");
}

#[tokio::test]
async fn no_one_can_plant_the_direct_conversation_two_people_will_start() {
    let app = spawn_app().await;
    // Mallory cannot claim the reserved `dm:` platform ids through v1.
    let (status, body) = app
        .post(
            &api("/conversations"),
            &token("mallory"),
            json!({ "platform_conversation_id": "dm:anything", "participants": ["alice", "bob"] }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, started) = app
        .post(
            &format!("{M}/conversations"),
            &token("alice"),
            json!({ "target_user_id": "bob" }),
        )
        .await;
    assert_eq!(started["is_new"], true);
    let id = started["id"].as_str().unwrap();
    let (status, _) = app
        .get(
            &format!("{M}/conversations/{id}/messages"),
            &token("mallory"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
