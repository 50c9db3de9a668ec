//! Outside-in replay of the seed 000 web client (`seeds/000_…`, §3 and §5): its
//! `ConversationsAPI` requests byte for byte (paths, trailing slashes, query strings as
//! `URLSearchParams` writes them, bodies as `JSON.stringify` writes them, and the
//! `Content-Type: application/json` its `fetch` wrapper puts on every request, GETs and
//! body-less POSTs included), each answer checked against the response types the seed
//! declares; and its SocketIOManager driven with the official Node socket.io-client.

use std::process::Command;

use colloquy::auth::PrincipalKind;
use reqwest::{Method, StatusCode, header::CONTENT_TYPE};
use serde_json::Value;

use crate::helpers::{SECRET, TestApp, api, spawn_app, spawn_app_with, token, token_of};

/// `getEntityId()`: the user's id, a UUID kept in localStorage.
const ENTITY_ID: &str = "5f0c4e1a-3b9d-4c7e-8a21-9d6f2b7c1e04";
/// The agent the chat page is for.
const AGENT_ID: &str = "c3bd776c-4465-437f-9c7a-bf94dfba78d9";
/// `WorldManager.generateRoomId(agentId)`.
const ROOM_ID: &str = "8a6b0d52-2f3e-4e4c-9b1f-6c2d7e8f9a10";

/// `ConversationManager.getOrCreateConversation(entityId, agentId, {agentAddress,
/// namespace: "/", roomId})` → `ConversationsAPI.createConversation`.
const CREATE_CONVERSATION: &str = r#"{"platform_conversation_id":"8a6b0d52-2f3e-4e4c-9b1f-6c2d7e8f9a10","platform":"websocket","creator_id":"5f0c4e1a-3b9d-4c7e-8a21-9d6f2b7c1e04","participants":["5f0c4e1a-3b9d-4c7e-8a21-9d6f2b7c1e04","c3bd776c-4465-437f-9c7a-bf94dfba78d9"],"name":"Chat with c3bd776c-4465-437f-9c7a-bf94dfba78d9","metadata":{"agentAddress":"0x2546BcD3c84621e976D8185a91A922aE77ECEc30","namespace":"/","roomId":"8a6b0d52-2f3e-4e4c-9b1f-6c2d7e8f9a10"}}"#;

/// `ConversationsAPI.markMessagesRead(conversationId, entityId)`.
const MARK_READ: &str = r#"{"user_id":"5f0c4e1a-3b9d-4c7e-8a21-9d6f2b7c1e04"}"#;

/// §3.2 / §5.4 `ConversationResponse`.
const CONVERSATION_RESPONSE: &[(&str, &str)] = &[
    ("id", "string"),
    ("name", "string|null"),
    ("description", "string|null"),
    ("platform", "string"),
    ("platform_conversation_id", "string"),
    ("platform_metadata", "object"),
    ("participants", "string[]"),
    ("created_by", "string|null"),
    ("message_count", "number"),
    ("last_message_at", "string|null"),
    ("is_active", "boolean"),
    ("archived_at", "string|null"),
    ("metadata", "object"),
    ("tags", "string[]"),
    ("created_at", "string"),
    ("updated_at", "string"),
];

/// §3.3 / §5.4 `MessageResponse`.
const MESSAGE_RESPONSE: &[(&str, &str)] = &[
    ("id", "string"),
    ("conversation_id", "string"),
    ("platform_context", "object"),
    ("text", "string"),
    ("attachments", "array"),
    ("sender_id", "string"),
    ("sender_name", "string"),
    ("sender_type", "string"),
    ("status", "string"),
    ("metadata", "object"),
    ("thread_id", "string|null"),
    ("reaction_count", "number"),
    ("is_edited", "boolean"),
    ("edit_history", "object[]"),
    ("created_at", "string"),
    ("updated_at", "string"),
    ("deleted_at", "string|null"),
];

/// §3.3 / §5.4 `PlatformContextResponse`.
const PLATFORM_CONTEXT_RESPONSE: &[(&str, &str)] = &[
    ("platform", "string"),
    ("room_id", "string|null"),
    ("channel_id", "string|null"),
    ("thread_id", "string|null"),
    ("server_id", "string|null"),
    ("metadata", "object"),
];

