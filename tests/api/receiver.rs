//! Real HTTP servers on loopback for webhook and responder tests: a webhook receiver that
//! verifies signatures, and a fake OpenAI-compatible streaming provider.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// One delivery as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    /// `X-Colloquy-Delivery`, or for a batch the event's own `id`.
    pub delivery: String,
    /// The event (one element of a batch).
    pub body: Value,
    pub signature_ok: bool,
    /// The request it came in (numbered from 0) and how many events that request held
    /// (`None`: a single event, not an array).
    pub request: usize,
    pub batch: Option<usize>,
    /// `X-Colloquy-Batch`.
    pub batch_header: Option<String>,
}

#[derive(Default)]
struct Shared {
    secret: Mutex<String>,
    received: Mutex<Vec<Received>>,
    /// Answer this status instead of 200.
    fail_with: Mutex<Option<u16>>,
    /// Answer every request with a redirect to this URL.
    redirect_to: Mutex<Option<String>>,
    hits: Mutex<usize>,
    /// Answer the next this many requests with 503.
    fail_next: Mutex<usize>,
}

/// A webhook endpoint on `ip`, started (and restartable on the same port) by the test.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// `t=<unix>,v1=<hex>` checked against HMAC-SHA256(secret, "t.body"), within 5 minutes.
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = chrono::Utc::now().timestamp();
    if (now - t).abs() > 300 {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    *shared.hits.lock().unwrap() += 1;
    if let Some(to) = shared.redirect_to.lock().unwrap().clone() {
        return (StatusCode::TEMPORARY_REDIRECT, [("location", to)]).into_response();
    }
    if let Some(status) = *shared.fail_with.lock().unwrap() {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    let secret = shared.secret.lock().unwrap().clone();
    let signature = headers
        .get("x-colloquy-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let delivery = headers
        .get("x-colloquy-delivery")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    {
        let mut fail_next = shared.fail_next.lock().unwrap();
        if *fail_next > 0 {
            *fail_next -= 1;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let batch_header = headers
        .get("x-colloquy-batch")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let signature_ok = verify(&secret, signature, &body);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut received = shared.received.lock().unwrap();
    let request = received.last().map_or(0, |r| r.request + 1);
    match parsed {
        Value::Array(events) => {
            let batch = Some(events.len());
            for event in events {
                received.push(Received {
                    delivery: event["id"].as_str().unwrap_or_default().to_owned(),
                    body: event,
                    signature_ok,
                    request,
                    batch,
                    batch_header: batch_header.clone(),
                });
            }
        }
        body => received.push(Received {
            delivery,
            body,
            signature_ok,
            request,
            batch: None,
            batch_header,
        }),
    }
    StatusCode::NO_CONTENT.into_response()
}

impl Receiver {
    pub async fn start(ip: &str) -> Receiver {
        let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let mut r = Receiver {
            addr,
            shared: Arc::default(),
            task: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(self.shared.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_secret(&self, secret: &str) {
        *self.shared.secret.lock().unwrap() = secret.to_owned();
    }

    pub fn fail_with(&self, status: Option<u16>) {
        *self.shared.fail_with.lock().unwrap() = status;
    }

    pub fn fail_next(&self, requests: usize) {
        *self.shared.fail_next.lock().unwrap() = requests;
    }

    pub fn redirect_to(&self, url: &str) {
        *self.shared.redirect_to.lock().unwrap() = Some(url.to_owned());
    }

    pub fn hits(&self) -> usize {
        *self.shared.hits.lock().unwrap()
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Stops listening (connections refused) until [`Receiver::restart`].
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    /// Waits until `done(received)` holds, or `ms` pass; returns what arrived.
    pub async fn wait_for(&self, ms: u64, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let got = self.received();
            if done(&got) || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The provider's requests: headers and JSON body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// How the fake provider answers, chosen by the request's `model`.
async fn completions(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock().unwrap().push((headers, request.clone()));
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    if model == "http500" {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream broke").into_response();
    }
    let name = model.clone();
    let chunk = move |text: &str| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "model": name,
                   "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        )
    };
    let last_user = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let stream = async_stream(model, last_user, chunk);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(stream))
        .unwrap()
}

fn async_stream(
    model: String,
    last_user: String,
    chunk: impl Fn(&str) -> String + Send + 'static,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        let role = format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        );
        let _ = tx.send(Ok(role)).await;
        match model.as_str() {
            "error-mid" => {
                let _ = tx.send(Ok(chunk("Partial "))).await;
                let _ = tx
                    .send(Ok(
                        "data: {\"error\": {\"message\": \"model overloaded\"}}\n\n".into(),
                    ))
                    .await;
            }
            "stall" => {
                let _ = tx.send(Ok(chunk("Thinking"))).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            "malformed" => {
                let _ = tx.send(Ok(chunk("Almost"))).await;
                let _ = tx.send(Ok("data: {not json at all\n\n".into())).await;
            }
            _ => {
                for piece in ["Hel", "lo ", "world"] {
                    let _ = tx.send(Ok(chunk(piece))).await;
                    if model == "slow" {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let _ = tx.send(Ok(chunk(&format!(" (re: {last_user})")))).await;
                let _ = tx.send(Ok("data: [DONE]\n\n".into())).await;
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A fake OpenAI-compatible `/v1/chat/completions` with `stream: true`.
pub struct Provider {
    pub addr: SocketAddr,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Provider {
    pub async fn start() -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Seen = Arc::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(seen.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Provider { addr, seen, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The requests received: headers and JSON body.
    pub fn requests(&self) -> Vec<(HeaderMap, Value)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}
