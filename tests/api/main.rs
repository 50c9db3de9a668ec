//! Integration tests: real servers, real Postgres (a fresh database per test).

mod helpers;

mod access;
mod bad_input;
mod clients;
mod conversations;
mod crud;
mod delivery;
mod deployment;
mod faults;
mod fuzz;
mod general_bots;
mod guests;
mod history;
mod hostile;
mod insights;
mod intelligence;
mod messages;
mod messaging;
mod operations;
mod participants;
mod realtime;
mod receiver;
mod redis_bus;
mod resilience;
mod responders;
mod resume;
mod security;
mod seed_client;
mod sequencing;
mod sio;
mod transfer;
mod webhooks;