/// §5.4 `AttachmentResponse` (its optional fields carry no `| null`).
const ATTACHMENT_RESPONSE: &[(&str, &str)] = &[
    ("id", "string"),
    ("type", "string"),
    ("url", "string"),
    ("filename", "string|absent"),
    ("size", "number|absent"),
    ("metadata", "object|absent"),
];

/// §3.4 / §5.4 `PaginatedMessagesResponse` (items checked one by one).
const PAGINATED_MESSAGES_RESPONSE: &[(&str, &str)] = &[
    ("items", "object[]"),
    ("total", "number"),
    ("limit", "number"),
    ("offset", "number"),
    ("has_more", "boolean"),
];

const PLATFORMS: &[&str] = &["websocket", "telegram", "discord", "x", "whatsapp"];
const SENDER_TYPES: &[&str] = &["user", "agent", "system"];
const MESSAGE_STATUSES: &[&str] = &["sending", "sent", "delivered", "read", "failed"];

fn has_type(value: Option<&Value>, ty: &str) -> bool {
    ty.split('|').any(|t| match (t, value) {
        ("absent", None) => true,
        (_, None) => false,
        ("null", Some(v)) => v.is_null(),
        ("string", Some(v)) => v.is_string(),
        ("number", Some(v)) => v.is_number(),
        ("boolean", Some(v)) => v.is_boolean(),
        ("object", Some(v)) => v.is_object(),
        ("array", Some(v)) => v.is_array(),
        ("string[]", Some(Value::Array(items))) => items.iter().all(Value::is_string),
        ("object[]", Some(Value::Array(items))) => items.iter().all(Value::is_object),
        _ => false,
    })
}

/// Every field the seed's type declares is there with its JSON type (`a|b` for unions;
/// `absent` where the type makes the field optional without `| null`).
fn assert_shape(value: &Value, fields: &[(&str, &str)]) {
    assert!(value.is_object(), "expected an object, got {value}");
    for (name, ty) in fields {
        let field = value.get(name);
        assert!(
            has_type(field, ty),
            "`{name}` should be {ty}, got {} in {value}",
            field.map_or("nothing".to_owned(), Value::to_string)
        );
    }
}

/// An ISO 8601 timestamp `new Date(…)` parses.
fn assert_timestamp(value: &Value, field: &str) {
    if let Some(s) = value[field].as_str() {
        assert!(
            chrono::DateTime::parse_from_rfc3339(s).is_ok(),
            "`{field}` is not ISO 8601: {s}"
        );
    }
}

fn assert_one_of(value: &Value, field: &str, allowed: &[&str]) {
    let v = value[field].as_str().unwrap_or_default();
    assert!(
        allowed.contains(&v),
        "`{field}` = {v:?} is none of {allowed:?} in {value}"
    );
}

fn assert_conversation_response(c: &Value) {
    assert_shape(c, CONVERSATION_RESPONSE);
    assert_one_of(c, "platform", PLATFORMS);
    for field in ["last_message_at", "archived_at", "created_at", "updated_at"] {
        assert_timestamp(c, field);
    }
}

fn assert_message_response(m: &Value) {
    assert_shape(m, MESSAGE_RESPONSE);
    assert_shape(&m["platform_context"], PLATFORM_CONTEXT_RESPONSE);
    assert_one_of(&m["platform_context"], "platform", PLATFORMS);
    assert_one_of(m, "sender_type", SENDER_TYPES);
    assert_one_of(m, "status", MESSAGE_STATUSES);
    for a in m["attachments"].as_array().into_iter().flatten() {
        assert_shape(a, ATTACHMENT_RESPONSE);
    }
    for field in ["created_at", "updated_at", "deleted_at"] {
        assert_timestamp(m, field);
    }
}

fn assert_paginated_messages_response(page: &Value) {
    assert_shape(page, PAGINATED_MESSAGES_RESPONSE);
    for m in page["items"].as_array().into_iter().flatten() {
        assert_message_response(m);
    }
}

