//! The official clients users run: socket.io-client (Node) and python-socketio.

use std::process::Command;

use crate::helpers::{TestApp, spawn_app, token};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn run_flow(app: &TestApp, program: &str, script: &str) {
    let cid = app.conversation("alice", &["bob"]).await;
    let output = tokio::task::spawn_blocking({
        let (program, script) = (program.to_owned(), script.to_owned());
        let (url, alice, bob) = (app.base.clone(), token("alice"), token("bob"));
        move || {
            Command::new(program)
                .arg(script)
                .env("COLLOQUY_URL", url)
                .env("TOKEN_ALICE", alice)
                .env("TOKEN_BOB", bob)
                .env("CONVERSATION_ID", cid)
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
}

#[tokio::test]
async fn the_official_node_socket_io_client_runs_a_full_flow() {
    let app = spawn_app().await;
    let dir = root().join("tests/clients/node");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "run `npm ci` in tests/clients/node (scripts/test does)"
    );
    run_flow(&app, "node", dir.join("flow.mjs").to_str().unwrap()).await;
}

#[tokio::test]
async fn the_official_python_socketio_client_runs_a_full_flow() {
    let app = spawn_app().await;
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "create the venv with tests/clients/python/requirements.txt (scripts/test does)"
    );
    run_flow(
        &app,
        python.to_str().unwrap(),
        root()
            .join("tests/clients/python/flow.py")
            .to_str()
            .unwrap(),
    )
    .await;
}

/// Runs a resume/inbox script (`resume.mjs`, `resume.py`): `CONVERSATION_ID` and
/// `INBOX_CONVERSATION_ID` are two conversations alice created with bob, with no messages.
async fn run_resume_script(app: &TestApp, program: &str, script: &str) {
    let cid = app.conversation("alice", &["bob"]).await;
    let inbox = app.conversation("alice", &["bob"]).await;
    let output = tokio::task::spawn_blocking({
        let (program, script) = (program.to_owned(), script.to_owned());
        let (url, alice, bob) = (app.base.clone(), token("alice"), token("bob"));
        move || {
            Command::new(program)
                .arg(script)
                .env("COLLOQUY_URL", url)
                .env("TOKEN_ALICE", alice)
                .env("TOKEN_BOB", bob)
                .env("CONVERSATION_ID", cid)
                .env("INBOX_CONVERSATION_ID", inbox)
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
    print!("{}", String::from_utf8_lossy(&output.stdout));
}

#[tokio::test]
async fn the_official_node_client_resumes_after_a_drop_and_hears_its_inbox() {
    let app = spawn_app().await;
    let dir = root().join("tests/clients/node");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "run `npm ci` in tests/clients/node (scripts/test does)"
    );
    run_resume_script(&app, "node", dir.join("resume.mjs").to_str().unwrap()).await;
}

#[tokio::test]
async fn the_official_python_client_resumes_after_a_drop_and_hears_its_inbox() {
    let app = spawn_app().await;
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "create the venv with tests/clients/python/requirements.txt (scripts/test does)"
    );
    run_resume_script(
        &app,
        python.to_str().unwrap(),
        root()
            .join("tests/clients/python/resume.py")
            .to_str()
            .unwrap(),
    )
    .await;
}
