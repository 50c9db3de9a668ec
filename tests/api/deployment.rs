//! The container files: every variable they set is one the binary reads, and the image's
//! health check command works.

use std::process::Command;

use crate::helpers::spawn_app;

/// `KEY:` / `KEY=` names in the Colloquy parts of a deployment file.
fn keys(text: &str, separator: char) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(separator))
        .map(|(k, _)| k.trim().trim_start_matches("ENV ").trim().to_owned())
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect()
}

fn understood(key: &str) -> bool {
    // RUST_LOG is read by the tracing filter rather than by clap.
    key == "RUST_LOG" || colloquy::cli::known_env_vars().iter().any(|k| k == key)
}

#[test]
fn the_compose_file_and_dockerfile_only_set_variables_the_binary_reads() {
    let compose = include_str!("../../docker-compose.yml");
    let colloquy_part = compose
        .split("services:")
        .next()
        .expect("an x-colloquy block before services");
    let set = keys(colloquy_part, ':');
    assert!(set.contains(&"DATABASE_URL".to_owned()) && set.contains(&"JWT_SECRET".to_owned()));
    for key in &set {
        assert!(
            understood(key),
            "docker-compose.yml sets {key}, which colloquy ignores"
        );
    }

    let dockerfile = include_str!("../../Dockerfile");
    let env_lines: String = dockerfile
        .split("ENV ")
        .nth(1)
        .expect("an ENV instruction")
        .lines()
        .take_while(|l| l.trim_end().ends_with('\\') || l.contains('='))
        .collect::<Vec<_>>()
        .join("\n");
    let set = keys(&env_lines, '=');
    assert!(set.contains(&"COLLOQUY_LISTEN".to_owned()), "{set:?}");
    for key in &set {
        assert!(
            understood(key),
            "the Dockerfile sets {key}, which colloquy ignores"
        );
    }
    assert!(
        dockerfile.contains("USER 10001"),
        "the image runs as non-root"
    );
    assert!(dockerfile.contains("HEALTHCHECK"));
}

#[tokio::test]
async fn the_healthcheck_subcommand_reports_the_server_state() {
    let app = spawn_app().await;
    let run = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_colloquy"))
            .arg("healthcheck")
            .env("COLLOQUY_LISTEN", format!("0.0.0.0:{port}"))
            .env_remove("DATABASE_URL")
            .status()
            .expect("run colloquy healthcheck")
    };
    let port = app.addr.port();
    let ok = tokio::task::spawn_blocking(move || run(port))
        .await
        .expect("join");
    assert!(ok.success());
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        drop(l);
        p
    };
    let down = tokio::task::spawn_blocking(move || run(closed))
        .await
        .expect("join");
    assert!(!down.success());
}