/// `ConversationsAPI.fetch` (§7.1 version): the bearer token, `Content-Type:
/// application/json` on every request, and the body exactly as given.
async fn seed_fetch(
    app: &TestApp,
    token: &str,
    method: Method,
    endpoint: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let req = app
        .http
        .request(method.clone(), format!("{}{endpoint}", app.base))
        .bearer_auth(token)
        .header(CONTENT_TYPE, "application/json");
    // A browser's body-less POST still says `Content-Length: 0`.
    let req = match body {
        Some(b) => req.body(b.to_owned()),
        None if method == Method::POST => req.body(""),
        None => req,
    };
    let res = req.send().await.expect("request");
    let status = res.status();
    let text = res.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// What the seed's `fetch` demands before it unwraps `data`: a 2xx answer.
fn assert_ok(status: StatusCode, body: &Value) {
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(body["success"], true, "{body}");
}

/// `ConversationManager.getOrCreateConversation` for a fresh browser: the seed's create.
async fn seed_create(app: &TestApp) -> String {
    let (status, body) = seed_fetch(
        app,
        &token(ENTITY_ID),
        Method::POST,
        &api("/conversations/"),
        Some(CREATE_CONVERSATION),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The seed keeps `response.data.id` in localStorage.
    body["data"]["id"].as_str().expect("data.id").to_owned()
}

fn agent_token() -> String {
    token_of(AGENT_ID, PrincipalKind::Agent, false)
}

fn participant_ids(conversation: &Value) -> Vec<&str> {
    conversation["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

async fn participant_role(app: &TestApp, cid: &str, who: &str) -> Value {
    let (status, body) = app
        .get(
            &api(&format!("/conversations/{cid}/participants")),
            &token(who),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]
        .as_array()
        .expect("participant list")
        .iter()
        .find(|p| p["participant_id"] == who)
        .map(|p| p["role"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn seed_client_create_conversation_with_creator_id_is_accepted() {
    let app = spawn_app().await;
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::POST,
        &api("/conversations/"),
        Some(CREATE_CONVERSATION),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["success"], true);
    let c = &body["data"];
    assert_conversation_response(c);
    assert_eq!(c["platform"], "websocket");
    assert_eq!(c["platform_conversation_id"], ROOM_ID);
    assert_eq!(c["name"], format!("Chat with {AGENT_ID}"));
    assert_eq!(c["created_by"], ENTITY_ID);
    assert_eq!(c["message_count"], 0);
    assert_eq!(c["is_active"], true);
    assert_eq!(
        c["metadata"]["agentAddress"],
        "0x2546BcD3c84621e976D8185a91A922aE77ECEc30"
    );
    assert_eq!(c["metadata"]["namespace"], "/");
    assert_eq!(c["metadata"]["roomId"], ROOM_ID);
    let mut ids = participant_ids(c);
    ids.sort_unstable();
    let mut expected = [ENTITY_ID, AGENT_ID];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let cid = c["id"].as_str().unwrap();
    assert_eq!(participant_role(&app, cid, ENTITY_ID).await, "owner");
}

#[tokio::test]
async fn seed_client_create_envelope_also_carries_conversation_id_and_the_same_conversation() {
    let app = spawn_app().await;
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::POST,
        &api("/conversations/"),
        Some(CREATE_CONVERSATION),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Contract §3: create also carries `conversation_id` and `conversation` (same object
    // as `data`); the seed's `ConversationOperationResponse` names `conversation_id`.
    assert_eq!(body["conversation_id"], body["data"]["id"]);
    assert_conversation_response(&body["conversation"]);
    assert_eq!(body["conversation"], body["data"]);
}

#[tokio::test]
async fn seed_client_create_conversation_with_creator_id_naming_someone_else_is_forbidden() {
    let app = spawn_app().await;
    // Another browser's entity id, e.g. copied from a shared link.
    let (status, body) = seed_fetch(
        &app,
        &token("0d9c2b7e-61a4-4f3b-8e52-7a1c9f0b3d21"),
        Method::POST,
        &api("/conversations/"),
        Some(CREATE_CONVERSATION),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "FORBIDDEN");
    assert!(
        body["message"].is_string(),
        "the seed throws error.message: {body}"
    );
    // Nothing was created: the named creator has no conversation.
    let (status, list) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::GET,
        &api(&format!(
            "/conversations/?participant_id={ENTITY_ID}&limit=100"
        )),
        None,
    )
    .await;
    assert_ok(status, &list);
    assert_eq!(list["data"]["total"], 0, "{list}");
}

#[tokio::test]
async fn seed_client_service_creates_on_behalf_of_creator_id_who_becomes_owner() {
    let app = spawn_app().await;
    let bridge = token_of("web-bridge", PrincipalKind::Service, false);
    let (status, body) = seed_fetch(
        &app,
        &bridge,
        Method::POST,
        &api("/conversations/"),
        Some(CREATE_CONVERSATION),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let c = &body["data"];
    assert_conversation_response(c);
    assert_eq!(c["created_by"], ENTITY_ID, "{body}");
    let cid = c["id"].as_str().unwrap();
    assert_eq!(participant_role(&app, cid, ENTITY_ID).await, "owner");
    // The creator reads it with their own token, as the seed does on the next page load.
    let (status, got) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::GET,
        &api(&format!("/conversations/{cid}")),
        None,
    )
    .await;
    assert_ok(status, &got);
    assert_eq!(got["data"]["created_by"], ENTITY_ID);
}

#[tokio::test]
async fn seed_client_admin_creates_on_behalf_of_creator_id_who_becomes_owner() {
    let app = spawn_app().await;
    let admin = token_of("ops-admin", PrincipalKind::User, true);
    let (status, body) = seed_fetch(
        &app,
        &admin,
        Method::POST,
        &api("/conversations/"),
        Some(CREATE_CONVERSATION),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_conversation_response(&body["data"]);
    assert_eq!(body["data"]["created_by"], ENTITY_ID, "{body}");
    let cid = body["data"]["id"].as_str().unwrap();
    assert_eq!(participant_role(&app, cid, ENTITY_ID).await, "owner");
}

#[tokio::test]
async fn seed_client_create_conversation_with_client_chosen_conversation_id_uses_it() {
    let app = spawn_app().await;
    // Every `CreateConversationRequest` field (§3.1 / §5.4), `conversation_id` included.
    let request = r#"{"platform_conversation_id":"3e1f7a9c-5b2d-4c8e-a6f0-1d9b7e3c5a24","conversation_id":"018f6b2e-4c1a-7d3e-9b5f-2a8c6e0d4f17","name":"Chat with c3bd776c-4465-437f-9c7a-bf94dfba78d9","platform":"websocket","creator_id":"5f0c4e1a-3b9d-4c7e-8a21-9d6f2b7c1e04","participants":["5f0c4e1a-3b9d-4c7e-8a21-9d6f2b7c1e04","c3bd776c-4465-437f-9c7a-bf94dfba78d9"],"metadata":{"namespace":"/","roomId":"3e1f7a9c-5b2d-4c8e-a6f0-1d9b7e3c5a24"}}"#;
    let chosen = "018f6b2e-4c1a-7d3e-9b5f-2a8c6e0d4f17";
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::POST,
        &api("/conversations/"),
        Some(request),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_conversation_response(&body["data"]);
    assert_eq!(body["data"]["id"], chosen, "{body}");
    assert_eq!(body["conversation_id"], chosen, "{body}");
    let (status, got) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::GET,
        &api(&format!("/conversations/{chosen}")),
        None,
    )
    .await;
    assert_ok(status, &got);
    assert_conversation_response(&got["data"]);
    assert_eq!(
        got["data"]["platform_conversation_id"],
        "3e1f7a9c-5b2d-4c8e-a6f0-1d9b7e3c5a24"
    );
}

#[tokio::test]
async fn seed_client_create_conversation_with_null_optional_fields_is_accepted() {
    let app = spawn_app().await;
    // §3.1: every optional field is `T | null`; a null `conversation_id` is "auto-generated".
    let request = r#"{"platform_conversation_id":"5c2a9e71-0b4f-4d8a-93e6-b17f2d4c8a05","conversation_id":null,"name":null,"platform":"websocket","creator_id":null,"participants":null,"metadata":null}"#;
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::POST,
        &api("/conversations/"),
        Some(request),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let c = &body["data"];
    assert_conversation_response(c);
    assert!(
        uuid::Uuid::parse_str(c["id"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    assert_eq!(c["created_by"], ENTITY_ID);
    assert_eq!(participant_ids(c), [ENTITY_ID]);
}

#[tokio::test]
async fn seed_client_reload_reuses_the_stored_conversation_and_another_device_gets_the_same_one() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;

    // Next page load: localStorage has the id; `getConversation` verifies it and
    // `validateAccess` checks `participants.includes(userId)`.
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::GET,
        &api(&format!("/conversations/{cid}")),
        None,
    )
    .await;
    assert_ok(status, &body);
    assert_conversation_response(&body["data"]);
    assert_eq!(body["data"]["id"], cid.as_str());
    assert!(participant_ids(&body["data"]).contains(&ENTITY_ID));

    // A second device has no localStorage entry and creates again with the same room:
    // the answer is the same conversation (get-or-create), read from `data.id`.
    let (status, again) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::POST,
        &api("/conversations/"),
        Some(CREATE_CONVERSATION),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_conversation_response(&again["data"]);
    assert_eq!(again["data"]["id"], cid.as_str());
}

#[tokio::test]
async fn seed_client_get_conversation_of_a_stale_id_is_a_404_with_a_message() {
    let app = spawn_app().await;
    // The seed catches this, clears localStorage and creates a new conversation.
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::GET,
        &api("/conversations/6f1d3b8a-92c4-4e7f-b05a-3c8e1f9d2a76"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "NOT_FOUND");
    assert!(body["message"].is_string(), "{body}");
}

#[tokio::test]
async fn seed_client_list_conversations_queries_answer_items_total_has_more() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;
    let other = r#"{"platform_conversation_id":"e4b2c8d1-7a3f-4b6e-9c05-8f1a2d3e4b5c","platform":"websocket","creator_id":"5f0c4e1a-3b9d-4c7e-8a21-9d6f2b7c1e04","participants":["5f0c4e1a-3b9d-4c7e-8a21-9d6f2b7c1e04","9a7e5c3b-1d2f-4e6a-8b0c-2e4f6a8c0d1e"],"name":"Chat with 9a7e5c3b-1d2f-4e6a-8b0c-2e4f6a8c0d1e","metadata":{"namespace":"/","roomId":"e4b2c8d1-7a3f-4b6e-9c05-8f1a2d3e4b5c"}}"#;
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::POST,
        &api("/conversations/"),
        Some(other),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = token(ENTITY_ID);

    // `ConversationManager.listUserConversations(userId)`: offset 0 and
    // includeArchived false are falsy, so URLSearchParams leaves them out.
    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!(
            "/conversations/?participant_id={ENTITY_ID}&limit=100"
        )),
        None,
    )
    .await;
    assert_ok(status, &body);
    let page = &body["data"];
    assert_shape(
        page,
        &[
            ("items", "object[]"),
            ("total", "number"),
            ("has_more", "boolean"),
        ],
    );
    assert_eq!(page["total"], 2, "{body}");
    assert_eq!(page["has_more"], false);
    for c in page["items"].as_array().unwrap() {
        assert_conversation_response(c);
    }
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == cid.as_str())
    );

    // `listConversations({})`: an empty query string, "?" and nothing after it.
    let (status, body) =
        seed_fetch(&app, &token, Method::GET, &api("/conversations/?"), None).await;
    assert_ok(status, &body);
    assert_eq!(body["data"]["total"], 2, "{body}");

    // Every parameter, in the order the seed sets them.
    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!(
            "/conversations/?platform=websocket&participant_id={ENTITY_ID}&limit=1&offset=1&include_archived=true"
        )),
        None,
    )
    .await;
    assert_ok(status, &body);
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["data"]["total"], 2);
    assert_eq!(body["data"]["has_more"], false);
    assert_conversation_response(&body["data"]["items"][0]);
}

