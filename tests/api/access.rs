//! Who may call what: every route against every kind of caller.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use colloquy::auth::PrincipalKind;
use jsonwebtoken::{EncodingKey, Header, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{SECRET, TestApp, api, spawn_app, token, token_of};

#[derive(Clone, Copy, Debug)]
enum Caller {
    Participant,
    Stranger,
    Owner,
    Admin,
    Service,
    /// Was a participant, then was removed.
    Removed,
    /// Owns an agent that takes part in the conversation: read-only.
    ReadOnlyOwner,
    /// Tried to register the conversation's members as its own agents.
    Squatter,
    NoToken,
    Expired,
    WrongSignature,
    AlgNone,
    NotYetValid,
    NulInSubject,
    ControlInSubject,
    KeyConfusion,
}

const CALLERS: [Caller; 16] = [
    Caller::Participant,
    Caller::Stranger,
    Caller::Owner,
    Caller::Admin,
    Caller::Service,
    Caller::Removed,
    Caller::ReadOnlyOwner,
    Caller::Squatter,
    Caller::NoToken,
    Caller::Expired,
    Caller::WrongSignature,
    Caller::AlgNone,
    Caller::NotYetValid,
    Caller::NulInSubject,
    Caller::ControlInSubject,
    Caller::KeyConfusion,
];

fn claims(sub: &str, exp: i64) -> Value {
    json!({ "sub": sub, "exp": exp, "kind": "user" })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn expired_token(sub: &str) -> String {
    encode(
        &Header::default(),
        &claims(sub, now() - 3600),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn wrongly_signed_token(sub: &str) -> String {
    encode(
        &Header::default(),
        &claims(sub, now() + 3600),
        &EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap()
}

pub fn unsigned_token(sub: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims(sub, now() + 3600).to_string());
    format!("{header}.{body}.")
}

/// Signed with the right secret, but with `nbf` an hour ahead.
pub fn not_yet_valid_token(sub: &str) -> String {
    encode(
        &Header::default(),
        &json!({ "sub": sub, "exp": now() + 7200, "nbf": now() + 3600 }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Correctly signed, with a subject Postgres could not store or a log could be forged with.
pub fn subject_token(sub: &str) -> String {
    encode(
        &Header::default(),
        &claims(sub, now() + 3600),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// An RS256 header over an HMAC signature: the classic key-confusion attempt.
pub fn key_confusion_token(sub: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let hs = subject_token(sub);
    let mut parts = hs.split('.');
    let _ = parts.next();
    format!(
        "{header}.{}.{}",
        parts.next().unwrap(),
        parts.next().unwrap()
    )
}

fn caller_token(caller: Caller) -> Option<String> {
    match caller {
        Caller::Removed => Some(token("rita")),
        Caller::ReadOnlyOwner => Some(token("olivia")),
        Caller::Squatter => Some(token("sam")),
        Caller::NotYetValid => Some(not_yet_valid_token("alice")),
        Caller::NulInSubject => Some(subject_token("ali\u{0}ce")),
        Caller::ControlInSubject => Some(subject_token("alice\nadmin")),
        Caller::KeyConfusion => Some(key_confusion_token("alice")),
        Caller::Participant => Some(token("bob")),
        Caller::Stranger => Some(token("mallory")),
        Caller::Owner => Some(token("alice")),
        Caller::Admin => Some(token_of("root", PrincipalKind::User, true)),
        Caller::Service => Some(token_of("bridge", PrincipalKind::Service, false)),
        Caller::NoToken => None,
        Caller::Expired => Some(expired_token("alice")),
        Caller::WrongSignature => Some(wrongly_signed_token("alice")),
        Caller::AlgNone => Some(unsigned_token("alice")),
    }
}

struct Route {
    name: &'static str,
    method: Method,
    path: fn(&str, &str) -> String,
    body: Option<fn() -> Value>,
    /// participant, stranger, owner, admin, service
    expect: [u16; 5],
    /// The owner of an agent in the conversation: reads, never writes.
    readonly_owner: u16,
}

fn routes() -> Vec<Route> {
    vec![
        Route {
            name: "get conversation",
            method: Method::GET,
            path: |c, _| api(&format!("/conversations/{c}")),
            body: None,
            expect: [200, 404, 200, 200, 200],
            readonly_owner: 200,
        },
        Route {
            name: "summary",
            method: Method::GET,
            path: |c, _| api(&format!("/conversations/{c}/summary")),
            body: None,
            expect: [200, 404, 200, 200, 200],
            readonly_owner: 200,
        },
        Route {
            name: "analytics",
            method: Method::GET,
            path: |c, _| api(&format!("/conversations/{c}/analytics?bucket=hour")),
            body: None,
            expect: [200, 404, 200, 200, 200],
            readonly_owner: 200,
        },
        Route {
            name: "list conversations",
            method: Method::GET,
            path: |_, _| api("/conversations"),
            body: None,
            expect: [200, 200, 200, 200, 200],
            readonly_owner: 200,
        },
        Route {
            name: "update conversation",
            method: Method::PUT,
            path: |c, _| api(&format!("/conversations/{c}")),
            body: Some(|| json!({"name": "n"})),
            expect: [403, 404, 200, 200, 200],
            readonly_owner: 403,
        },
        Route {
            name: "delete conversation",
            method: Method::DELETE,
            path: |c, _| api(&format!("/conversations/{c}")),
            body: None,
            expect: [403, 404, 200, 200, 200],
            readonly_owner: 403,
        },
        Route {
            name: "archive",
            method: Method::POST,
            path: |c, _| api(&format!("/conversations/{c}/archive")),
            body: None,
            expect: [403, 404, 200, 200, 200],
            readonly_owner: 403,
        },
        Route {
            name: "restore",
            method: Method::POST,
            path: |c, _| api(&format!("/conversations/{c}/restore")),
            body: None,
            expect: [403, 404, 200, 200, 200],
            readonly_owner: 403,
        },
        Route {
            name: "pin",
            method: Method::POST,
            path: |c, _| api(&format!("/conversations/{c}/pin")),
            body: None,
            expect: [200, 404, 200, 403, 403],
            readonly_owner: 403,
        },
        Route {
            name: "unpin",
            method: Method::POST,
            path: |c, _| api(&format!("/conversations/{c}/unpin")),
            body: None,
            expect: [200, 404, 200, 403, 403],
            readonly_owner: 403,
        },
        Route {
            name: "list participants",
            method: Method::GET,
            path: |c, _| api(&format!("/conversations/{c}/participants")),
            body: None,
            expect: [200, 404, 200, 200, 200],
            readonly_owner: 200,
        },
        Route {
            name: "add participant",
            method: Method::POST,
            path: |c, _| api(&format!("/conversations/{c}/participants")),
            body: Some(|| json!({"participant_id": "zed"})),
            expect: [403, 404, 201, 201, 201],
            readonly_owner: 403,
        },
        Route {
            name: "remove participant bob",
            method: Method::DELETE,
            path: |c, _| api(&format!("/conversations/{c}/participants/bob")),
            body: None,
            expect: [200, 404, 200, 200, 200],
            readonly_owner: 403,
        },
        Route {
            name: "history",
            method: Method::GET,
            path: |c, _| api(&format!("/messages/conversations/{c}")),
            body: None,
            expect: [200, 404, 200, 200, 200],
            readonly_owner: 200,
        },
        Route {
            name: "send",
            method: Method::POST,
            path: |c, _| api(&format!("/messages/conversations/{c}")),
            body: Some(|| json!({"text": "hi"})),
            expect: [201, 404, 201, 201, 201],
            readonly_owner: 403,
        },
        Route {
            name: "mark read",
            method: Method::POST,
            path: |c, _| api(&format!("/messages/conversations/{c}/mark-read")),
            body: Some(|| json!({})),
            expect: [200, 404, 200, 403, 403],
            readonly_owner: 403,
        },
        Route {
            name: "get message",
            method: Method::GET,
            path: |_, m| api(&format!("/messages/{m}")),
            body: None,
            expect: [200, 404, 200, 200, 200],
            readonly_owner: 200,
        },
        Route {
            name: "edit message",
            method: Method::PATCH,
            path: |_, m| api(&format!("/messages/{m}")),
            body: Some(|| json!({"text": "edited"})),
            expect: [403, 404, 200, 403, 200],
            readonly_owner: 403,
        },
        Route {
            name: "delete message",
            method: Method::DELETE,
            path: |_, m| api(&format!("/messages/{m}")),
            body: None,
            expect: [403, 404, 200, 200, 200],
            readonly_owner: 403,
        },
        Route {
            name: "react",
            method: Method::POST,
            path: |_, m| api(&format!("/messages/{m}/reactions")),
            body: Some(|| json!({"emoji": "🎉"})),
            expect: [201, 404, 201, 201, 201],
            readonly_owner: 403,
        },
    ]
}

async fn fixture(app: &TestApp) -> (String, String) {
    let (status, body) = app
        .post(
            &api("/conversations"),
            &token("alice"),
            json!({ "name": "matrix", "participants": ["bob", "rita",
                { "participant_id": "helper-bot", "participant_type": "agent" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let c = body["conversation_id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .request(
            Method::DELETE,
            &api(&format!("/conversations/{c}/participants/rita")),
            Some(&token("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let m = app.send("alice", &c, "owner's message").await;
    (c, m["id"].as_str().unwrap().to_owned())
}

/// Who owns which agent: olivia owns helper-bot (granted by an admin); sam's attempts to
/// claim the members' ids are refused.
async fn owners(app: &TestApp) {
    let admin = token_of("root", PrincipalKind::User, true);
    let (status, body) = app
        .post(
            &api("/agents"),
            &admin,
            json!({ "agent_id": "helper-bot", "owner_id": "olivia" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for id in ["alice", "bob", "helper-bot", "not-yet-used"] {
        let (status, body) = app
            .post(&api("/agents"), &token("sam"), json!({ "agent_id": id }))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "sam claiming {id}: {body}");
    }
}

#[tokio::test]
async fn every_route_answers_each_kind_of_caller_as_documented() {
    // Hundreds of calls per principal: the limiter is tested elsewhere.
    let app = crate::helpers::spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    owners(&app).await;
    let mut failures = vec![];
    for route in routes() {
        for (i, caller) in CALLERS.iter().enumerate() {
            let (c, m) = fixture(&app).await;
            let token = caller_token(*caller);
            let (status, body) = app
                .request(
                    route.method.clone(),
                    &(route.path)(&c, &m),
                    token.as_deref(),
                    route.body.map(|b| b()),
                )
                .await;
            let expected = match i {
                0..5 => route.expect[i],
                // A removed participant and a squatter are strangers now.
                5 | 7 => route.expect[1],
                6 => route.readonly_owner,
                _ => 401,
            };
            if status.as_u16() != expected {
                failures.push(format!(
                    "{} as {caller:?}: expected {expected}, got {status} {body}",
                    route.name
                ));
            }
            if expected == 401 && body["code"] != "UNAUTHORIZED" {
                failures.push(format!(
                    "{} as {caller:?}: 401 without the UNAUTHORIZED code: {body}",
                    route.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_bad_token_is_401_with_a_reason() {
    let app = spawn_app().await;
    for (token, reason) in [
        (expired_token("a"), "expired"),
        (wrongly_signed_token("a"), "signature"),
        (unsigned_token("a"), "unsigned"),
        ("garbage".to_owned(), "malformed"),
    ] {
        let (status, body) = app.get(&api("/conversations"), &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["message"].as_str().unwrap().contains(reason), "{body}");
        assert!(body["request_id"].is_string());
    }
    let (status, body) = app
        .request(Method::GET, &api("/conversations"), None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["success"], false);
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.jwt_issuer = Some("https://issuer".into());
        c.jwt_audience = Some("colloquy".into());
    })
    .await;
    let good = encode(
        &Header::default(),
        &json!({"sub": "a", "exp": now() + 600, "iss": "https://issuer", "aud": "colloquy"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (s, _) = app.get(&api("/conversations"), &good).await;
    assert_eq!(s, StatusCode::OK);
    for claims in [
        json!({"sub": "a", "exp": now() + 600, "iss": "https://other", "aud": "colloquy"}),
        json!({"sub": "a", "exp": now() + 600, "iss": "https://issuer", "aud": "other"}),
        json!({"sub": "a", "exp": now() + 600}),
    ] {
        let t = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let (s, _) = app.get(&api("/conversations"), &t).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{claims}");
    }
}
