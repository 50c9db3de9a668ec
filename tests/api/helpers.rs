//! Test harness: a real server on a random port over a fresh Postgres database.
#![allow(dead_code)] // shared by test modules that use different parts

use std::{net::SocketAddr, sync::Once, time::Duration};

use colloquy::{
    Server,
    auth::{PrincipalKind, TokenRequest, mint},
    config::Config,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const SECRET: &str = "test-secret-please-ignore";

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub db: PgPool,
    pub database_url: String,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

static LOGS: Once = Once::new();

fn init_logs() {
    LOGS.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            colloquy::telemetry::init(colloquy::config::LogFormat::Pretty);
        }
    });
}

/// Creates an empty database on the server named by `DATABASE_URL` and returns its URL.
pub async fn fresh_database() -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL must be set (run scripts/test)");
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    let name = format!("colloquy_test_{}", Uuid::new_v4().simple());
    url.set_path("/postgres");
    let mut admin = PgConnection::connect(url.as_str())
        .await
        .expect("connect to postgres");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let url = fresh_database().await;
    spawn_on(&url, configure).await
}

/// Starts a server on an existing database (two servers may share one).
pub async fn spawn_on(database_url: &str, configure: impl FnOnce(&mut Config)) -> TestApp {
    start(database_url, configure, true).await
}

/// Starts a server without waiting for its database (which may be down).
pub async fn spawn_unready(database_url: &str, configure: impl FnOnce(&mut Config)) -> TestApp {
    start(database_url, configure, false).await
}

async fn start(database_url: &str, configure: impl FnOnce(&mut Config), wait: bool) -> TestApp {
    init_logs();
    let mut config = Config::with_database(database_url, SECRET);
    config.database_max_connections = 10;
    configure(&mut config);
    let server = Server::build(config).await.expect("build server");
    if wait {
        server
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("migrations");
    }
    let addr = server.local_addr();
    let db = server.state().db.clone();
    let shutdown = server.state().shutdown.clone();
    let task = tokio::spawn(server.run_until_stopped());
    TestApp {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        db,
        database_url: database_url.to_owned(),
        shutdown,
        task: Some(task),
    }
}

pub fn token(sub: &str) -> String {
    token_of(sub, PrincipalKind::User, false)
}

pub fn token_of(sub: &str, kind: PrincipalKind, admin: bool) -> String {
    mint(
        SECRET,
        &TokenRequest {
            sub,
            kind,
            name: Some(sub),
            ttl: Duration::from_secs(3600),
            admin,
            issuer: None,
            audience: None,
            owner: None,
        },
    )
    .expect("mint token")
}

pub fn api(path: &str) -> String {
    format!("/api/v1/communication{path}")
}

impl TestApp {
    /// A handle on a server running elsewhere (a child process) over `database_url`.
    pub fn external(addr: SocketAddr, database_url: &str) -> TestApp {
        TestApp {
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            db: PgPool::connect_lazy(database_url).expect("database url"),
            database_url: database_url.to_owned(),
            shutdown: CancellationToken::new(),
            task: None,
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    /// Creates a conversation owned by `owner` with `others` as members; returns its id.
    pub async fn conversation(&self, owner: &str, others: &[&str]) -> String {
        let (status, body) = self
            .post(
                &api("/conversations"),
                &token(owner),
                json!({ "name": "test", "participants": others }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["conversation_id"].as_str().expect("id").to_owned()
    }

    pub async fn send(&self, who: &str, conversation: &str, text: &str) -> Value {
        let (status, body) = self
            .post(
                &api(&format!("/messages/conversations/{conversation}")),
                &token(who),
                json!({ "text": text }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
