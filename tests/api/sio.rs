//! A minimal Socket.IO v5 client over a raw websocket: full control over frames, so the
//! tests can also send garbage. (The official JS and Python clients are driven in `clients.rs`.)

use std::{collections::VecDeque, time::Duration};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

use crate::helpers::TestApp;

#[derive(Debug)]
pub struct Sio {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ack: u64,
    events: VecDeque<(String, Value)>,
    /// `/chat,` for a namespace other than `/`, else empty.
    prefix: String,
}

impl Sio {
    /// Connects to namespace `/`; `Err` carries the `connect_error` message.
    pub async fn connect(app: &TestApp, token: Option<&str>) -> Result<Sio, String> {
        Self::connect_ns(app, "/", token).await
    }

    pub async fn connect_ns(app: &TestApp, ns: &str, token: Option<&str>) -> Result<Sio, String> {
        let auth = token.map(|t| json!({ "token": t })).unwrap_or(json!({}));
        Self::connect_auth(app, ns, auth).await
    }

    /// Connects with the handshake's whole `auth` object (e.g. `{token, resume}`).
    pub async fn connect_auth(app: &TestApp, ns: &str, auth: Value) -> Result<Sio, String> {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
        let (ws, _) = connect_async(url).await.map_err(|e| e.to_string())?;
        let prefix = if ns == "/" {
            String::new()
        } else {
            format!("{ns},")
        };
        let mut sio = Sio {
            ws,
            next_ack: 1,
            events: VecDeque::new(),
            prefix: prefix.clone(),
        };
        let open = sio.frame().await.ok_or("no open packet")?;
        assert!(open.starts_with('0'), "{open}");
        sio.raw(&format!("40{prefix}{auth}")).await;
        loop {
            let f = sio.frame().await.ok_or("closed during connect")?;
            if let Some(rest) = f.strip_prefix("40") {
                let _ = rest;
                return Ok(sio);
            }
            if let Some(rest) = f.strip_prefix("44") {
                let body = rest.trim_start_matches(|c| c != '{');
                let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                return Err(v["message"].as_str().unwrap_or(rest).to_owned());
            }
        }
    }

    pub async fn raw(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send frame");
    }

