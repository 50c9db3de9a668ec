//! Bad input is a 4xx with a code, never a 5xx, and nothing is stored.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{api, spawn_app, token};

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_code_and_stores_nothing() {
    let app = spawn_app().await;
    let c = app.conversation("alice", &["bob"]).await;
    let send = api(&format!("/messages/conversations/{c}"));
    let t = token("alice");

    // (method, path, raw body, expected status, expected code)
    let cases: Vec<(Method, String, Option<String>, u16, &str)> = vec![
        (
            Method::POST,
            send.clone(),
            Some("{not json".into()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some("[]".into()),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some(r#"{"text": 5}"#.into()),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some(r#"{"text": ""}"#.into()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some(r#"{"text": "   "}"#.into()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some(json!({"text": "x".repeat(10_001)}).to_string()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some(json!({"text": "x".repeat(1_100_000)}).to_string()),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            Method::POST,
            send.clone(),
            Some(r#"{"text": "hi", "metadata": [1]}"#.into()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some(json!({"text": "hi", "metadata": {"big": "y".repeat(17_000)}}).to_string()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some(json!({"text": "hi", "client_message_id": "k".repeat(200)}).to_string()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some(r#"{"text": "hi", "attachments": [{"type": "image"}]}"#.into()),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some(r#"{"text": "hi", "attachments": [{"type": "", "url": ""}]}"#.into()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            send.clone(),
            Some(r#"{"text": "hi", "sender_type": "robot", "sender_id": "alice"}"#.into()),
            201,
            "",
        ),
        (
            Method::POST,
            api("/messages/conversations/not-a-uuid"),
            Some(r#"{"text": "hi"}"#.into()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            api("/messages/conversations/00000000-0000-0000-0000-000000000000"),
            Some(r#"{"text": "hi"}"#.into()),
            404,
            "NOT_FOUND",
        ),
        (
            Method::GET,
            api("/messages/00000000-0000-0000-0000-000000000000"),
            None,
            404,
            "NOT_FOUND",
        ),
        (
            Method::GET,
            api("/messages/123"),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api(&format!("/messages/conversations/{c}?limit=-1")),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api(&format!("/messages/conversations/{c}?limit=0")),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api(&format!(
                "/messages/conversations/{c}?limit=100000000000000000000"
            )),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api(&format!("/messages/conversations/{c}?limit=abc")),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api(&format!("/messages/conversations/{c}?offset=-5")),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api(&format!("/messages/conversations/{c}?offset=99999999999")),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api(&format!("/messages/conversations/{c}?before_seq=-1")),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api(&format!("/messages/conversations/{c}?start_date=yesterday")),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api("/conversations?limit=101"),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api("/conversations?status=deleted"),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api("/conversations?platform=myspace"),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            api("/conversations?include_archived=maybe"),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            api("/conversations"),
            Some(r#"{"platform": "myspace"}"#.into()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            api("/conversations"),
            Some(r#"{"name": 7}"#.into()),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            api("/conversations"),
            Some(r#"{"tags": "one"}"#.into()),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            api("/conversations"),
            Some(r#"{"participants": [{"participant_id": ""}]}"#.into()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            api("/conversations"),
            Some(json!({"name": "n".repeat(201)}).to_string()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            api("/conversations"),
            Some(json!({"platform_conversation_id": "p".repeat(129)}).to_string()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            api("/conversations"),
            Some(r#"{"metadata": "str"}"#.into()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::PUT,
            api(&format!("/conversations/{c}")),
            Some(r#"{"tags": [""]}"#.into()),
            400,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            api(&format!("/messages/conversations/{c}/mark-read")),
            Some(r#"{"up_to_seq": "ten"}"#.into()),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            api(&format!("/messages/conversations/{c}/mark-read")),
            Some(r#"{"up_to_seq": -3}"#.into()),
            400,
            "VALIDATION_ERROR",
        ),
        (Method::GET, api("/nowhere"), None, 404, "NOT_FOUND"),
    ];
    for (method, path, body, expected, code) in cases {
        let mut req = app
            .http
            .request(method.clone(), format!("{}{}", app.base, path))
            .bearer_auth(&t);
        if let Some(b) = body.clone() {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        let short: String = body.unwrap_or_default().chars().take(80).collect();
        assert_eq!(status.as_u16(), expected, "{method} {path} {short}: {text}");
        if !code.is_empty() {
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
            assert_eq!(v["code"], code, "{method} {path} {short}: {text}");
            assert_eq!(v["success"], false);
        }
    }
    // Only the one valid send was stored.
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_body_without_json_content_type_is_refused_clearly() {
    let app = spawn_app().await;
    let res = app
        .http
        .post(format!("{}{}", app.base, api("/conversations")))
        .bearer_auth(token("alice"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "VALIDATION_ERROR");
}

#[tokio::test]
async fn text_at_exactly_the_limit_is_accepted_and_the_limit_is_configurable() {
    let app = crate::helpers::spawn_app_with(|c| c.max_message_chars = 20).await;
    let c = app.conversation("alice", &[]).await;
    let path = api(&format!("/messages/conversations/{c}"));
    let (s, _) = app
        .post(&path, &token("alice"), json!({"text": "é".repeat(20)}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, body) = app
        .post(&path, &token("alice"), json!({"text": "é".repeat(21)}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"]["max_chars"], 20);
}
