//! Search, unread inbox, agent owners.

use reqwest::{Method, StatusCode};
use serde_json::json;

use colloquy::auth::PrincipalKind;

use crate::helpers::{api, spawn_app, token, token_of};

#[tokio::test]
async fn search_ranks_hits_from_readable_conversations_and_skips_deleted_ones() {
    let app = spawn_app().await;
    let mine = app.conversation("alice", &["bob"]).await;
    let theirs = app.conversation("mallory", &[]).await;
    app.send("alice", &mine, "the invoice is late").await;
    app.send(
        "bob",
        &mine,
        "invoice invoice: the invoices for March are attached",
    )
    .await;
    let gone = app.send("alice", &mine, "secret invoice to delete").await;
    app.send("mallory", &theirs, "mallory's invoice").await;
    app.send("alice", &mine, "unrelated words").await;
    app.request(
        Method::DELETE,
        &api(&format!("/messages/{}", gone["id"].as_str().unwrap())),
        Some(&token("alice")),
        None,
    )
    .await;

    let (s, body) = app
        .get(&api("/messages/search?q=invoice"), &token("alice"))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(body["data"]["total"], 2);
    assert_eq!(
        items[0]["message"]["sender_id"], "bob",
        "more matches rank first"
    );
    assert!(items[0]["snippet"].as_str().unwrap().contains("<mark>"));
    assert!(
        items
            .iter()
            .all(|h| h["message"]["conversation_id"] == mine.as_str())
    );

    let (_, scoped) = app
        .get(
            &api(&format!(
                "/messages/search?q=invoice&conversation_id={theirs}"
            )),
            &token("alice"),
        )
        .await;
    assert_eq!(scoped["data"]["total"], 0);

    for q in [
        "%27%3B%20drop",
        "%22unclosed",
        "a%26%7C!(",
        "-",
        "%F0%9F%98%80",
        "%5C",
    ] {
        let (s, body) = app
            .get(&api(&format!("/messages/search?q={q}")), &token("alice"))
            .await;
        assert_eq!(s, StatusCode::OK, "{q}: {body}");
    }
    let (s, body) = app.get(&api("/messages/search"), &token("alice")).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR"))
    );
}

#[tokio::test]
async fn the_inbox_sums_unread_counts_across_conversations() {
    let app = spawn_app().await;
    let a = app.conversation("alice", &["bob"]).await;
    let b = app.conversation("carol", &["bob"]).await;
    for _ in 0..3 {
        app.send("alice", &a, "ping").await;
    }
    app.send("carol", &b, "hey").await;
    let (_, inbox) = app.get(&api("/unread"), &token("bob")).await;
    assert_eq!(inbox["data"]["total_unread"], 4);
    assert_eq!(
        inbox["data"]["conversations"][0]["conversation_id"],
        a.as_str()
    );
    assert_eq!(inbox["data"]["conversations"][0]["unread_count"], 3);
    app.post(
        &api(&format!("/messages/conversations/{a}/mark-read")),
        &token("bob"),
        json!({}),
    )
    .await;
    let (_, inbox) = app.get(&api("/unread"), &token("bob")).await;
    assert_eq!(inbox["data"]["total_unread"], 1);
    let (_, alice) = app.get(&api("/unread"), &token("alice")).await;
    assert_eq!(
        alice["data"]["total_unread"], 0,
        "own messages are never unread"
    );
}

#[tokio::test]
async fn agent_owners_read_their_agents_conversations_but_cannot_write() {
    let app = spawn_app().await;
    // The agent itself names its owner (contract §3); a user cannot claim it.
    let helper = token_of("helper", PrincipalKind::Agent, false);
    let (s, body) = app
        .post(
            &api("/agents"),
            &helper,
            json!({"agent_id": "helper", "name": "Helper", "owner_id": "owner"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, _) = app
        .post(
            &api("/agents"),
            &helper,
            json!({"agent_id": "helper", "owner_id": "owner"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = app
        .post(
            &api("/agents"),
            &token("thief"),
            json!({"agent_id": "helper"}),
        )
        .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN"))
    );

    let (_, made) = app
        .post(
            &api("/conversations"),
            &token("customer"),
            json!({"participants": [{"participant_id": "helper", "participant_type": "agent"}]}),
        )
        .await;
    let c = made["conversation_id"].as_str().expect("id").to_owned();
    app.conversation("customer", &[]).await;
    app.send("customer", &c, "help me").await;

    let (s, list) = app
        .get(&api("/agents/helper/conversations"), &token("owner"))
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["data"]["total"], 1);
    assert_eq!(list["data"]["items"][0]["id"], c.as_str());
    let (s, hist) = app
        .get(
            &api(&format!("/messages/conversations/{c}")),
            &token("owner"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hist["data"]["items"][0]["text"], "help me");
    let (_, found) = app
        .get(&api("/messages/search?q=help"), &token("owner"))
        .await;
    assert_eq!(found["data"]["total"], 1);
    for insight in ["summary", "analytics"] {
        let (s, body) = app
            .get(
                &api(&format!("/conversations/{c}/{insight}")),
                &token("owner"),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{insight}: {body}");
        let (s, _) = app
            .get(
                &api(&format!("/conversations/{c}/{insight}")),
                &token("thief"),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{insight}");
    }

    let (s, _) = app
        .post(
            &api(&format!("/messages/conversations/{c}")),
            &token("owner"),
            json!({"text": "as owner"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .post(
            &api(&format!("/messages/conversations/{c}")),
            &token("owner"),
            json!({"text": "as agent", "sender_id": "helper"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, _) = app
        .get(&api("/agents/helper/conversations"), &token("thief"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .get(
            &api(&format!("/messages/conversations/{c}")),
            &token("thief"),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
