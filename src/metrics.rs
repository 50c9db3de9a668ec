//! Prometheus metrics: one process-wide recorder, rendered at `/metrics`.

use std::{sync::OnceLock, time::Duration};

use axum::http::{Method, StatusCode};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder once per process (tests start many servers in one process).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            gauge!("colloquy_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Some(handle)
        })
        .as_ref()
}

pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

pub fn record_http(method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route.to_owned()),
        ("status", status.as_u16().to_string()),
    ];
    counter!("colloquy_http_requests_total", &labels).increment(1);
    histogram!("colloquy_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
}

pub fn message_persisted() {
    counter!("colloquy_messages_persisted_total").increment(1);
}

pub fn send_acked(transport: &'static str, elapsed: Duration) {
    histogram!("colloquy_send_ack_seconds", "transport" => transport).record(elapsed.as_secs_f64());
}

pub fn rate_limited(transport: &'static str) {
    counter!("colloquy_rate_limited_total", "transport" => transport).increment(1);
}

pub fn connection_opened(transport: &'static str) {
    gauge!("colloquy_connections", "transport" => transport).increment(1.0);
}

pub fn connection_closed(transport: &'static str) {
    gauge!("colloquy_connections", "transport" => transport).decrement(1.0);
}

pub fn broadcast_delivered(transport: &'static str, n: u64) {
    counter!("colloquy_broadcast_deliveries_total", "transport" => transport).increment(n);
}

pub fn pool(in_use: u32, idle: u32) {
    gauge!("colloquy_db_pool_connections", "state" => "in_use").set(f64::from(in_use));
    gauge!("colloquy_db_pool_connections", "state" => "idle").set(f64::from(idle));
}

pub fn summary_fallback() {
    counter!("colloquy_summary_fallbacks_total").increment(1);
}

/// Sends stored by one group-commit statement.
pub fn write_batch(size: usize) {
    histogram!("colloquy_write_batch_size").record(size as f64);
}

/// Events the delivery stage could not take (its queue was full); messages among them are
/// recovered from the log.
pub fn delivery_backlog_dropped() {
    counter!("colloquy_delivery_backlog_dropped_total").increment(1);
}

/// Messages delivered from the log because their wake-up was late, lost or never sent.
pub fn delivery_gap_filled(n: usize) {
    counter!("colloquy_delivery_gap_filled_total").increment(n as u64);
}

/// Message wake-ups dropped because that `seq` was already delivered.
pub fn delivery_duplicate() {
    counter!("colloquy_delivery_duplicates_total").increment(1);
}

/// A Socket.IO socket disconnected because its send buffer was full (it resumes).
pub fn slow_consumer_disconnected() {
    counter!("colloquy_slow_consumers_disconnected_total").increment(1);
}

/// Messages a resume or `join {since_seq}` read from the log for a client.
pub fn resumed_messages(n: usize) {
    counter!("colloquy_resumed_messages_total").increment(n as u64);
}

/// Wake-ups this process put on the event bus (Redis: one per channel published to).
pub fn bus_published(engine: &'static str, n: usize) {
    counter!("colloquy_bus_published_total", "bus" => engine).increment(n as u64);
}

/// Wake-ups the bus would not take (it was down); other processes read those messages
/// from the log.
pub fn bus_publish_failed(engine: &'static str, n: usize) {
    counter!("colloquy_bus_publish_failures_total", "bus" => engine).increment(n as u64);
}

/// Wake-ups this process read from the bus (its own included: each costs a decode).
pub fn bus_received(engine: &'static str) {
    counter!("colloquy_bus_received_total", "bus" => engine).increment(1);
}

/// The bus connection was lost (or could not be made) and is being made again.
pub fn bus_reconnect(engine: &'static str) {
    counter!("colloquy_bus_reconnects_total", "bus" => engine).increment(1);
}

pub fn bus_connected(engine: &'static str, up: bool) {
    gauge!("colloquy_bus_connected", "bus" => engine).set(if up { 1.0 } else { 0.0 });
}

/// Channels the Redis bus is subscribed to, by kind (`conversation`, `principal`).
pub fn bus_subscriptions(kind: &'static str, n: usize) {
    gauge!("colloquy_bus_subscriptions", "kind" => kind).set(n as f64);
}

/// A webhook delivery the endpoint accepted, `latency` after the event was committed.
pub fn webhook_delivered(latency: Duration) {
    counter!("colloquy_webhook_deliveries_total", "outcome" => "delivered").increment(1);
    histogram!("colloquy_webhook_latency_seconds").record(latency.as_secs_f64());
}

/// A failed webhook attempt; `dead` when it was the last (a dead letter now).
pub fn webhook_failed(dead: bool) {
    let outcome = if dead { "dead" } else { "failed" };
    counter!("colloquy_webhook_deliveries_total", "outcome" => outcome).increment(1);
}

/// The outbox: deliveries waiting, the oldest one's age, dead letters.
pub fn webhook_queue(pending: i64, oldest_seconds: f64, dead: i64) {
    gauge!("colloquy_webhook_queue_depth").set(pending as f64);
    gauge!("colloquy_webhook_oldest_pending_seconds").set(oldest_seconds);
    gauge!("colloquy_webhook_dead_letters").set(dead as f64);
}

/// How a responder's reply ended: `stored`, `dropped` or a `RESPONDER_*` code.
pub fn responder_outcome(outcome: &'static str) {
    counter!("colloquy_responder_replies_total", "outcome" => outcome).increment(1);
}

/// From the answered message's commit to the reply's first streamed delta.
pub fn responder_first_delta(message_created: chrono::DateTime<chrono::Utc>) {
    let latency = (chrono::Utc::now() - message_created)
        .to_std()
        .unwrap_or_default();
    histogram!("colloquy_responder_first_delta_seconds").record(latency.as_secs_f64());
}

/// A whole reply, from its start to the stored message.
pub fn responder_reply(elapsed: Duration) {
    histogram!("colloquy_responder_reply_seconds").record(elapsed.as_secs_f64());
}
