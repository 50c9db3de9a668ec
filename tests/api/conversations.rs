use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{api, spawn_app, token};

#[tokio::test]
async fn creating_a_conversation_returns_201_with_the_envelope_and_the_caller_as_owner() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            &api("/conversations"),
            &token("alice"),
            json!({"name": "Support", "description": "d", "platform": "telegram",
                   "platform_conversation_id": "tg-1", "participants": ["bob", {"participant_id": "bot", "participant_type": "agent"}],
                   "metadata": {"k": 1}, "tags": ["vip"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["is_new"], true);
    assert_eq!(body["conversation_id"], body["data"]["id"]);
    assert_eq!(body["conversation"]["id"], body["data"]["id"]);
    let c = &body["data"];
    assert_eq!(c["platform"], "telegram");
    assert_eq!(c["participants"], json!(["alice", "bob", "bot"]));
    assert_eq!(c["created_by"], "alice");
    assert_eq!(c["last_seq"], 0);
    assert_eq!(c["is_active"], true);
    assert_eq!(c["tags"], json!(["vip"]));
    let id = c["id"].as_str().unwrap();
    let (_, parts) = app
        .get(
            &api(&format!("/conversations/{id}/participants")),
            &token("bob"),
        )
        .await;
    assert_eq!(parts["data"][0]["role"], "owner");
    assert_eq!(parts["data"][1]["role"], "member");
    assert_eq!(parts["data"][2]["participant_type"], "agent");
}

#[tokio::test]
async fn creating_with_an_existing_platform_id_returns_the_same_conversation_with_200() {
    let app = spawn_app().await;
    let body = json!({"platform": "discord", "platform_conversation_id": "room-9", "participants": ["bob"]});
    let (s1, first) = app
        .post(&api("/conversations/"), &token("alice"), body.clone())
        .await;
    let (s2, second) = app
        .post(&api("/conversations/"), &token("bob"), body.clone())
        .await;
    assert_eq!(s1, StatusCode::CREATED);
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(second["data"]["is_new"], false);
    assert_eq!(first["conversation_id"], second["conversation_id"]);
    // The same platform id on another platform is another conversation.
    let (s3, third) = app
        .post(
            &api("/conversations"),
            &token("alice"),
            json!({"platform": "telegram", "platform_conversation_id": "room-9"}),
        )
        .await;
    assert_eq!(s3, StatusCode::CREATED);
    assert_ne!(third["conversation_id"], first["conversation_id"]);
    // A stranger naming a taken platform id is refused, not joined.
    let (s4, b4) = app
        .post(&api("/conversations"), &token("mallory"), body)
        .await;
    assert_eq!(s4, StatusCode::FORBIDDEN, "{b4}");
}

#[tokio::test]
async fn listing_filters_orders_by_activity_and_pages() {
    let app = spawn_app().await;
    let a = app.conversation("alice", &["bot"]).await;
    let b = app.conversation("alice", &[]).await;
    let c = app.conversation("alice", &["bot"]).await;
    app.conversation("bob", &[]).await;
    app.send("alice", &a, "latest activity").await;

    let (status, body) = app.get(&api("/conversations"), &token("alice")).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str(), c.as_str(), b.as_str()]);
    assert_eq!(body["data"]["total"], 3);
    assert_eq!(
        body["data"]["items"][0]["last_message"]["text"],
        "latest activity"
    );

    let (_, with_bot) = app
        .get(&api("/conversations?bot_id=bot"), &token("alice"))
        .await;
    assert_eq!(with_bot["data"]["total"], 2);
    let (_, page) = app
        .get(&api("/conversations?limit=2&offset=0"), &token("alice"))
        .await;
    assert_eq!(page["data"]["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["data"]["has_more"], true);
    let (_, page2) = app
        .get(&api("/conversations?limit=2&offset=2"), &token("alice"))
        .await;
    assert_eq!(page2["data"]["items"].as_array().unwrap().len(), 1);
    assert_eq!(page2["data"]["has_more"], false);

    // Pinned first when asked.
    app.post(
        &api(&format!("/conversations/{b}/pin")),
        &token("alice"),
        json!({}),
    )
    .await;
    let (_, pinned) = app
        .get(&api("/conversations?pinned=true"), &token("alice"))
        .await;
    assert_eq!(pinned["data"]["items"][0]["id"], b.as_str());
    assert_eq!(pinned["data"]["items"][0]["is_pinned"], true);
    let (_, only) = app
        .get(&api("/conversations?pinned_only=true"), &token("alice"))
        .await;
    assert_eq!(only["data"]["total"], 1);

    // Archived conversations are hidden unless asked for.
    app.post(
        &api(&format!("/conversations/{c}/archive")),
        &token("alice"),
        json!({}),
    )
    .await;
    let (_, active) = app.get(&api("/conversations"), &token("alice")).await;
    assert_eq!(active["data"]["total"], 2);
    let (_, archived) = app
        .get(&api("/conversations?status=archived"), &token("alice"))
        .await;
    assert_eq!(archived["data"]["items"][0]["id"], c.as_str());
    let (_, all) = app
        .get(
            &api("/conversations?include_archived=true"),
            &token("alice"),
        )
        .await;
    assert_eq!(all["data"]["total"], 3);

    // Someone else's conversations are not listed; naming another participant is refused.
    let (_, bobs) = app.get(&api("/conversations"), &token("bob")).await;
    assert_eq!(bobs["data"]["total"], 1);
    let (s, _) = app
        .get(&api("/conversations?participant_id=alice"), &token("bob"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn listing_searches_names_and_tags_literally() {
    let app = spawn_app().await;
    let t = token("alice");
    app.post(
        &api("/conversations"),
        &t,
        json!({"name": "Billing 100% done", "tags": ["billing"]}),
    )
    .await;
    app.post(
        &api("/conversations"),
        &t,
        json!({"name": "Sales", "platform": "x"}),
    )
    .await;
    let (_, q) = app.get(&api("/conversations?q=100%25"), &t).await;
    assert_eq!(q["data"]["total"], 1);
    let (_, underscore) = app.get(&api("/conversations?q=_"), &t).await;
    assert_eq!(underscore["data"]["total"], 0);
    let (_, tag) = app.get(&api("/conversations?tag=billing"), &t).await;
    assert_eq!(tag["data"]["total"], 1);
    let (_, platform) = app.get(&api("/conversations?platform=x"), &t).await;
    assert_eq!(platform["data"]["items"][0]["name"], "Sales");
}

#[tokio::test]
async fn owners_update_and_delete_members_may_not() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    let path = api(&format!("/conversations/{id}"));
    let (s, body) = app
        .request(
            Method::PUT,
            &path,
            Some(&token("alice")),
            Some(json!({"name": "Renamed", "tags": ["a", "b"], "metadata": {"x": true}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["name"], "Renamed");
    assert_eq!(body["data"]["tags"], json!(["a", "b"]));
    let (s, _) = app
        .request(
            Method::PUT,
            &path,
            Some(&token("bob")),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .request(Method::DELETE, &path, Some(&token("bob")), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.send("bob", &id, "will be deleted too").await;
    let (s, _) = app
        .request(Method::DELETE, &path, Some(&token("alice")), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = app.get(&path, &token("alice")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "NOT_FOUND");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn an_archived_conversation_refuses_messages_until_restored() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    let (s, body) = app
        .post(
            &api(&format!("/conversations/{id}/archive")),
            &token("alice"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"]["is_active"], false);
    assert!(body["data"]["archived_at"].is_string());
    let (s, body) = app
        .post(
            &api(&format!("/messages/conversations/{id}")),
            &token("bob"),
            json!({"text": "hello?"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(body["code"], "CONVERSATION_ARCHIVED");
    let (s, _) = app
        .post(
            &api(&format!("/conversations/{id}/restore")),
            &token("bob"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, body) = app
        .post(
            &api(&format!("/conversations/{id}/restore")),
            &token("alice"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"]["is_active"], true);
    let m = app.send("bob", &id, "back again").await;
    assert_eq!(m["seq"], 1);
}

#[tokio::test]
async fn pinning_is_per_caller() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    let (s, body) = app
        .post(
            &api(&format!("/conversations/{id}/pin")),
            &token("alice"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"]["is_pinned"], true);
    let (_, bob_view) = app
        .get(&api(&format!("/conversations/{id}")), &token("bob"))
        .await;
    assert_eq!(bob_view["data"]["is_pinned"], false);
    let (_, body) = app
        .post(
            &api(&format!("/conversations/{id}/unpin")),
            &token("alice"),
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["is_pinned"], false);
}
