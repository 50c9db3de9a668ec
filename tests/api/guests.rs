//! Anonymous guest sessions on `/ws` (contract §5, seed 004).

use std::time::Duration;

use serde_json::json;

use crate::helpers::{api, spawn_app, spawn_app_with, token, token_of};
use crate::sio::Ws;

#[tokio::test]
async fn a_guest_talks_to_the_default_bot_only_and_guests_cannot_see_each_other() {
    let app = spawn_app_with(|c| c.guest_bot_id = Some("support-bot".into())).await;
    let url = format!("ws://{}/ws", app.addr);
    let mut one = Ws::connect_url(&url).await.expect("a guest session");
    let hello = one.next("status", 2000).await.unwrap();
    assert_eq!(hello["guest"], true);
    let session = hello["session_id"].as_str().unwrap().to_owned();
    let guest = hello["user_id"].as_str().unwrap().to_owned();
    assert!(guest.starts_with("guest-"));

    // The seed's frame.
    one.send(json!({ "type": "message", "content": "Hello", "session_id": session }))
        .await;
    let echo = one.next("message", 3000).await.expect("stored");
    assert_eq!(echo["content"], "Hello");
    // The bot sees the conversation and answers over v1.
    let bot = token_of("support-bot", colloquy::auth::PrincipalKind::Agent, false);
    let (_, list) = app.get(&api("/conversations"), &bot).await;
    assert_eq!(list["data"]["total"], 1);
    app.post(
        &api(&format!("/messages/conversations/{session}")),
        &bot,
        json!({ "text": "Hi! How can I help you?" }),
    )
    .await;
    let reply = one.next("message", 3000).await.expect("the bot's reply");
    assert_eq!(reply["sender"], "bot");
    assert_eq!(reply["sender_id"], "support-bot");

    // A second guest gets its own session and sees none of the first's.
    let mut two = Ws::connect_url(&url).await.expect("another guest");
    let hello2 = two.next("status", 2000).await.unwrap();
    assert_ne!(hello2["session_id"], session.as_str());
    two.send(json!({ "type": "message", "content": "sneaky", "session_id": session }))
        .await;
    let refused = two.next("error", 2000).await.expect("refused");
    assert_eq!(refused["code"], "FORBIDDEN");
    assert!(
        one.next("message", 500).await.is_none(),
        "nothing reached the first session"
    );
    // A named session on connect does not help either: it is a new session.
    let mut three = Ws::connect_url(&format!("{url}?session_id={session}"))
        .await
        .unwrap();
    let hello3 = three.next("status", 2000).await.unwrap();
    assert_ne!(hello3["session_id"], session.as_str());
    // A user with a token still gets the usual rules (no guest shortcut).
    assert_eq!(
        crate::sio::Ws::connect(&app, &session, &token("mallory"))
            .await
            .err(),
        Some(4404)
    );
}

#[tokio::test]
async fn without_guest_bot_id_a_tokenless_ws_is_refused() {
    let app = spawn_app().await;
    let err = Ws::connect_url(&format!("ws://{}/ws?session_id=x", app.addr))
        .await
        .expect_err("refused");
    assert_eq!(err.0, 4401);
}

#[tokio::test]
async fn idle_guest_sessions_are_purged_with_their_messages() {
    let app = spawn_app_with(|c| {
        c.guest_bot_id = Some("support-bot".into());
        c.guest_session_ttl = Duration::from_secs(2);
    })
    .await;
    let url = format!("ws://{}/ws", app.addr);
    let mut ws = Ws::connect_url(&url).await.unwrap();
    let session = ws.next("status", 2000).await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.send(json!({ "type": "message", "content": "soon gone" }))
        .await;
    ws.next("message", 3000).await.expect("stored");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Idle for the TTL: the session, its conversation and messages go; the socket closes.
    let closed = ws.closed(6000).await.expect("closed when purged");
    assert_eq!(closed.0, 4404, "{closed:?}");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let (c,): (i64,) = sqlx::query_as("SELECT count(*) FROM conversations WHERE id::text = $1")
        .bind(&session)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(c, 0);
}

#[tokio::test]
async fn guests_are_limited_per_connection_and_per_address() {
    let app = spawn_app_with(|c| c.guest_bot_id = Some("support-bot".into())).await;
    let url = format!("ws://{}/ws", app.addr);
    let mut ws = Ws::connect_url(&url).await.unwrap();
    ws.next("status", 2000).await.unwrap();
    let mut limited = false;
    for i in 0..25 {
        ws.send(json!({ "type": "message", "content": format!("m{i}") }))
            .await;
    }
    for _ in 0..25 {
        if let Some(e) = ws.next("error", 300).await
            && e["code"] == "RATE_LIMITED"
        {
            limited = true;
            break;
        }
    }
    assert!(limited, "a flood from one guest is refused");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(n <= 20, "{n}");
    // New sessions per address are bounded too.
    let mut refused = None;
    for _ in 0..15 {
        if let Err(e) = Ws::connect_url(&url).await {
            refused = Some(e);
            break;
        }
    }
    let (code, frame) = refused.expect("session creation is limited per address");
    assert_eq!(code, 4429, "{frame}");
}
