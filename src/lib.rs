//! Colloquy: a conversation server. REST, Socket.IO and WebSocket transports over one
//! core of operations, persisted in Postgres.

pub mod auth;
pub mod cli;
pub mod compat;
pub mod config;
pub mod core;
pub mod dispatch;
pub mod error;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod realtime;
pub mod responder;
pub mod startup;
pub mod state;
pub mod summarize;
pub mod telemetry;

pub use startup::Server;
