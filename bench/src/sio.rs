//! A small Socket.IO v5 client over a websocket: one reader task (answers pings, resolves
//! acks, hands events to a callback) and one writer task per connection.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::{connect_async_with_config, tungstenite::Message};

type Acks = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Client {
    out: mpsc::UnboundedSender<Message>,
    acks: Acks,
    next_ack: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

/// Called for every event the server emits: `(name, data)`.
pub type OnEvent = Box<dyn Fn(&str, &Value) + Send + Sync>;

impl Client {
    /// Connects to namespace `/` at `base` (`http://host:port`) with `auth: {token}`.
    pub async fn connect(base: &str, token: &str, on_event: OnEvent) -> anyhow::Result<Client> {
        let url = format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            base.replacen("http", "ws", 1)
        );
        let (ws, _) = connect_async_with_config(url, None, true)
            .await
            .context("websocket connect")?;
        let (mut sink, mut stream) = ws.split();
        // Engine.IO open, then the Socket.IO connect with auth.
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with('0') => break,
                Some(Ok(_)) => {}
                other => bail!("no engine.io open packet: {other:?}"),
            }
        }
        sink.send(Message::Text(
            format!("40{}", json!({ "token": token })).into(),
        ))
        .await?;
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with("40") => break,
                Some(Ok(Message::Text(t))) if t.starts_with("44") => bail!("refused: {t}"),
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                    sink.send(Message::Text("3".into())).await?;
                }
                Some(Ok(_)) => {}
                other => bail!("closed during connect: {other:?}"),
            }
        }
        let (out, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
        });
        let acks: Acks = Arc::default();
        let reader = {
            let acks = acks.clone();
            let out = out.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    let Message::Text(t) = m else { continue };
                    if t.as_str() == "2" {
                        let _ = out.send(Message::Text("3".into()));
                    } else if let Some(rest) = t.strip_prefix("43") {
                        let idx = rest.find('[').unwrap_or(rest.len());
                        let Ok(id) = rest[..idx].parse::<u64>() else {
                            continue;
                        };
                        let v: Value = serde_json::from_str(&rest[idx..]).unwrap_or(Value::Null);
                        let waiter = acks.lock().ok().and_then(|mut a| a.remove(&id));
                        if let Some(w) = waiter {
                            let _ = w.send(v.get(0).cloned().unwrap_or(Value::Null));
                        }
                    } else if let Some(rest) = t.strip_prefix("42") {
                        let idx = rest.find('[').unwrap_or(rest.len());
                        if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(&rest[idx..])
                            && let Some(name) = a.first().and_then(Value::as_str)
                        {
                            on_event(name, a.get(1).unwrap_or(&Value::Null));
                        }
                    } else if t.starts_with("41") {
                        break;
                    }
                }
            })
        };
        Ok(Client {
            out,
            acks,
            next_ack: AtomicU64::new(1),
            reader,
        })
    }

    /// Emits `event` with an ack callback and waits up to `timeout` for the ack.
    pub async fn call(&self, event: &str, data: Value, timeout: Duration) -> anyhow::Result<Value> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(id, tx);
        self.out
            .send(Message::Text(
                format!("42{id}{}", json!([event, data])).into(),
            ))
            .map_err(|_| anyhow!("connection closed"))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => bail!("connection closed before the ack"),
            Err(_) => {
                if let Ok(mut a) = self.acks.lock() {
                    a.remove(&id);
                }
                bail!("no ack within {timeout:?}")
            }
        }
    }

    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
        self.reader.abort();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}
