//! Webhooks (contract §8): a real receiver on loopback verifies every signature; the
//! outbox is checked against what was committed, across receiver outages, dead letters,
//! replays and two server processes.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use colloquy::auth::PrincipalKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, api, spawn_app_with, token, token_of},
    hostile::Process,
    receiver::{Received, Receiver},
};

fn admin() -> String {
    token_of("root", PrincipalKind::User, true)
}

/// Registers an endpoint as admin; returns (id, secret).
async fn register(app: &TestApp, body: Value) -> (String, String) {
    let (status, reply) = app.post(&api("/webhooks"), &admin(), body).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    let data = &reply["data"];
    let secret = data["secret"].as_str().expect("secret").to_owned();
    assert!(secret.len() >= 32, "{secret}");
    (data["id"].as_str().expect("id").to_owned(), secret)
}

fn created_seqs(got: &[Received], conversation: &str) -> Vec<i64> {
    got.iter()
        .filter(|r| {
            r.body["type"] == "message.created" && r.body["conversation_id"] == conversation
        })
        .map(|r| r.body["data"]["seq"].as_i64().expect("seq"))
        .collect()
}

/// Every delivery id maps to one event, and each event came under one id only.
fn check_duplicates_share_ids(got: &[Received]) {
    let mut by_id: HashMap<&str, &Value> = HashMap::new();
    for r in got {
        if let Some(earlier) = by_id.insert(&r.delivery, &r.body) {
            assert_eq!(earlier["type"], r.body["type"], "one id, one event");
            assert_eq!(
                earlier["data"]["id"], r.body["data"]["id"],
                "one id, one event"
            );
        }
        assert_eq!(
            r.body["id"],
            r.delivery.as_str(),
            "body id is the delivery id"
        );
    }
}

fn lenient_config(c: &mut colloquy::config::Config) {
    c.webhook_allow_private = "true".into();
    c.webhook_max_backoff = Duration::from_millis(500);
    c.rate_limit_per_minute = 100_000;
}

