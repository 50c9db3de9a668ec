//! Summaries (extractive and OpenAI-compatible, cached) and analytics.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::HeaderMap, routing::post};
use colloquy::config::SummaryProvider;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, api, spawn_app, spawn_app_with, token};

const RELEASE_THREAD: &[(&str, &str)] = &[
    (
        "alice",
        "Thanks for joining! The release of version two is planned for Friday.",
    ),
    (
        "bob",
        "Great news. The release notes for version two are almost finished.",
    ),
    (
        "alice",
        "Wonderful, I love how the release notes explain the new search.",
    ),
    ("bob", "By the way, lunch was nice."),
    (
        "alice",
        "Perfect. Let's publish the release notes and ship version two on Friday.",
    ),
    ("bob", "Excellent, happy to help with the release."),
];

async fn say(app: &TestApp, conversation: &str, lines: &[(&str, &str)]) -> Vec<String> {
    let mut ids = Vec::new();
    for (who, text) in lines {
        ids.push(
            app.send(who, conversation, text).await["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ids
}

async fn summary_of(app: &TestApp, conversation: &str) -> Value {
    let (s, body) = app
        .get(
            &api(&format!("/conversations/{conversation}/summary")),
            &token("alice"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["data"].clone()
}

#[tokio::test]
async fn extractive_summary_is_sensible_stable_and_cached_until_the_conversation_changes() {
    let app = spawn_app().await;
    let c = app.conversation("alice", &["bob"]).await;
    let ids = say(&app, &c, RELEASE_THREAD).await;

    let first = summary_of(&app, &c).await;
    assert_eq!(first["method"], "extractive");
    assert_eq!(first["covered_through_seq"], 6);
    assert_eq!(first["cached"], false);
    assert_eq!(first["sentiment"], "positive", "{first}");
    assert!(first["sentiment_score"].as_f64().unwrap_or_default() > 0.05);
    let points: Vec<&str> = first["key_points"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!((1..=5).contains(&points.len()), "{first}");
    for p in &points {
        assert!(
            RELEASE_THREAD.iter().any(|(_, t)| t.contains(p)),
            "key point {p:?} is not from the conversation"
        );
    }
    assert!(
        points.iter().any(|p| p.contains("release")),
        "the central topic is picked: {points:?}"
    );
    assert!(!points.iter().any(|p| p.contains("lunch")), "{points:?}");
    let summary = first["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with("6 messages from alice and bob."),
        "{summary}"
    );

    let again = summary_of(&app, &c).await;
    assert_eq!(again["cached"], true);
    assert_eq!(again["generated_at"], first["generated_at"]);
    assert_eq!(again["key_points"], first["key_points"]);

    app.send("bob", &c, "One more thing about the release.")
        .await;
    let moved = summary_of(&app, &c).await;
    assert_eq!(
        (
            moved["cached"].clone(),
            moved["covered_through_seq"].clone()
        ),
        (json!(false), json!(7))
    );
    assert_eq!(summary_of(&app, &c).await["cached"], true);

    // An edit or delete changes what the summary covers without moving `last_seq`.
    let (s, _) = app
        .request(
            Method::DELETE,
            &api(&format!("/messages/{}", ids[2])),
            Some(&token("alice")),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let after_delete = summary_of(&app, &c).await;
    assert_eq!(after_delete["cached"], false);
    assert_eq!(after_delete["message_count"], 6);
    assert!(
        !after_delete.to_string().contains("Wonderful, I love"),
        "deleted text never reaches a summary"
    );
}

#[tokio::test]
async fn summary_sentiment_follows_clearly_negative_text_and_empty_conversations_are_neutral() {
    let app = spawn_app().await;
    let angry = app.conversation("alice", &["bob"]).await;
    say(
        &app,
        &angry,
        &[
            ("alice", "The deploy failed again and the site is broken."),
            (
                "bob",
                "This is terrible. Customers are angry and the errors are awful.",
            ),
            ("alice", "I hate this outage, it is a horrible mess."),
        ],
    )
    .await;
    let s = summary_of(&app, &angry).await;
    assert_eq!(s["sentiment"], "negative", "{s}");
    assert!(s["sentiment_score"].as_f64().unwrap_or_default() < -0.05);

    let empty = app.conversation("alice", &[]).await;
    let s = summary_of(&app, &empty).await;
    assert_eq!(
        (
            s["sentiment"].clone(),
            s["covered_through_seq"].clone(),
            s["key_points"].clone()
        ),
        (json!("neutral"), json!(0), json!([]))
    );

    let (status, body) = app
        .get(
            &api(&format!("/conversations/{angry}/summary")),
            &token("mallory"),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );
    let (status, _) = app
        .get(&api("/conversations/not-a-uuid/summary"), &token("alice"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The authorization header and body of each request the fake endpoint received.
type Seen = Arc<std::sync::Mutex<Vec<(Option<String>, Value)>>>;

/// An OpenAI-compatible endpoint whose behaviour is chosen by the first path segment.
#[derive(Clone, Default)]
struct Fake {
    calls: Arc<AtomicUsize>,
    seen: Seen,
}

async fn fake_llm() -> (String, Fake) {
    async fn answer(
        State((fake, mode)): State<(Fake, &'static str)>,
        headers: HeaderMap,
        Json(request): Json<Value>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        fake.calls.fetch_add(1, Ordering::SeqCst);
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Ok(mut seen) = fake.seen.lock() {
            seen.push((auth, request));
        }
        let content = json!({"summary": "The team plans the version two release for Friday.",
                             "key_points": ["Release on Friday", "Notes almost done"]})
        .to_string();
        match mode {
            "ok" => Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}))
                .into_response(),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Json(json!({"choices": [{"message": {"content": content}}]})).into_response()
            }
            "malformed" => Json(json!({"choices": [{"message": {"content": "Sure! Here is a summary."}}]}))
                .into_response(),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response(),
        }
    }
    let fake = Fake::default();
    let mut router = Router::new();
    for mode in ["ok", "slow", "malformed", "error"] {
        router = router.nest(
            &format!("/{mode}/v1"),
            Router::new()
                .route("/chat/completions", post(answer))
                .with_state((fake.clone(), mode)),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), fake)
}

async fn openai_app(base: &str, mode: &str) -> TestApp {
    let url = format!("{base}/{mode}/v1");
    spawn_app_with(move |c| {
        c.summary_provider = SummaryProvider::Openai;
        c.openai_base_url = url;
        c.openai_api_key = Some("sk-test".parse().expect("secret"));
        c.openai_model = "test-model".into();
        c.openai_timeout_seconds = 1;
    })
    .await
}

#[tokio::test]
async fn openai_provider_answers_are_used_and_cached() {
    let (base, fake) = fake_llm().await;
    let app = openai_app(&base, "ok").await;
    let c = app.conversation("alice", &["bob"]).await;
    say(&app, &c, RELEASE_THREAD).await;

    let s = summary_of(&app, &c).await;
    assert_eq!(s["method"], "openai", "{s}");
    assert_eq!(
        s["summary"],
        "The team plans the version two release for Friday."
    );
    assert_eq!(
        s["key_points"],
        json!(["Release on Friday", "Notes almost done"])
    );
    assert_eq!(s["sentiment"], "positive");
    assert_eq!(summary_of(&app, &c).await["cached"], true);
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        1,
        "the cache saves a call"
    );

    let seen = fake.seen.lock().map(|s| s.clone()).unwrap_or_default();
    let (auth, request) = &seen[0];
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    assert_eq!(request["model"], "test-model");
    let transcript = request["messages"][1]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        transcript.starts_with("alice: Thanks for joining!"),
        "{transcript}"
    );
    assert!(transcript.ends_with("bob: Excellent, happy to help with the release."));
}

#[tokio::test]
async fn openai_provider_failures_fall_back_to_the_extractive_summary() {
    let (base, _fake) = fake_llm().await;
    for (mode, reason) in [
        ("slow", "timed out"),
        ("malformed", "malformed response"),
        ("error", "HTTP 500"),
    ] {
        let app = openai_app(&base, mode).await;
        let c = app.conversation("alice", &["bob"]).await;
        say(&app, &c, RELEASE_THREAD).await;
        let started = std::time::Instant::now();
        let s = summary_of(&app, &c).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{mode}: the timeout holds"
        );
        assert_eq!(s["method"], "extractive_fallback", "{mode}: {s}");
        let why = s["fallback_reason"].as_str().unwrap_or_default();
        assert!(why.contains(reason), "{mode}: {why}");
        let points = s["key_points"].as_array().cloned().unwrap_or_default();
        assert!(!points.is_empty());
        assert!(points.iter().all(|p| {
            RELEASE_THREAD
                .iter()
                .any(|(_, t)| t.contains(p.as_str().unwrap_or("\u{0}")))
        }));
        assert_eq!(s["sentiment"], "positive");
    }
}

/// Sends `lines` and then pins each message's `created_at`.
async fn at_times(app: &TestApp, conversation: &str, lines: &[(&str, &str)]) -> Vec<String> {
    let mut ids = Vec::new();
    for (who, when) in lines {
        let m = app.send(who, conversation, "hello there").await;
        sqlx::query("UPDATE messages SET created_at = $1::timestamptz WHERE id = $2::uuid")
            .bind(when)
            .bind(m["id"].as_str().unwrap_or_default())
            .execute(&app.db)
            .await
            .expect("pin created_at");
        ids.push(m["id"].as_str().unwrap_or_default().to_owned());
    }
    ids
}

#[tokio::test]
async fn analytics_match_hand_computed_figures() {
    let app = spawn_app().await;
    let c = app.conversation("alice", &["bob", "carol"]).await;
    let ids = at_times(
        &app,
        &c,
        &[
            ("alice", "2026-01-01T10:00:00Z"),
            ("alice", "2026-01-01T10:00:30Z"),
            ("bob", "2026-01-01T10:01:30Z"), // replies after 60 000 ms
            ("alice", "2026-01-01T10:59:59Z"), // replies after 3 509 000 ms
            ("bob", "2026-01-01T12:00:00Z"), // replies after 3 601 000 ms
            ("carol", "2026-01-02T00:00:00Z"), // replies after 43 200 000 ms
            ("alice", "2026-01-02T00:00:10Z"), // deleted below: counts nowhere
        ],
    )
    .await;
    app.request(
        Method::DELETE,
        &api(&format!("/messages/{}", ids[6])),
        Some(&token("alice")),
        None,
    )
    .await;

    let (s, body) = app
        .get(
            &api(&format!("/conversations/{c}/analytics")),
            &token("bob"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let a = &body["data"];
    assert_eq!(a["message_count"], 6);
    assert_eq!(a["participant_count"], 3);
    assert_eq!(a["first_message_at"], "2026-01-01T10:00:00Z");
    assert_eq!(a["last_message_at"], "2026-01-02T00:00:00Z");
    assert_eq!(a["avg_response_ms"], 12_592_500.0);
    let alice = &a["participant_stats"]["alice"];
    assert_eq!(
        (
            alice["message_count"].clone(),
            alice["avg_response_ms"].clone(),
            alice["response_count"].clone()
        ),
        (json!(3), json!(3_509_000.0), json!(1))
    );
    assert_eq!(alice["last_message_at"], "2026-01-01T10:59:59Z");
    let bob = &a["participant_stats"]["bob"];
    assert_eq!(
        (bob["message_count"].clone(), bob["avg_response_ms"].clone()),
        (json!(2), json!(1_830_500.0))
    );
    assert_eq!(
        a["participant_stats"]["carol"]["avg_response_ms"],
        43_200_000.0
    );
    assert_eq!(a["bucket"], "day");
    assert_eq!(
        a["activity_timeline"],
        json!([
            {"bucket_start": "2026-01-01T00:00:00Z", "message_count": 5},
            {"bucket_start": "2026-01-02T00:00:00Z", "message_count": 1},
        ])
    );

    // Hour buckets over a range whose ends fall inside buckets; both ends inclusive.
    let (s, body) = app
        .get(
            &api(&format!(
                "/conversations/{c}/analytics?bucket=hour&start_date=2026-01-01T09:59:59Z&end_date=2026-01-01T12:00:00Z"
            )),
            &token("alice"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let a = &body["data"];
    assert_eq!(a["message_count"], 5);
    assert_eq!(
        a["activity_timeline"],
        json!([
            {"bucket_start": "2026-01-01T09:00:00Z", "message_count": 0},
            {"bucket_start": "2026-01-01T10:00:00Z", "message_count": 4},
            {"bucket_start": "2026-01-01T11:00:00Z", "message_count": 0},
            {"bucket_start": "2026-01-01T12:00:00Z", "message_count": 1},
        ])
    );
    assert!(a["participant_stats"].get("carol").is_none());
    assert_eq!(
        a["avg_response_ms"],
        (60_000.0 + 3_509_000.0 + 3_601_000.0) / 3.0
    );

    // A range that starts mid-conversation measures responses inside it only.
    let (_, body) = app
        .get(
            &api(&format!(
                "/conversations/{c}/analytics?start_date=2026-01-01T10:01:00Z"
            )),
            &token("alice"),
        )
        .await;
    assert_eq!(
        body["data"]["participant_stats"]["bob"]["response_count"],
        1
    );
    assert_eq!(
        body["data"]["participant_stats"]["alice"]["response_count"],
        1
    );
}

#[tokio::test]
async fn analytics_reject_bad_parameters_and_strangers() {
    let app = spawn_app().await;
    let c = app.conversation("alice", &[]).await;
    let (s, body) = app
        .get(
            &api(&format!("/conversations/{c}/analytics")),
            &token("alice"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            body["data"]["message_count"].clone(),
            body["data"]["activity_timeline"].clone()
        ),
        (json!(0), json!([]))
    );
    for query in [
        "bucket=week",
        "start_date=yesterday",
        "start_date=-262143-01-01T00:00:00Z",
    ] {
        let (s, body) = app
            .get(
                &api(&format!("/conversations/{c}/analytics?{query}")),
                &token("alice"),
            )
            .await;
        assert_eq!(
            (s, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR")),
            "{query}: {body}"
        );
    }
    // A range ending before it starts is empty, as in history.
    let (s, body) = app
        .get(
            &api(&format!(
                "/conversations/{c}/analytics?start_date=2026-02-01T00:00:00Z&end_date=2026-01-01T00:00:00Z"
            )),
            &token("alice"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["message_count"], 0);
    assert_eq!(body["data"]["activity_timeline"], json!([]));
    let (s, _) = app
        .get(
            &api(&format!("/conversations/{c}/analytics")),
            &token("mallory"),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_rest_request_over_the_time_limit_is_503_unavailable() {
    let (base, _fake) = fake_llm().await;
    let url = format!("{base}/slow/v1");
    let app = spawn_app_with(move |c| {
        c.summary_provider = SummaryProvider::Openai;
        c.openai_base_url = url;
        c.openai_timeout_seconds = 30;
        c.request_timeout_seconds = 1;
    })
    .await;
    let c = app.conversation("alice", &["bob"]).await;
    app.send("alice", &c, "hello").await;
    let started = std::time::Instant::now();
    let (s, body) = app
        .get(
            &api(&format!("/conversations/{c}/summary")),
            &token("alice"),
        )
        .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("UNAVAILABLE")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(body["request_id"].is_string());
    // The server is fine afterwards.
    let (s, _) = app
        .get(&api(&format!("/conversations/{c}")), &token("alice"))
        .await;
    assert_eq!(s, StatusCode::OK);
}
