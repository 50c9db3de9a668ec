//! Integration tests: real servers, real Postgres (a fresh database per test).

mod helpers;

mod access;
mod bad_input;
mod clients;
mod conversations;
mod deployment;
mod history;
mod insights;
mod intelligence;
mod messages;
mod operations;
mod participants;
mod realtime;
mod resilience;
mod sequencing;
mod sio;