#[tokio::test]
async fn seed_client_message_history_pages_answer_paginated_messages_responses() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;
    // 55 messages, alternating user and agent.
    let (agent, user) = (agent_token(), token(ENTITY_ID));
    for i in 1..=55 {
        let who = if i % 2 == 0 { &agent } else { &user };
        let (status, body) = app
            .post(
                &api(&format!("/messages/conversations/{cid}")),
                who,
                serde_json::json!({"text": format!("message {i}")}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let token = token(ENTITY_ID);

    // `MessageHistoryManager.loadHistory(convId, agentId, {limit: 50, offset: 0})`.
    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!("/messages/conversations/{cid}?limit=50")),
        None,
    )
    .await;
    assert_ok(status, &body);
    let page = &body["data"];
    assert_paginated_messages_response(page);
    assert_eq!(page["total"], 55);
    assert_eq!(page["limit"], 50);
    assert_eq!(page["offset"], 0);
    assert_eq!(page["has_more"], true);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 50);
    // The newest 50, oldest first: the seed renders them in this order.
    assert_eq!(items[0]["text"], "message 6");
    assert_eq!(items[49]["text"], "message 55");
    // transformMessageToUI: `isReceived = sender_id.toLowerCase() === agentId.toLowerCase()`.
    let received = items
        .iter()
        .filter(|m| {
            m["sender_id"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(AGENT_ID)
        })
        .count();
    assert_eq!(received, 25);
    assert!(items.iter().all(|m| m["conversation_id"] == cid.as_str()));

    // `handleLoadMore`: offset = messages already shown; the page goes before them.
    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!("/messages/conversations/{cid}?limit=50&offset=50")),
        None,
    )
    .await;
    assert_ok(status, &body);
    let older = &body["data"];
    assert_paginated_messages_response(older);
    assert_eq!(older["offset"], 50);
    assert_eq!(older["has_more"], false);
    let texts: Vec<&str> = older["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "message 1",
            "message 2",
            "message 3",
            "message 4",
            "message 5"
        ]
    );

    // `getMessageHistory(id)` without params: "?" and nothing after it.
    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!("/messages/conversations/{cid}?")),
        None,
    )
    .await;
    assert_ok(status, &body);
    assert_paginated_messages_response(&body["data"]);
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 50);
}

