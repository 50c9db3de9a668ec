//! The official clients users run: socket.io-client (Node) and python-socketio.

use std::process::Command;

use crate::helpers::{TestApp, spawn_app, token};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs one client script with the server's URL, alice's and bob's tokens and `env`; it
/// must exit 0. Returns what it printed.
async fn run_client(
    app: &TestApp,
    program: &str,
    script: &str,
    env: Vec<(&'static str, String)>,
) -> String {
    let output = tokio::task::spawn_blocking({
        let (program, script) = (program.to_owned(), script.to_owned());
        let (url, alice, bob) = (app.base.clone(), token("alice"), token("bob"));
        move || {
            Command::new(program)
                .arg(script)
                .env("COLLOQUY_URL", url)
                .env("TOKEN_ALICE", alice)
                .env("TOKEN_BOB", bob)
                .envs(env)
                .output()
        }
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test installs the clients): {e}"));
    assert!(
        output.status.success(),
        "{script} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `node` and a script of `tests/clients/node`, checked to have its packages.
fn node(script: &str) -> (String, String) {
    let dir = root().join("tests/clients/node");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "run `npm ci` in tests/clients/node (scripts/test does)"
    );
    ("node".into(), dir.join(script).display().to_string())
}

/// The venv's python and a script of `tests/clients/python`.
fn python(script: &str) -> (String, String) {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "create the venv with tests/clients/python/requirements.txt (scripts/test does)"
    );
    (
        python.display().to_string(),
        root()
            .join("tests/clients/python")
            .join(script)
            .display()
            .to_string(),
    )
}

async fn run_flow(app: &TestApp, (program, script): (String, String)) {
    let cid = app.conversation("alice", &["bob"]).await;
    run_client(app, &program, &script, vec![("CONVERSATION_ID", cid)]).await;
}

#[tokio::test]
async fn the_official_node_socket_io_client_runs_a_full_flow() {
    let app = spawn_app().await;
    run_flow(&app, node("flow.mjs")).await;
}

#[tokio::test]
async fn the_official_python_socketio_client_runs_a_full_flow() {
    let app = spawn_app().await;
    run_flow(&app, python("flow.py")).await;
}

/// Runs a resume/inbox script (`resume.mjs`, `resume.py`): `CONVERSATION_ID` and
/// `INBOX_CONVERSATION_ID` are two conversations alice created with bob, with no messages.
async fn run_resume_script(app: &TestApp, (program, script): (String, String)) {
    let cid = app.conversation("alice", &["bob"]).await;
    let inbox = app.conversation("alice", &["bob"]).await;
    let env = vec![("CONVERSATION_ID", cid), ("INBOX_CONVERSATION_ID", inbox)];
    print!("{}", run_client(app, &program, &script, env).await);
}

#[tokio::test]
async fn the_official_node_client_resumes_after_a_drop_and_hears_its_inbox() {
    let app = spawn_app().await;
    run_resume_script(&app, node("resume.mjs")).await;
}

#[tokio::test]
async fn the_official_python_client_resumes_after_a_drop_and_hears_its_inbox() {
    let app = spawn_app().await;
    run_resume_script(&app, python("resume.py")).await;
}

#[tokio::test]
async fn the_official_node_client_sees_a_responder_stream_then_the_reply_and_complete() {
    use colloquy::auth::PrincipalKind;
    use reqwest::{Method, StatusCode};
    use serde_json::json;

    let app = crate::helpers::spawn_app_with(|c| c.webhook_allow_private = "true".into()).await;
    let provider = crate::receiver::Provider::start().await;
    let admin = crate::helpers::token_of("root", PrincipalKind::User, true);
    let (s, body) = app
        .request(
            Method::PUT,
            &crate::helpers::api("/agents/helper/responder"),
            Some(&admin),
            Some(json!({ "model": "slow", "base_url": provider.base_url() })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, body) = app
        .post(
            &crate::helpers::api("/conversations"),
            &token("alice"),
            json!({ "participants": [{ "participant_id": "helper", "participant_type": "agent" }] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let cid = body["conversation_id"].as_str().unwrap().to_owned();
    let (program, script) = node("responder.mjs");
    print!(
        "{}",
        run_client(&app, &program, &script, vec![("CONVERSATION_ID", cid)]).await
    );
}
