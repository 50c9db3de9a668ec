//! Built-in agent responders (contract §8): when someone's message is stored in a
//! conversation an agent with a responder takes part in, Colloquy answers as that agent.
//!
//! The process that **stored** the message answers it (its writer hands the message here
//! after the commit), so each message is answered once in a cluster. A reply goes:
//! `typing` → `messageStream {conversation_id, stream_id, delta}` per token → the whole
//! text stored as the agent's message (normal broadcast, webhooks, `messageComplete`) →
//! `typing` off. Replies in one conversation are queued, one after the other, so each user
//! message gets exactly one reply, in order. Provider errors, malformed streams and stalls
//! end the stream with an `error` event and store nothing; a reply is stored whole or not
//! at all (a crash mid-stream stores nothing), and at most once (its client id is derived
//! from the message it answers).
//!
//! Only messages from users are answered: never an agent's (another responder's or its
//! own), nor a system message — so responders cannot loop.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, mpsc};
use uuid::Uuid;

use crate::{
    auth::{Principal, PrincipalKind},
    core::{
        events::{Event, EventKind, Origin},
        messages::{self, Message, SendMessage, SendOptions},
    },
    state::AppState,
};

/// Longest a whole reply may stream.
const MAX_REPLY_TIME: Duration = Duration::from_secs(300);
/// Most bytes one reply's stream may carry (deltas, their JSON and SSE framing).
const MAX_STREAM_BYTES: usize = 4 * 1024 * 1024;
/// Replies waiting for their turn in one conversation, per agent; more are not answered.
const MAX_WAITING: usize = 3;
/// How often the set of agents with responders is re-read (other processes' changes).
const REFRESH: Duration = Duration::from_secs(2);

/// Which agents answer by themselves, and the queue of stored messages to look at. Cheap
/// to clone; the writer calls [`Registry::stored`] after every commit.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Fast path: no responder anywhere, nothing to look at.
    any: AtomicBool,
    agents: Mutex<HashSet<String>>,
    changed: Notify,
    queue: Mutex<Option<mpsc::Sender<Message>>>,
}

impl Registry {
    /// A responder was set or removed here: re-read at once.
    pub fn changed(&self) {
        self.inner.changed.notify_one();
    }

    /// A message this process stored (after its commit).
    pub fn stored(&self, message: &Message) {
        if !self.inner.any.load(Ordering::Relaxed) || message.sender_type != "user" {
            return;
        }
        if let Ok(queue) = self.inner.queue.lock()
            && let Some(queue) = queue.as_ref()
            && queue.try_send(message.clone()).is_err()
        {
            crate::metrics::responder_outcome("dropped");
            tracing::warn!(conversation_id = %message.conversation_id, "responder queue full; message not answered");
        }
    }

    /// Whether `agent`'s responder is enabled (as last read, at most 2 s ago).
    fn is_enabled(&self, agent: &str) -> bool {
        self.inner
            .agents
            .lock()
            .map(|a| a.contains(agent))
            .unwrap_or(false)
    }

    fn set_agents(&self, agents: HashSet<String>) {
        self.inner.any.store(!agents.is_empty(), Ordering::Relaxed);
        if let Ok(mut a) = self.inner.agents.lock() {
            *a = agents;
        }
    }
}

#[derive(sqlx::FromRow)]
struct Settings {
    agent_id: String,
    model: String,
    system_prompt: String,
    temperature: Option<f64>,
    max_history: i32,
    base_url: Option<String>,
    api_key: Option<String>,
    display_name: Option<String>,
}

/// A conversation's reply queue for one agent: replies hold it while they stream.
type Turn = Arc<tokio::sync::Mutex<()>>;

struct Runtime {
    state: AppState,
    client: reqwest::Client,
    slots: Arc<Semaphore>,
    per_agent: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// One reply at a time per (agent, conversation), in arrival order.
    turns: Mutex<HashMap<(String, Uuid), Turn>>,
}