#[tokio::test]
async fn seed_client_history_attachments_match_the_seeds_attachment_response() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;
    // One attachment with every field, one with only the required ones.
    let (status, sent) = app
        .post(
            &api(&format!("/messages/conversations/{cid}")),
            &token(ENTITY_ID),
            serde_json::json!({"text": "here is the brief", "attachments": [
                {"type": "file", "url": "https://files.example.com/brief.pdf",
                 "filename": "brief.pdf", "size": 48213, "metadata": {"pages": 3}},
                {"type": "image", "url": "https://files.example.com/cover.png"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::GET,
        &api(&format!("/messages/conversations/{cid}?limit=50")),
        None,
    )
    .await;
    assert_ok(status, &body);
    let attachments = &body["data"]["items"][0]["attachments"];
    assert_eq!(attachments[0]["url"], "https://files.example.com/brief.pdf");
    assert_eq!(attachments[0]["filename"], "brief.pdf");
    assert_eq!(attachments[1]["type"], "image");
    // §5.4: `filename?: string; size?: number; metadata?: Record<string, any>`: absent
    // or of that type, never null.
    assert_paginated_messages_response(&body["data"]);
}

#[tokio::test]
async fn seed_client_message_history_date_and_sender_filters_are_understood() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;
    app.send(ENTITY_ID, &cid, "hi").await;
    let (status, _) = app
        .post(
            &api(&format!("/messages/conversations/{cid}")),
            &agent_token(),
            serde_json::json!({"text": "hello!"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    app.send(ENTITY_ID, &cid, "what can you do?").await;

    // `getMessageHistory(id, {limit, startDate, endDate, senderFilter})`: dates from
    // `Date.toISOString()`, encoded by URLSearchParams (":" becomes "%3A").
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::GET,
        &api(&format!(
            "/messages/conversations/{cid}?limit=50&start_date=2020-01-01T00%3A00%3A00.000Z&end_date=2099-12-31T23%3A59%3A59.999Z&sender_filter={ENTITY_ID}"
        )),
        None,
    )
    .await;
    assert_ok(status, &body);
    assert_paginated_messages_response(&body["data"]);
    let texts: Vec<&str> = body["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hi", "what can you do?"], "{body}");

    // A window that ends before anything was sent.
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::GET,
        &api(&format!(
            "/messages/conversations/{cid}?limit=50&start_date=2020-01-01T00%3A00%3A00.000Z&end_date=2020-01-02T00%3A00%3A00.000Z"
        )),
        None,
    )
    .await;
    assert_ok(status, &body);
    assert_eq!(body["data"]["items"], serde_json::json!([]), "{body}");
}

#[tokio::test]
async fn seed_client_history_sender_name_is_a_string_for_a_sender_without_a_name_claim() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;
    // An agent runtime whose token carries no `name`.
    let exp = chrono::Utc::now().timestamp() + 3600;
    let nameless = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": AGENT_ID, "kind": "agent", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let (status, sent) = app
        .post(
            &api(&format!("/messages/conversations/{cid}")),
            &nameless,
            serde_json::json!({"text": "hello"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::GET,
        &api(&format!("/messages/conversations/{cid}?limit=50")),
        None,
    )
    .await;
    assert_ok(status, &body);
    // §3.3: `sender_name: string`, not optional.
    assert_paginated_messages_response(&body["data"]);
}

#[tokio::test]
async fn seed_client_mark_read_answers_success_and_moves_the_horizon() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;
    for text in ["Hi! I'm your agent.", "Ask me anything."] {
        let (status, _) = app
            .post(
                &api(&format!("/messages/conversations/{cid}")),
                &agent_token(),
                serde_json::json!({ "text": text }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, body) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::POST,
        &api(&format!("/messages/conversations/{cid}/mark-read")),
        Some(MARK_READ),
    )
    .await;
    // The seed returns the whole body as `{success: boolean; message?: string}`.
    assert_ok(status, &body);
    assert_shape(
        &body,
        &[("success", "boolean"), ("message", "string|null|absent")],
    );
    assert_eq!(body["data"]["last_read_seq"], 2, "{body}");
    assert_eq!(body["data"]["unread_count"], 0, "{body}");

    // The agent's messages now read as `read` in the history the seed loads.
    let (status, history) = seed_fetch(
        &app,
        &token(ENTITY_ID),
        Method::GET,
        &api(&format!("/messages/conversations/{cid}?limit=50")),
        None,
    )
    .await;
    assert_ok(status, &history);
    assert_paginated_messages_response(&history["data"]);
    assert!(
        history["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "read"),
        "{history}"
    );
}

#[tokio::test]
async fn seed_client_archive_with_an_empty_body_answers_success_and_hides_the_conversation() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;
    let token = token(ENTITY_ID);
    // `archiveConversation`: POST, JSON content type, no body.
    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::POST,
        &api(&format!("/conversations/{cid}/archive")),
        None,
    )
    .await;
    assert_ok(status, &body);
    assert_shape(&body, &[("success", "boolean")]);

    let (status, got) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!("/conversations/{cid}")),
        None,
    )
    .await;
    assert_ok(status, &got);
    assert_conversation_response(&got["data"]);
    assert!(got["data"]["archived_at"].is_string(), "{got}");

    let list = |query: String| {
        let (app, token) = (&app, &token);
        async move {
            let (status, body) = seed_fetch(
                app,
                token,
                Method::GET,
                &api(&format!("/conversations/?{query}")),
                None,
            )
            .await;
            assert_ok(status, &body);
            body["data"]["total"].clone()
        }
    };
    // listUserConversations: includeArchived false.
    assert_eq!(
        list(format!("participant_id={ENTITY_ID}&limit=100")).await,
        0
    );
    assert_eq!(
        list(format!(
            "participant_id={ENTITY_ID}&limit=100&include_archived=true"
        ))
        .await,
        1
    );

    // §2.1 restore: the same body-less POST.
    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::POST,
        &api(&format!("/conversations/{cid}/restore")),
        None,
    )
    .await;
    assert_ok(status, &body);
    let (_, got) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!("/conversations/{cid}")),
        None,
    )
    .await;
    assert_conversation_response(&got["data"]);
    assert!(got["data"]["archived_at"].is_null(), "{got}");
    assert_eq!(
        list(format!("participant_id={ENTITY_ID}&limit=100")).await,
        1
    );
}

