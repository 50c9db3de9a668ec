use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{api, spawn_app, token};

#[tokio::test]
async fn owners_add_participants_idempotently_and_members_cannot() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob"]).await;
    let path = api(&format!("/conversations/{id}/participants"));
    let new = json!({"participant_id": "carol", "participant_type": "user", "role": "member", "display_name": "Carol"});
    let (s, body) = app.post(&path, &token("alice"), new.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["display_name"], "Carol");
    assert_eq!(body["data"]["last_read_seq"], 0);
    let (s, _) = app.post(&path, &token("alice"), new).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .post(&path, &token("bob"), json!({"participant_id": "dave"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, list) = app.get(&path, &token("carol")).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["participant_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob", "carol"]);
}

#[tokio::test]
async fn participants_leave_themselves_owners_remove_others() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &["bob", "carol"]).await;
    let p = |who: &str| api(&format!("/conversations/{id}/participants/{who}"));
    let (s, _) = app
        .request(Method::DELETE, &p("carol"), Some(&token("bob")), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .request(Method::DELETE, &p("bob"), Some(&token("bob")), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Once out, bob no longer sees the conversation.
    let (s, _) = app
        .get(&api(&format!("/conversations/{id}")), &token("bob"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .request(Method::DELETE, &p("carol"), Some(&token("alice")), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = app
        .request(Method::DELETE, &p("nobody"), Some(&token("alice")), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "NOT_FOUND");
}

#[tokio::test]
async fn adding_a_participant_validates_its_fields() {
    let app = spawn_app().await;
    let id = app.conversation("alice", &[]).await;
    let path = api(&format!("/conversations/{id}/participants"));
    for bad in [
        json!({"participant_id": ""}),
        json!({"participant_id": "x".repeat(129)}),
        json!({"participant_id": "a", "participant_type": "robot"}),
        json!({"participant_id": "a", "role": "king"}),
        json!({"participant_id": 5}),
        json!({"participant_id": "a\u{0}"}),
    ] {
        let (s, body) = app.post(&path, &token("alice"), bad.clone()).await;
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad} -> {s} {body}"
        );
        assert_eq!(body["code"], "VALIDATION_ERROR", "{bad}");
    }
    // Unknown fields are ignored, never rejected (contract §3).
    let (s, body) = app
        .post(
            &path,
            &token("alice"),
            json!({"participant_id": "a", "surprise": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
}
