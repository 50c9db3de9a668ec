//! Probes, API docs, request ids, trailing slashes, rate limits.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{api, spawn_app, spawn_app_with, token};

#[tokio::test]
async fn health_readiness_openapi_and_docs_are_served() {
    let app = spawn_app().await;
    let (s, body) = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!((s, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, body) = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (s, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let (s, spec) = app.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let paths = spec["paths"].as_object().unwrap();
    for p in [
        "/api/v1/communication/conversations",
        "/api/v1/communication/conversations/{id}",
        "/api/v1/communication/conversations/{id}/archive",
        "/api/v1/communication/conversations/{id}/participants/{participant_id}",
        "/api/v1/communication/messages/conversations/{id}",
        "/api/v1/communication/messages/conversations/{id}/mark-read",
        "/api/v1/communication/messages/{message_id}/reactions/{emoji}",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    let res = app
        .http
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("swagger"));
    let (s, _) = app.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated_and_appear_in_errors() {
    let app = spawn_app().await;
    let res = app
        .http
        .get(format!(
            "{}{}",
            app.base,
            api("/conversations/00000000-0000-0000-0000-000000000000")
        ))
        .bearer_auth(token("a"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-123");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["request_id"], "req-123");
    let res = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert!(!res.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn trailing_slashes_are_accepted_everywhere() {
    let app = spawn_app().await;
    let c = app.conversation("alice", &[]).await;
    for path in [
        api("/conversations/"),
        api(&format!("/conversations/{c}/")),
        api(&format!("/conversations/{c}/participants/")),
        api(&format!("/messages/conversations/{c}/?limit=5")),
    ] {
        let (s, body) = app.get(&path, &token("alice")).await;
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
    }
    let (s, _) = app
        .post(
            &api(&format!("/messages/conversations/{c}/")),
            &token("alice"),
            json!({"text": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_headers() {
    let app = spawn_app_with(|c| c.rate_limit_per_minute = 5).await;
    let url = format!("{}{}", app.base, api("/conversations"));
    let res = app
        .http
        .get(&url)
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-ratelimit-limit"], "5");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "4");
    assert!(res.headers().contains_key("x-ratelimit-reset"));
    for _ in 0..4 {
        app.http
            .get(&url)
            .bearer_auth(token("alice"))
            .send()
            .await
            .unwrap();
    }
    let res = app
        .http
        .get(&url)
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");
    // Another principal is unaffected.
    let res = app
        .http
        .get(&url)
        .bearer_auth(token("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn rest_responses_are_compressed_but_socket_io_polling_is_not() {
    let app = spawn_app().await;
    let c = app.conversation("alice", &[]).await;
    for i in 0..5 {
        app.send(
            "alice",
            &c,
            &format!("message {i} with some repeated text to compress"),
        )
        .await;
    }
    let res = app
        .http
        .get(format!(
            "{}{}",
            app.base,
            api(&format!("/messages/conversations/{c}"))
        ))
        .bearer_auth(token("alice"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );

    let res = app
        .http
        .get(format!(
            "{}/socket.io/?EIO=4&transport=polling&token={}",
            app.base,
            token("alice")
        ))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("polling handshake");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("content-encoding").is_none());
    assert!(res.text().await.unwrap_or_default().starts_with('0'));
}