#[tokio::test]
async fn seed_client_summary_and_analytics_answer_what_the_seed_reads() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;
    app.send(ENTITY_ID, &cid, "Can you book a table for two tonight?")
        .await;
    let (status, _) = app
        .post(
            &api(&format!("/messages/conversations/{cid}")),
            &agent_token(),
            serde_json::json!({"text": "Booked a table for two at 8pm. Enjoy your dinner!"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = token(ENTITY_ID);

    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!("/conversations/{cid}/summary")),
        None,
    )
    .await;
    assert_ok(status, &body);
    // `{summary: string; key_points: string[]; sentiment?: string}`
    assert_shape(
        &body["data"],
        &[
            ("summary", "string"),
            ("key_points", "string[]"),
            ("sentiment", "string|absent"),
        ],
    );

    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!("/conversations/{cid}/analytics")),
        None,
    )
    .await;
    assert_ok(status, &body);
    // `{message_count: number; participant_stats: Record<string, any>; activity_timeline: any[]}`
    assert_shape(
        &body["data"],
        &[
            ("message_count", "number"),
            ("participant_stats", "object"),
            ("activity_timeline", "array"),
        ],
    );
    assert_eq!(body["data"]["message_count"], 2);
}

#[tokio::test]
async fn seed_client_participant_routes_add_and_remove_on_the_seed_paths() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;
    let token = token(ENTITY_ID);
    let path = api(&format!("/conversations/{cid}/participants"));
    // §2.2 names the route but the seed shows no body: the contract's participant shape.
    let newcomer = "2b4d6f8a-0c1e-4a3b-9d5f-7e9a1c3b5d70";
    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::POST,
        &path,
        Some(r#"{"participant_id":"2b4d6f8a-0c1e-4a3b-9d5f-7e9a1c3b5d70","participant_type":"user","role":"member","display_name":"Second device user"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["success"], true);

    let (status, got) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!("/conversations/{cid}")),
        None,
    )
    .await;
    assert_ok(status, &got);
    assert_conversation_response(&got["data"]);
    assert!(participant_ids(&got["data"]).contains(&newcomer), "{got}");

    let (status, list) = seed_fetch(&app, &token, Method::GET, &path, None).await;
    assert_ok(status, &list);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(3), "{list}");

    let (status, body) = seed_fetch(
        &app,
        &token,
        Method::DELETE,
        &api(&format!("/conversations/{cid}/participants/{newcomer}")),
        None,
    )
    .await;
    assert_ok(status, &body);
    let (_, got) = seed_fetch(
        &app,
        &token,
        Method::GET,
        &api(&format!("/conversations/{cid}")),
        None,
    )
    .await;
    assert!(!participant_ids(&got["data"]).contains(&newcomer), "{got}");
}