pub fn spawn(state: &AppState) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let (tx, rx) = mpsc::channel(4096);
    if let Ok(mut queue) = state.responders.inner.queue.lock() {
        *queue = Some(tx);
    }
    let runtime = Arc::new(Runtime {
        state: state.clone(),
        client: state.outbound.client(None)?,
        slots: Arc::new(Semaphore::new(state.config.responder_concurrency.max(1))),
        per_agent: Default::default(),
        turns: Default::default(),
    });
    Ok(vec![
        tokio::spawn(refresh(state.clone())),
        tokio::spawn(run(runtime, rx)),
    ])
}

/// Keeps the set of enabled responders current.
async fn refresh(state: AppState) {
    loop {
        if state.is_ready() {
            let agents: Result<Vec<(String,)>, _> =
                sqlx::query_as("SELECT agent_id FROM agent_responders WHERE enabled")
                    .fetch_all(&state.delivery_db)
                    .await;
            if let Ok(agents) = agents {
                state
                    .responders
                    .set_agents(agents.into_iter().map(|(a,)| a).collect());
            }
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.responders.inner.changed.notified() => {}
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}

async fn run(runtime: Arc<Runtime>, mut rx: mpsc::Receiver<Message>) {
    loop {
        let message = tokio::select! {
            _ = runtime.state.shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let settings: Vec<Settings> = match sqlx::query_as(
            r#"
            SELECT r.agent_id, r.model, r.system_prompt, r.temperature, r.max_history, r.base_url,
                   r.api_key, p.display_name
            FROM agent_responders r
            JOIN participants p ON p.conversation_id = $1 AND p.participant_id = r.agent_id
                               AND p.participant_type = 'agent'
            WHERE r.enabled AND r.agent_id <> $2
              -- No loops: a sender that is an agent here, or has a responder, is not
              -- answered, whatever type its message was stored with.
              AND NOT EXISTS (SELECT 1 FROM participants s WHERE s.conversation_id = $1
                              AND s.participant_id = $2 AND s.participant_type = 'agent')
              AND NOT EXISTS (SELECT 1 FROM agent_responders x WHERE x.agent_id = $2)
            "#,
        )
        .bind(message.conversation_id)
        .bind(&message.sender_id)
        .fetch_all(&runtime.state.db)
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not look up responders; message not answered");
                continue;
            }
        };
        let message = Arc::new(message);
        for settings in settings {
            let runtime = runtime.clone();
            let message = message.clone();
            // Each reply takes its turn in its conversation (a tokio mutex is fair: first
            // come, first served).
            let turn = runtime.turn(&settings.agent_id, message.conversation_id);
            // References: the map's, ours, the reply in progress and those waiting.
            if Arc::strong_count(&turn) >= 3 + MAX_WAITING {
                crate::metrics::responder_outcome("dropped");
                tracing::info!(agent_id = %settings.agent_id, conversation_id = %message.conversation_id,
                    "responder busy in this conversation; message not answered");
                continue;
            }
            tokio::spawn(async move {
                let guard = turn.lock().await;
                if !runtime.state.responders.is_enabled(&settings.agent_id) {
                    drop(guard);
                    runtime.forget_turn(&message, turn);
                    return;
                }
                runtime.reply(settings, &message).await;
                drop(guard);
                runtime.forget_turn(&message, turn);
            });
        }
    }
}

/// Why a reply failed, for the `error` event (`RESPONDER_*` codes).
struct Failure {
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl Runtime {
    fn turn(&self, agent: &str, conversation: Uuid) -> Turn {
        self.turns
            .lock()
            .map(|mut t| {
                t.entry((agent.to_owned(), conversation))
                    .or_default()
                    .clone()
            })
            .unwrap_or_default()
    }

    fn forget_turn(&self, message: &Message, turn: Turn) {
        // Two references: the map's and ours: nobody else waits for this conversation.
        if let Ok(mut turns) = self.turns.lock()
            && Arc::strong_count(&turn) == 2
        {
            turns.retain(|(_, c), t| !(c == &message.conversation_id && Arc::ptr_eq(t, &turn)));
        }
    }

    fn agent_slots(&self, agent: &str) -> Arc<Semaphore> {
        let per = self.state.config.responder_agent_concurrency.max(1);
        self.per_agent
            .lock()
            .map(|mut m| {
                m.entry(agent.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(per)))
                    .clone()
            })
            .unwrap_or_else(|_| Arc::new(Semaphore::new(per)))
    }

    async fn reply(&self, settings: Settings, message: &Message) {
        let agent_slots = self.agent_slots(&settings.agent_id);
        let Ok(_agent) = agent_slots.acquire().await else {
            return;
        };
        let Ok(_slot) = self.slots.acquire().await else {
            return;
        };
        let room = message.platform_context.room_id.clone();
        let stream_id = Uuid::now_v7();
        let started = std::time::Instant::now();
        self.typing(&settings.agent_id, message.conversation_id, &room, true);
        let outcome = tokio::time::timeout(
            MAX_REPLY_TIME,
            self.stream(&settings, message, &room, stream_id),
        )
        .await
        .unwrap_or_else(|_| Err(Failure::new("RESPONDER_TIMEOUT", "the reply took too long")));
        let outcome = match outcome {
            Ok(text) => self.store(&settings, message, stream_id, text).await,
            Err(f) => Err(f),
        };
        self.typing(&settings.agent_id, message.conversation_id, &room, false);
        match outcome {
            Ok(()) => {
                crate::metrics::responder_outcome("stored");
                crate::metrics::responder_reply(started.elapsed());
            }
            Err(failure) => {
                crate::metrics::responder_outcome(failure.code);
                tracing::info!(agent_id = %settings.agent_id, conversation_id = %message.conversation_id,
                    code = failure.code, reason = %failure.message, "responder gave up on a reply");
                self.state.events.publish(Event::new(
                    EventKind::StreamError,
                    message.conversation_id,
                    room,
                    json!({
                        "code": failure.code,
                        "message": failure.message,
                        "conversation_id": message.conversation_id,
                        "stream_id": stream_id,
                        "agent_id": settings.agent_id,
                        "in_reply_to": message.id,
                    }),
                    Origin::default(),
                ));
            }
        }
    }

    fn typing(&self, agent: &str, conversation_id: Uuid, room: &str, is_typing: bool) {
        self.state.events.publish(Event::new(
            EventKind::Typing,
            conversation_id,
            room.to_owned(),
            json!({ "conversation_id": conversation_id, "user_id": agent, "is_typing": is_typing }),
            Origin::default(),
        ));
    }

    /// The conversation up to `message`, oldest first, as chat messages.
    async fn history(&self, settings: &Settings, message: &Message) -> sqlx::Result<Vec<Value>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            r#"
            SELECT sender_id, text FROM messages
            WHERE conversation_id = $1 AND seq <= $2 AND deleted_at IS NULL
            ORDER BY seq DESC LIMIT $3
            "#,
        )
        .bind(message.conversation_id)
        .bind(message.seq)
        .bind(i64::from(settings.max_history.max(0)) + 1)
        .fetch_all(&self.state.db)
        .await?;
        let mut chat = Vec::with_capacity(rows.len() + 1);
        if !settings.system_prompt.is_empty() {
            chat.push(json!({ "role": "system", "content": settings.system_prompt }));
        }
        chat.extend(rows.into_iter().rev().map(|(sender, text)| {
            let role = if sender == settings.agent_id {
                "assistant"
            } else {
                "user"
            };
            json!({ "role": role, "content": text })
        }));
        Ok(chat)
    }

    /// Streams the provider's reply, relaying each delta; the whole text when it ends well.
    async fn stream(
        &self,
        settings: &Settings,
        message: &Message,
        room: &str,
        stream_id: Uuid,
    ) -> Result<String, Failure> {
        let config = &self.state.config;
        let chat = self
            .history(settings, message)
            .await
            .map_err(|_| Failure::new("RESPONDER_FAILED", "the conversation could not be read"))?;
        let default_base = config.openai_base_url.trim_end_matches('/');
        let base = settings
            .base_url
            .clone()
            .unwrap_or_else(|| default_base.to_owned());
        // The server's own key goes only to the server's own provider: never to a URL
        // whoever controls an agent chose.
        let key = settings.api_key.clone().or_else(|| {
            (base == default_base)
                .then(|| {
                    config
                        .openai_api_key
                        .as_ref()
                        .map(|k| k.expose().to_owned())
                })
                .flatten()
        });
        let mut body = json!({ "model": settings.model, "messages": chat, "stream": true });
        if let Some(t) = settings.temperature {
            body["temperature"] = json!(t);
        }
        let mut request = self
            .client
            .post(format!("{base}/chat/completions"))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let stall = Duration::from_secs(config.responder_timeout_seconds.max(1));
        let response = tokio::time::timeout(stall, request.send())
            .await
            .map_err(|_| Failure::new("RESPONDER_TIMEOUT", "the provider did not answer in time"))?
            .map_err(|e| {
                Failure::new(
                    "RESPONDER_FAILED",
                    format!("the provider could not be reached ({})", kind_of(&e)),
                )
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::new(
                "RESPONDER_FAILED",
                format!("the provider answered {status}"),
            ));
        }
        // A provider cannot make us buffer without bound: the whole stream is capped.
        let mut read = 0usize;
        let bounded = response.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            read += chunk.len();
            if read > MAX_STREAM_BYTES {
                return Err(std::io::Error::other("the provider's stream is too large"));
            }
            Ok(chunk)
        });
        let mut events = eventsource_stream::EventStream::new(bounded);
        let mut text = String::new();
        let mut index = 0u64;
        loop {
            let next = tokio::time::timeout(stall, events.next())
                .await
                .map_err(|_| Failure::new("RESPONDER_TIMEOUT", "the provider stalled mid-reply"))?;
            let event = match next {
                None => break,
                Some(Ok(event)) => event,
                Some(Err(_)) => {
                    return Err(Failure::new(
                        "RESPONDER_FAILED",
                        "the provider's stream broke off",
                    ));
                }
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                break;
            }
            let chunk: Value = serde_json::from_str(data).map_err(|_| {
                Failure::new("RESPONDER_FAILED", "the provider sent a malformed chunk")
            })?;
            if let Some(error) = chunk.get("error") {
                let said = error["message"].as_str().unwrap_or("an error");
                return Err(Failure::new(
                    "RESPONDER_FAILED",
                    format!(
                        "the provider reported: {}",
                        said.chars().take(200).collect::<String>()
                    ),
                ));
            }
            let delta = chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default();
            if delta.is_empty() {
                continue;
            }
            if text.chars().count() + delta.chars().count() > config.max_message_chars {
                return Err(Failure::new(
                    "RESPONDER_FAILED",
                    "the reply is longer than MAX_MESSAGE_CHARS",
                ));
            }
            text.push_str(delta);
            if index == 0 {
                crate::metrics::responder_first_delta(message.created_at);
            }
            self.state.events.publish(Event::new(
                EventKind::MessageStream,
                message.conversation_id,
                room.to_owned(),
                json!({
                    "conversation_id": message.conversation_id,
                    "stream_id": stream_id,
                    "agent_id": settings.agent_id,
                    "in_reply_to": message.id,
                    "index": index,
                    "delta": delta,
                }),
                Origin::default(),
            ));
            index += 1;
        }
        if text.trim().is_empty() {
            return Err(Failure::new(
                "RESPONDER_FAILED",
                "the provider's reply was empty",
            ));
        }
        Ok(text)
    }

    /// Stores the whole reply as the agent's message (at most once per message answered).
    async fn store(
        &self,
        settings: &Settings,
        message: &Message,
        stream_id: Uuid,
        text: String,
    ) -> Result<(), Failure> {
        let agent = Principal {
            id: settings.agent_id.clone(),
            name: settings.display_name.clone(),
            kind: PrincipalKind::Agent,
            admin: false,
            owner: None,
            handle: None,
            picture: None,
        };
        let input = SendMessage {
            text,
            client_message_id: Some(format!("responder:{}", message.id)),
            sender_name: settings.display_name.clone(),
            metadata: Some(json!({
                "responder": { "stream_id": stream_id, "in_reply_to": message.id, "model": settings.model },
            })),
            ..Default::default()
        };
        let options = SendOptions {
            origin: Origin::default(),
            source: Some("responder".into()),
        };
        messages::send(&self.state, &agent, message.conversation_id, input, options)
            .await
            .map(|_| ())
            .map_err(|e| Failure::new("RESPONDER_FAILED", format!("the reply was not stored: {e}")))
    }
}

fn kind_of(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect, or the address is refused"
    } else {
        "request failed"
    }
}
