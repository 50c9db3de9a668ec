//! Schema fuzzing: schemathesis (scripts/fuzz) against a live server's own `/openapi.json`
//! finds no server error and no answer the document does not describe (contract §3).

use std::process::Stdio;

use crate::helpers::{spawn_app_with, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_mismatch_with_the_openapi_document() {
    // Thousands of requests from one principal: the limiter is not what is under test here.
    let app = spawn_app_with(|c| c.rate_limit_per_minute = 1_000_000).await;
    let owner = "fuzz-owner";
    let conversation = app.conversation(owner, &["fuzz-peer"]).await;
    let message = app.send(owner, &conversation, "fuzz target").await["id"]
        .as_str()
        .expect("message id")
        .to_owned();
    let scratch_conversation = app.conversation(owner, &["fuzz-peer"]).await;
    let scratch_message = app.send(owner, &conversation, "fuzz scratch").await["id"]
        .as_str()
        .expect("message id")
        .to_owned();

    let root = env!("CARGO_MANIFEST_DIR");
    let output = tokio::process::Command::new(format!("{root}/scripts/fuzz"))
        .arg(&app.base)
        .env("FUZZ_TOKEN", token(owner))
        .env("FUZZ_CONVERSATION_ID", &conversation)
        .env("FUZZ_MESSAGE_ID", &message)
        .env("FUZZ_SCRATCH_CONVERSATION_ID", &scratch_conversation)
        .env("FUZZ_SCRATCH_MESSAGE_ID", &scratch_message)
        .env("FUZZ_REPORT_DIR", format!("{root}/target/fuzz"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("scripts/fuzz runs (bash and python3 are needed)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    match output.status.code() {
        Some(0) => {}
        Some(77) => panic!(
            "schemathesis is not installed and could not be (tests/fuzz/requirements.txt into .venv); \
             the fuzzing test cannot run without it"
        ),
        _ => panic!(
            "schemathesis reported failures (report above, files in target/fuzz): {}",
            stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
        ),
    }
    app.stop().await;
}