/// Runs `tests/clients/node/seed000.mjs` on the seed's conversation; returns its report.
async fn run_seed_socket_client(app: &TestApp, cid: &str, user_token: Option<String>) -> Value {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "run `npm ci` in tests/clients/node (scripts/test does)"
    );
    let script = dir.join("seed000.mjs");
    let output = tokio::task::spawn_blocking({
        let (url, cid) = (app.base.clone(), cid.to_owned());
        move || {
            Command::new("node")
                .arg(script)
                .env("COLLOQUY_URL", url)
                .env("TOKEN_USER", user_token.unwrap_or_default())
                .env("TOKEN_AGENT", agent_token())
                .env("ENTITY_ID", ENTITY_ID)
                .env("AGENT_ID", AGENT_ID)
                .env("ROOM_ID", ROOM_ID)
                .env("CONVERSATION_ID", cid)
                .output()
        }
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "seed000.mjs failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("report line")
}

/// After the socket exchange: the history the seed loads on its next page view holds
/// both messages, and the read the seed sends on `messageComplete` covers them.
async fn assert_history_after_socket_flow(app: &TestApp, cid: &str, report: &Value) {
    let (status, body) = seed_fetch(
        app,
        &token(ENTITY_ID),
        Method::GET,
        &api(&format!("/messages/conversations/{cid}?limit=50")),
        None,
    )
    .await;
    assert_ok(status, &body);
    let page = &body["data"];
    assert_paginated_messages_response(page);
    assert_eq!(page["total"], 2, "{body}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items[0]["id"], report["user_message"]["id"]);
    assert_eq!(items[0]["text"], "Hello agent! What can you do?");
    assert_eq!(items[0]["sender_id"], ENTITY_ID);
    assert_eq!(items[0]["sender_type"], "user");
    assert_eq!(items[1]["id"], report["agent_message"]["id"]);
    assert_eq!(items[1]["text"], "I can search, summarise and schedule.");
    assert!(
        items[1]["sender_id"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(AGENT_ID),
        "isReceived needs the agent's id: {body}"
    );
    assert_eq!(items[1]["platform_context"]["room_id"], ROOM_ID, "{body}");

    let (status, read) = seed_fetch(
        app,
        &token(ENTITY_ID),
        Method::POST,
        &api(&format!("/messages/conversations/{cid}/mark-read")),
        Some(MARK_READ),
    )
    .await;
    assert_ok(status, &read);
    assert_eq!(read["data"]["last_read_seq"], 2, "{read}");
    assert_eq!(read["data"]["unread_count"], 0, "{read}");
}

#[tokio::test]
async fn seed_client_socket_join_and_send_reach_the_agent_and_history() {
    let app = spawn_app().await;
    let cid = seed_create(&app).await;
    let report = run_seed_socket_client(&app, &cid, Some(token(ENTITY_ID))).await;
    assert_history_after_socket_flow(&app, &cid, &report).await;
}

#[tokio::test]
async fn seed_client_socket_without_a_token_works_in_legacy_anonymous_mode() {
    // The seed's own SocketIOManager sends no token: `io(url, {autoConnect, reconnection})`.
    let app = spawn_app_with(|c| c.socket_allow_anonymous = true).await;
    let cid = seed_create(&app).await;
    let report = run_seed_socket_client(&app, &cid, None).await;
    assert_history_after_socket_flow(&app, &cid, &report).await;
}