#[tokio::test]
async fn every_committed_event_arrives_signed_and_messages_in_seq_order() {
    let app = spawn_app_with(lenient_config).await;
    let receiver = Receiver::start("127.0.0.1").await;
    let (hook, secret) = register(&app, json!({ "url": receiver.url(), "events": ["*"] })).await;
    receiver.set_secret(&secret);

    // The secret is shown once: never in reads.
    let (_, listed) = app.get(&api("/webhooks"), &admin()).await;
    assert!(!listed.to_string().contains(&secret));
    let (_, one) = app.get(&api(&format!("/webhooks/{hook}")), &admin()).await;
    assert!(one["data"]["secret"].is_null());

    let conv = app.conversation("alice", &["bob"]).await;
    // Two senders at once: the outbox follows the log's order.
    let sends = (0..30).map(|i| {
        let app = &app;
        let conv = conv.clone();
        async move {
            let who = if i % 2 == 0 { "alice" } else { "bob" };
            app.send(who, &conv, &format!("m{i}")).await
        }
    });
    let sent = futures::future::join_all(sends).await;
    // Bob's own sends moved his read horizon; alice's last one is unread for him.
    app.send("alice", &conv, "last").await;
    let first = sent[0]["id"].as_str().unwrap().to_owned();
    let alice = token("alice");
    let (s, _) = app
        .request(
            Method::PATCH,
            &api(&format!("/messages/{first}")),
            Some(&alice),
            Some(json!({"text": "edited"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .post(
            &api(&format!("/messages/{first}/reactions")),
            &token("bob"),
            json!({"emoji": "👍"}),
        )
        .await;
    assert!(s.is_success(), "{s}");
    let (s, _) = app
        .post(
            &api(&format!("/messages/conversations/{conv}/mark-read")),
            &token("bob"),
            json!({}),
        )
        .await;
    assert!(s.is_success(), "{s}");
    let (s, _) = app
        .post(
            &api(&format!("/conversations/{conv}/participants")),
            &alice,
            json!({"participant_id": "carol"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = app
        .request(
            Method::DELETE,
            &api(&format!("/conversations/{conv}/participants/carol")),
            Some(&alice),
            None,
        )
        .await;
    assert!(s.is_success(), "{s}");
    let (s, _) = app
        .request(
            Method::PUT,
            &api(&format!("/conversations/{conv}")),
            Some(&alice),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert!(s.is_success(), "{s}");
    let (s, _) = app
        .request(
            Method::DELETE,
            &api(&format!("/messages/{first}")),
            Some(&alice),
            None,
        )
        .await;
    assert!(s.is_success(), "{s}");

    let wanted = [
        "message.created",
        "message.updated",
        "reaction.updated",
        "messages.read",
        "participant.joined",
        "participant.left",
        "conversation.updated",
        "message.deleted",
    ];
    let got = receiver
        .wait_for(15_000, |got| {
            let types: HashSet<&str> = got.iter().filter_map(|r| r.body["type"].as_str()).collect();
            created_seqs(got, &conv).len() >= 31 && wanted.iter().all(|t| types.contains(t))
        })
        .await;
    assert!(
        got.iter().all(|r| r.signature_ok),
        "every signature verifies"
    );
    assert_eq!(
        created_seqs(&got, &conv),
        (1..=31).collect::<Vec<_>>(),
        "in seq order, once each"
    );
    let types: HashSet<&str> = got.iter().filter_map(|r| r.body["type"].as_str()).collect();
    for t in wanted {
        assert!(types.contains(t), "{t} delivered: {types:?}");
    }
    check_duplicates_share_ids(&got);
    // The body is the contract's: {id, type, conversation_id, occurred_at, data}; a
    // message's data is the message as the REST API shows it.
    let one = got
        .iter()
        .find(|r| r.body["type"] == "message.created")
        .unwrap();
    for key in ["id", "type", "conversation_id", "occurred_at", "data"] {
        assert!(!one.body[key].is_null(), "{key}: {}", one.body);
    }
    assert!(["alice", "bob"].contains(&one.body["data"]["sender_id"].as_str().unwrap_or_default()));
    assert_eq!(one.body["data"]["seq"], 1);
    // A message.created delivery's id is its message's; other events have their own.
    for r in &got {
        let same = r.body["id"] == r.body["data"]["id"];
        assert_eq!(same, r.body["type"] == "message.created", "{}", r.body);
    }
    // The participant the creation added (bob) was announced too, and carol's removal.
    let read = got
        .iter()
        .find(|r| r.body["type"] == "messages.read")
        .unwrap();
    assert_eq!(read.body["data"]["user_id"], "bob");
    assert_eq!(read.body["data"]["last_read_seq"], 31);

    // Queue is empty once all is delivered.
    let (_, deliveries) = app
        .get(&api(&format!("/webhooks/{hook}/deliveries")), &admin())
        .await;
    assert_eq!(deliveries["data"], json!([]), "{deliveries}");
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_down_mid_run_gets_everything_after_it_returns() {
    let app = spawn_app_with(lenient_config).await;
    let mut receiver = Receiver::start("127.0.0.1").await;
    let (_, secret) = register(
        &app,
        json!({ "url": receiver.url(), "events": ["message.created"] }),
    )
    .await;
    receiver.set_secret(&secret);
    let a = app.conversation("alice", &["bob"]).await;
    let b = app.conversation("bob", &["alice"]).await;

    let sender = {
        let app_base = app.base.clone();
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..60 {
                let conv = if i % 2 == 0 { &a } else { &b };
                let r = http
                    .post(format!(
                        "{app_base}{}",
                        api(&format!("/messages/conversations/{conv}"))
                    ))
                    .bearer_auth(token("alice"))
                    .json(&json!({ "text": format!("n{i}") }))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status(), StatusCode::CREATED);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    receiver.kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    receiver.restart().await;
    sender.await.expect("sender");

    let got = receiver
        .wait_for(20_000, |got| {
            created_seqs(got, &a).len() >= 30 && created_seqs(got, &b).len() >= 30
        })
        .await;
    assert!(got.iter().all(|r| r.signature_ok));
    check_duplicates_share_ids(&got);
    for conv in [&a, &b] {
        // In order; a repeat (the receiver died between taking one and answering) comes
        // with the same delivery id and in place.
        let mut seqs = created_seqs(&got, conv);
        let before = seqs.len();
        seqs.dedup();
        assert_eq!(
            seqs,
            (1..=30).collect::<Vec<_>>(),
            "none lost, in order ({before} received)"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn failing_deliveries_become_dead_letters_and_replay_with_the_same_id() {
    let app = spawn_app_with(|c| {
        lenient_config(c);
        c.webhook_retry_for = Duration::from_secs(2);
    })
    .await;
    let receiver = Receiver::start("127.0.0.1").await;
    receiver.fail_with(Some(503));
    let (hook, secret) = register(
        &app,
        json!({ "url": receiver.url(), "events": ["message.created"] }),
    )
    .await;
    receiver.set_secret(&secret);
    let conv = app.conversation("alice", &["bob"]).await;
    app.send("alice", &conv, "doomed").await;

    // Retried with backoff, then parked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let dead = loop {
        let (_, list) = app
            .get(
                &api(&format!("/webhooks/{hook}/deliveries?state=dead")),
                &admin(),
            )
            .await;
        if let Some(d) = list["data"].as_array().and_then(|a| a.first()).cloned() {
            break d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(dead["attempts"].as_i64().unwrap() >= 2, "{dead}");
    assert_eq!(dead["last_status"], 503);
    assert!(receiver.hits() >= 2);
    let (_, hook_view) = app.get(&api(&format!("/webhooks/{hook}")), &admin()).await;
    assert_eq!(hook_view["data"]["dead"], 1, "{hook_view}");
    assert!(
        hook_view["data"]["last_error"]
            .as_str()
            .unwrap()
            .contains("503")
    );

    // Later events are not held up by a dead letter.
    receiver.fail_with(None);
    app.send("alice", &conv, "after").await;
    let got = receiver.wait_for(5000, |g| !g.is_empty()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["data"]["text"], "after");

    // Replay: same delivery id; a pending (or unknown) one is not replayable.
    let id = dead["id"].as_str().unwrap();
    let (s, body) = app
        .post(
            &api(&format!("/webhooks/{hook}/deliveries/{id}/replay")),
            &admin(),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let got = receiver.wait_for(5000, |g| g.len() >= 2).await;
    assert_eq!(got[1].delivery, id);
    assert_eq!(got[1].body["data"]["text"], "doomed");
    assert!(got[1].signature_ok);
    let (s, body) = app
        .post(
            &api(&format!("/webhooks/{hook}/deliveries/{id}/replay")),
            &admin(),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    // Someone else's endpoint does not exist for them.
    let (s, _) = app
        .post(
            &api(&format!("/webhooks/{hook}/deliveries/{id}/replay")),
            &token("mallory"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn two_processes_share_the_outbox_without_sending_anything_twice() {
    let env = [("WEBHOOK_ALLOW_PRIVATE", "true")];
    let a = Process::start(&env).await;
    let b = Process::start_on(a.database_url.clone(), &env).await;
    let (app_a, app_b) = (a.app(), b.app());
    let receiver = Receiver::start("127.0.0.1").await;
    let (_, secret) = register(
        &app_a,
        json!({ "url": receiver.url(), "events": ["message.created"] }),
    )
    .await;
    receiver.set_secret(&secret);
    let mut convs = vec![];
    for _ in 0..4 {
        convs.push(app_a.conversation("alice", &["bob"]).await);
    }
    let sends = (0..200).map(|i| {
        let app = if i % 2 == 0 { &app_a } else { &app_b };
        let conv = convs[i % 4].clone();
        async move { app.send("alice", &conv, &format!("x{i}")).await }
    });
    futures::future::join_all(sends).await;
    let got = receiver.wait_for(20_000, |g| g.len() >= 200).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_after = receiver.received();
    assert_eq!(got_after.len(), got.len(), "nothing more arrives");
    let ids: HashSet<&str> = got_after.iter().map(|r| r.delivery.as_str()).collect();
    assert_eq!(ids.len(), 200, "each delivery once");
    assert_eq!(got_after.len(), 200, "no repeats");
    for conv in &convs {
        assert_eq!(created_seqs(&got_after, conv), (1..=50).collect::<Vec<_>>());
    }
    assert!(got_after.iter().all(|r| r.signature_ok));
    for p in [a, b] {
        assert_eq!(p.error_lines().await, Vec::<String>::new());
    }
}

#[tokio::test]
async fn private_targets_are_refused_after_resolution_and_on_redirects() {
    // Only 127.0.0.2 is allowed: the receiver lives there; 127.0.0.1 stays refused.
    let app = spawn_app_with(|c| {
        c.webhook_allow_private = "127.0.0.2/32".into();
        c.webhook_max_backoff = Duration::from_millis(500);
    })
    .await;
    let inside = Receiver::start("127.0.0.1").await;
    for url in [
        inside.url(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[::1]/hook".into(),
        "http://2130706433/hook".into(),
        "http://localhost/hook".into(),
        "http://colloquy-private.test/hook".into(),
        "ftp://example.com/".into(),
        "not a url".into(),
    ] {
        let (s, body) = app
            .post(
                &api("/webhooks"),
                &admin(),
                json!({ "url": url, "events": ["*"] }),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(body["code"], "VALIDATION_ERROR");
        assert!(
            body["message"].as_str().unwrap().starts_with("url:"),
            "{body}"
        );
    }
    // `colloquy-private.test` is in /etc/hosts as 10.11.12.13 (scripts/test puts it
    // there): the refusal above was after resolution, not a failed lookup.
    let resolved: Vec<_> = tokio::net::lookup_host("colloquy-private.test:80")
        .await
        .expect("scripts/test maps colloquy-private.test in /etc/hosts")
        .collect();
    assert!(
        resolved
            .iter()
            .all(|a| a.ip().to_string().starts_with("10.")),
        "{resolved:?}"
    );

    // An allowed endpoint that redirects to a refused one: the hop is not followed.
    let outside = Receiver::start("127.0.0.2").await;
    outside.redirect_to(&inside.url());
    let (hook, _) = register(
        &app,
        json!({ "url": outside.url(), "events": ["message.created"] }),
    )
    .await;
    let conv = app.conversation("alice", &[]).await;
    app.send("alice", &conv, "hi").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = app
            .get(&api(&format!("/webhooks/{hook}/deliveries")), &admin())
            .await;
        let error = list["data"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if error.contains("redirect") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(outside.hits() >= 1);
    assert_eq!(inside.hits(), 0, "the loopback target was never reached");
    app.stop().await;
}

#[tokio::test]
async fn only_admins_services_and_agent_owners_register_and_agent_filters_follow_membership() {
    let app = spawn_app_with(lenient_config).await;
    let receiver = Receiver::start("127.0.0.1").await;
    // A plain user may not follow everything, nor someone else's agent.
    let (s, _) = app
        .post(
            &api("/webhooks"),
            &token("mallory"),
            json!({ "url": receiver.url(), "events": ["*"] }),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let owner = token("olivia");
    let (s, body) = app
        .post(
            &api("/agents"),
            &admin(),
            json!({ "agent_id": "helper", "owner_id": "olivia" }),
        )
        .await;
    assert!(s.is_success(), "{body}");
    let (s, _) = app
        .post(
            &api("/webhooks"),
            &token("mallory"),
            json!({ "url": receiver.url(), "events": ["*"], "agent_id": "helper" }),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Bad input: unknown event type, empty list.
    for events in [json!(["message.exploded"]), json!([])] {
        let (s, body) = app
            .post(
                &api("/webhooks"),
                &owner,
                json!({ "url": receiver.url(), "events": events, "agent_id": "helper" }),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    }
    let (s, reply) = app
        .post(
            &api("/webhooks"),
            &owner,
            json!({ "url": receiver.url(), "events": ["message.created"], "agent_id": "helper" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{reply}");
    let hook = reply["data"]["id"].as_str().unwrap().to_owned();
    receiver.set_secret(reply["data"]["secret"].as_str().unwrap());
    // Another user cannot see, change or delete it.
    for (method, path) in [
        (Method::GET, format!("/webhooks/{hook}")),
        (Method::DELETE, format!("/webhooks/{hook}")),
        (Method::POST, format!("/webhooks/{hook}/rotate-secret")),
    ] {
        let (s, _) = app
            .request(method, &api(&path), Some(&token("mallory")), None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }

    // Someone whose id merely equals the agent's, added as a user, exposes nothing.
    let with_user_named_helper = app.conversation("alice", &["helper"]).await;
    let (s, body) = app
        .post(&api("/conversations"), &token("alice"), json!({ "participants": [{ "participant_id": "helper", "participant_type": "agent" }] }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let with_agent = body["conversation_id"].as_str().unwrap().to_owned();
    app.send("alice", &with_user_named_helper, "not for the owner")
        .await;
    let without = app.conversation("alice", &["bob"]).await;
    app.send("alice", &with_agent, "for the agent").await;
    app.send("alice", &without, "private").await;
    let got = receiver.wait_for(5000, |g| !g.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = if got.len() == 1 {
        receiver.received()
    } else {
        got
    };
    assert_eq!(got.len(), 1, "only the agent's conversation");
    assert_eq!(got[0].body["data"]["text"], "for the agent");

    // Once the agent leaves, its conversation's events stop.
    let (s, _) = app
        .request(
            Method::DELETE,
            &api(&format!("/conversations/{with_agent}/participants/helper")),
            Some(&token("alice")),
            None,
        )
        .await;
    assert!(s.is_success());
    app.send("alice", &with_agent, "after it left").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.received().len(), 1);

    // Rotation: the new secret signs from now on.
    let (s, rotated) = app
        .post(
            &api(&format!("/webhooks/{hook}/rotate-secret")),
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    receiver.set_secret(rotated["data"]["secret"].as_str().unwrap());
    let (s, _) = app
        .post(
            &api(&format!("/conversations/{with_agent}/participants")),
            &token("alice"),
            json!({"participant_id": "helper", "participant_type": "agent"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    app.send("alice", &with_agent, "back again").await;
    let got = receiver.wait_for(5000, |g| g.len() >= 2).await;
    assert_eq!(got[1].body["data"]["text"], "back again");
    assert!(got[1].signature_ok, "signed with the rotated secret");

    // The agent changing hands stops its former owner's endpoint.
    let (s, _) = app
        .post(
            &api("/agents"),
            &admin(),
            json!({ "agent_id": "helper", "owner_id": "oscar" }),
        )
        .await;
    assert!(s.is_success());
    let (_, view) = app.get(&api(&format!("/webhooks/{hook}")), &owner).await;
    assert_eq!(view["data"]["active"], false, "{view}");
    app.stop().await;
}

#[tokio::test]
async fn a_batching_endpoint_gets_one_conversations_events_in_order_in_signed_arrays() {
    let app = spawn_app_with(lenient_config).await;
    let receiver = Receiver::start("127.0.0.1").await;
    for bad in [json!(0), json!(101), json!(-3), json!("10"), json!(1.5)] {
        let (status, reply) = app
            .post(
                &api("/webhooks"),
                &admin(),
                json!({ "url": receiver.url(), "events": ["*"], "batch_size": bad }),
            )
            .await;
        assert!(
            [StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY].contains(&status),
            "{bad}: {status} {reply}"
        );
        assert_eq!(reply["code"], "VALIDATION_ERROR", "{reply}");
    }
    let (hook, secret) = register(
        &app,
        json!({
            "url": receiver.url(),
            "events": ["message.created", "message.updated"],
            // A whole number written as a float is a whole number (JSON Schema agrees).
            "batch_size": 10.0,
        }),
    )
    .await;
    receiver.set_secret(&secret);
    let (_, one) = app.get(&api(&format!("/webhooks/{hook}")), &admin()).await;
    assert_eq!(one["data"]["batch_size"], 10);
    // The first request fails: its events come again (same ids, in place) after the
    // backoff, by which time the rest have queued up behind them.
    receiver.fail_next(1);
    let a = app.conversation("alice", &["bob"]).await;
    let b = app.conversation("bob", &["alice"]).await;
    let sends = (0..50).map(|i| {
        let app = &app;
        let (a, b) = (a.clone(), b.clone());
        async move {
            let conv = if i % 2 == 0 { a } else { b };
            app.send("alice", &conv, &format!("b{i}")).await
        }
    });
    let sent = futures::future::join_all(sends).await;
    // An edit: message.updated shows it; message.created shows the message as committed
    // or (read back after a restart) as it is now.
    let first = sent[0]["id"].as_str().unwrap().to_owned();
    let (s, _) = app
        .request(
            Method::PATCH,
            &api(&format!("/messages/{first}")),
            Some(&token("alice")),
            Some(json!({"text": "edited"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    let dedup = |got: &[Received], conv: &str| {
        let mut seqs = created_seqs(got, conv);
        seqs.dedup();
        seqs
    };
    let got = receiver
        .wait_for(20_000, |got| {
            dedup(got, &a).len() >= 25
                && dedup(got, &b).len() >= 25
                && got.iter().any(|r| r.body["type"] == "message.updated")
        })
        .await;
    assert!(got.iter().all(|r| r.signature_ok), "each array is signed");
    check_duplicates_share_ids(&got);
    for conv in [&a, &b] {
        assert_eq!(dedup(&got, conv), (1..=25).collect::<Vec<_>>(), "in order");
    }
    // Each request: one conversation's events, at most 10, announced in X-Colloquy-Batch.
    let mut requests: HashMap<usize, Vec<&Received>> = HashMap::new();
    for r in &got {
        requests.entry(r.request).or_default().push(r);
    }
    for events in requests.values() {
        let n = events.len();
        assert!(n <= 10, "{n} events in one request");
        assert!(events.iter().all(|e| e.batch == Some(n)), "arrays only");
        assert!(
            events
                .iter()
                .all(|e| e.batch_header.as_deref() == Some(n.to_string().as_str()))
        );
        let conv = &events[0].body["conversation_id"];
        assert!(events.iter().all(|e| &e.body["conversation_id"] == conv));
    }
    assert!(
        requests.values().any(|events| events.len() > 1),
        "events that waited went together"
    );
    let created = got
        .iter()
        .find(|r| r.body["type"] == "message.created" && r.body["data"]["id"] == first.as_str())
        .expect("created");
    assert!(
        ["b0", "edited"].contains(&created.body["data"]["text"].as_str().unwrap_or_default()),
        "{}",
        created.body
    );
    let updated = got
        .iter()
        .find(|r| r.body["type"] == "message.updated")
        .expect("updated");
    assert_eq!(updated.body["data"]["text"], "edited");
    assert_eq!(updated.body["data"]["id"], first.as_str());
    // The REST API's shape: the same fields as GET /messages/{id}.
    let second = sent[2]["id"].as_str().unwrap();
    let (_, rest) = app
        .get(&api(&format!("/messages/{second}")), &token("alice"))
        .await;
    let delivered = got
        .iter()
        .find(|r| r.body["type"] == "message.created" && r.body["data"]["id"] == second)
        .expect("delivered");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&delivered.body["data"]), keys(&rest["data"]), "{rest}");
    assert_eq!(delivered.body["data"]["text"], rest["data"]["text"]);

    // Back to one event per request: the body is the event itself again.
    let path = api(&format!("/webhooks/{hook}"));
    for bad in [json!(0), json!(1000), json!("x")] {
        let (s, reply) = app
            .request(
                Method::PATCH,
                &path,
                Some(&admin()),
                Some(json!({ "batch_size": bad })),
            )
            .await;
        assert!(
            [StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY].contains(&s),
            "{bad}: {s} {reply}"
        );
        assert_eq!(reply["code"], "VALIDATION_ERROR", "{reply}");
    }
    let (s, reply) = app
        .request(
            Method::PATCH,
            &path,
            Some(&admin()),
            Some(json!({ "batch_size": 1 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    assert_eq!(reply["data"]["batch_size"], 1);
    let last = app.send("bob", &a, "single").await;
    let got = receiver
        .wait_for(10_000, |got| {
            got.iter().any(|r| r.body["data"]["id"] == last["id"])
        })
        .await;
    let single = got
        .iter()
        .find(|r| r.body["data"]["id"] == last["id"])
        .expect("delivered");
    assert_eq!(single.batch, None);
    assert_eq!(
        single.delivery,
        single.body["id"].as_str().unwrap_or_default()
    );
    assert_eq!(single.body["data"]["text"], "single");
    app.stop().await;
}
