//! The `colloquy` command line: `serve` (default), `migrate`, `token`.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::{
    Server,
    auth::{self, PrincipalKind, TokenRequest},
    config::Config,
    startup, telemetry,
};

#[derive(Parser)]
#[command(
    name = "colloquy",
    version,
    about = "Conversation server: REST, Socket.IO and WebSocket over Postgres"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Mint a development token signed with JWT_SECRET.
    Token(TokenArgs),
    /// Exit 0 when the server on COLLOQUY_LISTEN's port answers /healthz (container
    /// health checks without curl).
    Healthcheck,
}

#[derive(Args)]
struct TokenArgs {
    /// Principal id (`sub`).
    #[arg(long)]
    sub: String,
    #[arg(long, value_enum, default_value = "user")]
    kind: KindArg,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Lifetime, e.g. `24h`, `30m`, `7d`.
    #[arg(long, default_value = "24h")]
    ttl: humantime::Duration,
    /// Add the `admin` role.
    #[arg(long)]
    admin: bool,
    /// Agent tokens: the principal that owns the agent (a signed `owner` claim).
    #[arg(long)]
    owner: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    User,
    Agent,
    Service,
}

/// Every environment variable the binary reads (for checking deployment files).
pub fn known_env_vars() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

pub fn main() -> ExitCode {
    // A missing .env is normal; the environment wins over it.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("colloquy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("colloquy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            telemetry::init(cli.config.log_format);
            let server = Server::build(cli.config).await?;
            startup::cancel_on_signal(server.state().shutdown.clone());
            server.run_until_stopped().await
        }
        Command::Migrate => {
            telemetry::init(cli.config.log_format);
            let db = startup::pool(&cli.config)?;
            startup::MIGRATOR
                .run(&db)
                .await
                .context("running migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Healthcheck => {
            let url = format!("http://127.0.0.1:{}/healthz", cli.config.listen.port());
            let response = reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .with_context(|| format!("{url} unreachable"))?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url} answered {}",
                response.status()
            );
            Ok(())
        }
        Command::Token(args) => {
            let secret = cli
                .config
                .jwt_secret
                .as_ref()
                .context("JWT_SECRET must be set to mint a token")?;
            let token = auth::mint(
                secret.expose(),
                &TokenRequest {
                    sub: &args.sub,
                    kind: match args.kind {
                        KindArg::User => PrincipalKind::User,
                        KindArg::Agent => PrincipalKind::Agent,
                        KindArg::Service => PrincipalKind::Service,
                    },
                    name: args.name.as_deref(),
                    ttl: Duration::from(args.ttl),
                    admin: args.admin,
                    issuer: cli.config.jwt_issuer.as_deref(),
                    audience: cli.config.jwt_audience.as_deref(),
                    owner: args.owner.as_deref(),
                },
            )?;
            println!("{token}");
            Ok(())
        }
    }
}
