//! Latency histograms and the result table.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::delivery::Figures;

/// Microsecond latencies, 1 µs … 60 s, 3 significant digits.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(
            Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| {
                Histogram::new(3)
                    .unwrap_or_else(|_| unreachable!("3 significant figures are valid"))
            }),
        )
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_us(&mut self, us: u64) {
        let _ = self.0.record(us.clamp(1, 60_000_000));
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    fn ms(&self, q: f64) -> String {
        if self.0.is_empty() {
            return "–".into();
        }
        let us = if q >= 1.0 {
            self.0.max()
        } else {
            self.0.value_at_quantile(q)
        };
        format!("{:.2}", us as f64 / 1000.0)
    }

    pub fn p50(&self) -> String {
        self.ms(0.5)
    }
    pub fn p99(&self) -> String {
        self.ms(0.99)
    }
    pub fn max(&self) -> String {
        self.ms(1.0)
    }
}

/// One row of the table.
pub struct Row {
    pub scenario: String,
    pub throughput: String,
    pub ack: Latency,
    /// Emit by a sender → `messageBroadcast` received at a listener.
    pub delivery: Latency,
    /// Per-socket delivery checks; `None` for scenarios without listeners.
    pub delivery_check: Option<Figures>,
    pub errors: u64,
    pub rss: String,
    pub notes: String,
}

impl Row {
    pub fn new(scenario: impl Into<String>) -> Self {
        Self {
            scenario: scenario.into(),
            throughput: "–".into(),
            ack: Latency::default(),
            delivery: Latency::default(),
            delivery_check: None,
            errors: 0,
            rss: "–".into(),
            notes: String::new(),
        }
    }
}

/// The result table; the real-time rows' delivery checks are the `out_of_order`, `missed`
/// and `dup_delivered` columns ("–" where a scenario has no listeners).
pub fn table(rows: &[Row], cores: usize) -> String {
    let mut out = String::from(
        "| scenario | throughput | ack/req p50 ms | ack/req p99 ms | ack/req max ms | delivery p50 ms (send→listener) | delivery p99 ms (send→listener) | out_of_order | missed | dup_delivered | errors | server RSS | cores | notes |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (out_of_order, missed, dup_delivered) = r.delivery_check.map_or_else(
            || ("–".to_owned(), "–".to_owned(), "–".to_owned()),
            |f| {
                (
                    f.out_of_order.to_string(),
                    f.missed.to_string(),
                    f.dup_delivered.to_string(),
                )
            },
        );
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.throughput,
            r.ack.p50(),
            r.ack.p99(),
            r.ack.max(),
            r.delivery.p50(),
            r.delivery.p99(),
            out_of_order,
            missed,
            dup_delivered,
            r.errors,
            r.rss,
            cores,
            r.notes
        ));
    }
    out
}
