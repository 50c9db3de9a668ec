//! Data in and out: import, export, erasure (contract §3).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use colloquy::auth::PrincipalKind;

use crate::helpers::{TestApp, api, spawn_app, token, token_of};
use crate::sio::Sio;

fn history_message(i: usize, sender: &str) -> Value {
    json!({ "sender_id": sender, "sender_type": if sender == "bot" { "agent" } else { "user" },
            "text": format!("old message {i}"), "created_at": format!("2020-01-01T00:00:{:02}Z", i % 60),
            "client_message_id": format!("slack-{i}") })
}

async fn export(app: &TestApp, who: &str, whose: &str) -> (StatusCode, Vec<Value>) {
    let res = app
        .http
        .get(format!(
            "{}{}",
            app.base,
            api(&format!("/users/{whose}/export"))
        ))
        .bearer_auth(token(who))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    let records = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (status, records)
}

#[tokio::test]
async fn import_keeps_senders_and_times_and_is_idempotent() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    app.send("bob", &id, "live before import").await;
    let mut sio = Sio::connect(&app, Some(&token("bob"))).await.unwrap();
    assert_eq!(
        sio.call("join", json!({"conversation_id": id})).await["success"],
        true
    );
    let batch: Vec<Value> = (0..40)
        .map(|i| history_message(i, if i % 3 == 0 { "bot" } else { "carol" }))
        .collect();
    let url = api(&format!("/conversations/{id}/import"));
    let (status, body) = app
        .post(&url, &token("alice"), json!({ "messages": batch }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        json!({ "imported": 40, "skipped": 0, "last_seq": 41 })
    );
    let (_, again) = app
        .post(&url, &token("alice"), json!({ "messages": batch }))
        .await;
    assert_eq!(
        again["data"],
        json!({ "imported": 0, "skipped": 40, "last_seq": 41 })
    );
    // Subscribers hear the new log end (and read the rest from it).
    let seqs = sio.seqs_until(41, 3000).await;
    assert_eq!(seqs.last(), Some(&41), "{seqs:?}");
    let (_, page) = app
        .get(
            &format!(
                "{}?after_seq=1&limit=100",
                api(&format!("/messages/conversations/{id}"))
            ),
            &token("bob"),
        )
        .await;
    let items = page["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 40);
    assert_eq!(items[0]["sender_id"], "bot");
    assert_eq!(items[0]["sender_type"], "agent");
    assert_eq!(items[1]["created_at"], "2020-01-01T00:00:01Z");
    assert_eq!(items[1]["client_message_id"], "slack-1");
    // Imported senders are not made participants.
    let (status, _) = app
        .get(&api(&format!("/conversations/{id}")), &token("carol"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Only the owner (or a service/admin) imports; bad input is named.
    let (status, _) = app
        .post(
            &url,
            &token("bob"),
            json!({ "messages": [history_message(99, "x")] }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .post(
            &url,
            &token("mallory"),
            json!({ "messages": [history_message(99, "x")] }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let service = token_of("bridge", PrincipalKind::Service, false);
    let (status, _) = app
        .post(
            &url,
            &service,
            json!({ "messages": [history_message(99, "x")] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for (bad, field) in [
        (
            json!({ "sender_id": "", "text": "x", "created_at": "2020-01-01T00:00:00Z", "client_message_id": "c" }),
            "messages[0].sender_id",
        ),
        (
            json!({ "sender_id": "a", "sender_type": "robot", "text": "x", "created_at": "2020-01-01T00:00:00Z", "client_message_id": "c" }),
            "messages[0].sender_type",
        ),
        (
            json!({ "sender_id": "a", "text": "x", "created_at": "0000-01-01T00:00:00Z", "client_message_id": "c" }),
            "messages[0].created_at",
        ),
        (
            json!({ "sender_id": "a", "text": "x", "created_at": "2020-01-01T00:00:00Z", "client_message_id": "c", "metadata": [1] }),
            "messages[0].metadata",
        ),
    ] {
        let (status, body) = app
            .post(&url, &token("alice"), json!({ "messages": [bad] }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["details"]["field"], field, "{body}");
    }
    let (status, _) = app
        .post(
            &url,
            &token("alice"),
            json!({ "messages": [{ "sender_id": "a", "text": "x" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let too_many: Vec<Value> = (0..1001).map(|i| history_message(i, "a")).collect();
    let (status, _) = app
        .post(&url, &token("alice"), json!({ "messages": too_many }))
        .await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
        "{status}"
    );
    // Archived: no import.
    app.post(
        &api(&format!("/conversations/{id}/archive")),
        &token("alice"),
        json!({}),
    )
    .await;
    let (status, body) = app
        .post(
            &url,
            &token("alice"),
            json!({ "messages": [history_message(120, "a")] }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "CONVERSATION_ARCHIVED");
    // The log has no gap after all this.
    let (gaps,): (i64,) = sqlx::query_as("SELECT count(*) FROM (SELECT seq, row_number() OVER (ORDER BY seq) n FROM messages) x WHERE seq <> n")
        .fetch_one(&app.db).await.unwrap();
    assert_eq!(gaps, 0);
}

#[tokio::test]
async fn export_then_erase_then_export_shows_nothing_left_and_spares_others() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    let mine = app.send("alice", &id, "alice's secret").await;
    let bobs = app.send("bob", &id, "bob's words").await;
    let bob_msg = bobs["id"].as_str().unwrap();
    app.post(
        &api(&format!("/messages/{bob_msg}/reactions")),
        &token("alice"),
        json!({ "emoji": "👍" }),
    )
    .await;
    app.post(
        &api(&format!("/conversations/{id}/pin")),
        &token("alice"),
        json!({}),
    )
    .await;
    let agent = token_of("alice-bot", PrincipalKind::Agent, false);
    app.post(
        &api("/agents"),
        &agent,
        json!({ "agent_id": "alice-bot", "owner_id": "alice" }),
    )
    .await;

    let (status, records) = export(&app, "alice", "alice").await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    for k in [
        "principal",
        "profile",
        "agent",
        "participation",
        "message",
        "reaction",
        "end",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "message" && r["text"] == "alice's secret")
    );
    assert!(
        !records.iter().any(|r| r["text"] == "bob's words"),
        "only what alice sent"
    );
    // JSON format: one document.
    let (_, doc) = app
        .get(
            &format!("{}?format=json", api("/users/alice/export")),
            &token("alice"),
        )
        .await;
    assert_eq!(doc["records"].as_array().unwrap().len(), records.len());
    // Others may not export or erase alice; an admin may.
    let (status, _) = export(&app, "mallory", "alice").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .request(
            Method::DELETE,
            &api("/users/alice"),
            Some(&token("bob")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let mut bob_socket = Sio::connect(&app, Some(&token("bob"))).await.unwrap();
    assert_eq!(
        bob_socket
            .call("join", json!({"conversation_id": id}))
            .await["success"],
        true
    );
    let (status, erased) = app
        .request(
            Method::DELETE,
            &api("/users/alice"),
            Some(&token("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    let d = &erased["data"];
    assert_eq!(d["messages"], 1);
    assert_eq!(d["participations"], 1);
    assert_eq!(d["reactions"], 1);
    assert_eq!(d["agents"], 1);
    assert_eq!(d["profile"], true);
    let tombstone = bob_socket
        .next_event("messageDeleted", 3000)
        .await
        .expect("subscribers hear the tombstone");
    assert_eq!(tombstone["id"], mine["id"]);

    let (_, after) = export(&app, "alice", "alice").await;
    let left: Vec<&Value> = after
        .iter()
        .filter(|r| !matches!(r["type"].as_str(), Some("principal" | "end" | "profile")))
        .collect();
    assert!(left.is_empty(), "nothing left: {left:?}");
    // The tombstone keeps its place; its content is gone from storage.
    let (text, name): (String, Option<String>) =
        sqlx::query_as("SELECT text, sender_name FROM messages WHERE id = $1::uuid")
            .bind(mine["id"].as_str().unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((text.as_str(), name), ("", None));
    // Bob's message is intact; its reaction count no longer counts alice.
    let (status, bob_view) = app
        .get(&api(&format!("/messages/{bob_msg}")), &token("bob"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bob_view["data"]["text"], "bob's words");
    assert_eq!(bob_view["data"]["reaction_count"], 0);
    let (_, history) = app
        .get(
            &api(&format!("/messages/conversations/{id}")),
            &token("bob"),
        )
        .await;
    assert_eq!(history["data"]["total"], 2);
    // Alice is no longer a participant.
    let (status, _) = app
        .get(&api(&format!("/conversations/{id}")), &token("alice"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