    pub async fn raw_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send frame");
    }

    /// Next text frame, answering pings on the way.
    async fn frame(&mut self) -> Option<String> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) if t.as_str() == "2" => {
                    let _ = self.ws.send(Message::Text("3".into())).await;
                }
                Ok(Message::Text(t)) => return Some(t.to_string()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads one frame; events are queued, acks returned.
    async fn pump(&mut self) -> Option<(Option<u64>, Value)> {
        let mut f = self.frame().await?;
        // Drop a namespace prefix: `43/chat,1[...]` → `431[...]`.
        if f.len() > 2
            && f[2..].starts_with('/')
            && let Some(comma) = f.find(',')
        {
            f = format!("{}{}", &f[..2], &f[comma + 1..]);
        }
        if let Some(rest) = f.strip_prefix("43") {
            let idx = rest.find('[').unwrap_or(rest.len());
            let id = rest[..idx].parse().ok();
            let v: Value = serde_json::from_str(&rest[idx..]).unwrap_or(Value::Null);
            return Some((id, v[0].clone()));
        }
        if let Some(rest) = f.strip_prefix("42") {
            let idx = rest.find('[').unwrap_or(rest.len());
            if let Ok(Value::Array(mut a)) = serde_json::from_str::<Value>(&rest[idx..])
                && !a.is_empty()
            {
                let name = a.remove(0).as_str().unwrap_or_default().to_owned();
                self.events
                    .push_back((name, a.into_iter().next().unwrap_or(Value::Null)));
            }
        }
        Some((None, Value::Null))
    }

    pub async fn emit(&mut self, event: &str, data: Value) {
        self.raw(&format!("42{}{}", self.prefix, json!([event, data])))
            .await;
    }

    /// Emits with an ack callback and waits for the ack.
    pub async fn call(&mut self, event: &str, data: Value) -> Value {
        self.call_raw(event, &data.to_string()).await
    }

    /// Emits `event` with a payload written as raw JSON text, and waits for the ack.
    pub async fn call_raw(&mut self, event: &str, payload: &str) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.raw(&format!(
            "42{}{id}[{},{payload}]",
            self.prefix,
            json!(event)
        ))
        .await;
        let wait = async {
            loop {
                match self.pump().await {
                    Some((Some(got), v)) if got == id => return v,
                    Some(_) => {}
                    None => return Value::Null,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("ack in time")
    }

    /// The next `name` event within `ms` milliseconds.
    pub async fn next_event(&mut self, name: &str, ms: u64) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            if let Some(pos) = self.events.iter().position(|(n, _)| n == name) {
                return self.events.remove(pos).map(|(_, v)| v);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.pump()).await {
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    /// The `seq`s of `messageBroadcast`s until one at `until` or later arrives (or `ms`
    /// pass without one).
    pub async fn seqs_until(&mut self, until: i64, ms: u64) -> Vec<i64> {
        let mut seqs = vec![];
        while seqs.last().is_none_or(|l| *l < until) {
            match self.next_event("messageBroadcast", ms).await {
                Some(m) => seqs.push(m["seq"].as_i64().expect("seq")),
                None => break,
            }
        }
        seqs
    }

    /// How many `name` events have arrived and are not taken yet.
    pub fn queued(&self, name: &str) -> usize {
        self.events.iter().filter(|(n, _)| n == name).count()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A raw `/ws` client.
#[derive(Debug)]
pub struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read ahead (the first `status`), served before the socket's.
    pending: VecDeque<Value>,
}

impl Ws {
    /// Connects; a refusal (an `error` frame, then a close) is `Err(close code)`.
    pub async fn connect(app: &TestApp, session: &str, token: &str) -> Result<Ws, u16> {
        let url = format!("ws://{}/ws?session_id={session}&token={token}", app.addr);
        Self::connect_url(&url).await.map_err(|(code, _)| code)
    }

    /// Connects to a full URL; a refusal is `Err((close code, the error frame))`.
    pub async fn connect_url(url: &str) -> Result<Ws, (u16, Value)> {
        let (ws, _) = match connect_async(url).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                return Err((r.status().as_u16(), Value::Null));
            }
            Err(e) => panic!("{e}"),
        };
        let mut ws = Ws {
            ws,
            pending: VecDeque::new(),
        };
        let first = ws.next_any(5000).await.expect("a first frame");
        if first["type"] == "error" {
            let (code, _) = ws
                .closed(5000)
                .await
                .expect("a close after the error frame");
            return Err((code, first));
        }
        ws.pending.push_back(first);
        Ok(ws)
    }

    async fn next_any(&mut self, ms: u64) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(&t).expect("json frame"));
                }
                Ok(Some(Ok(_))) => {}
                _ => return None,
            }
        }
    }

    /// Waits for the server's close frame: `(code, reason)`; 1006 when the connection
    /// ended without one.
    pub async fn closed(&mut self, ms: u64) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    return Some((u16::from(f.code), f.reason.to_string()));
                }
                Ok(Some(Ok(Message::Close(None)))) => return Some((1005, String::new())),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return Some((1006, String::new())),
                Err(_) => return None,
            }
        }
    }

    /// Closes with 1000 and returns the code the server answered with.
    pub async fn close_normally(&mut self) -> Option<(u16, String)> {
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
        self.ws
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })))
            .await
            .ok()?;
        self.closed(5000).await
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The `seq`s of `message` frames until one at `until` or later arrives (or `ms` pass
    /// without one).
    pub async fn seqs_until(&mut self, until: i64, ms: u64) -> Vec<i64> {
        let mut seqs = vec![];
        while seqs.last().is_none_or(|l| *l < until) {
            match self.next("message", ms).await {
                Some(m) => seqs.push(m["seq"].as_i64().expect("seq")),
                None => break,
            }
        }
        seqs
    }

    /// The next frame of `kind` within `ms`.
    pub async fn next(&mut self, kind: &str, ms: u64) -> Option<Value> {
        if let Some(pos) = self.pending.iter().position(|v| v["type"] == kind) {
            return self.pending.remove(pos);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).expect("json frame");
                    if v["type"] == kind {
                        return Some(v);
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => return None,
            }
        }
    }
}
