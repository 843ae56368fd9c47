//! Prometheus metrics in the text exposition format: sessions by state,
//! snapshot and restore durations (summaries: count and sum), appends.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::State;

/// A count and a total duration.
#[derive(Default)]
pub struct Timing {
    count: AtomicU64,
    micros: AtomicU64,
}

impl Timing {
    /// Records one duration.
    pub fn observe(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} summary");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum {:.6}", self.micros.load(Ordering::Relaxed) as f64 / 1e6);
    }
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    /// Snapshots taken to suspend sessions.
    pub snapshot: Timing,
    /// Restores of suspended or crashed sessions.
    pub restore: Timing,
    /// Entries appended to context logs (user messages and agent appends).
    pub appends: AtomicU64,
}

impl Metrics {
    /// The text exposition, given how many sessions are in each state.
    pub fn render(&self, by_state: &[(State, usize)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP hiber_sessions Sessions by state.\n# TYPE hiber_sessions gauge\n");
        for (state, n) in by_state {
            let _ = writeln!(out, "hiber_sessions{{state=\"{}\"}} {n}", state.as_str());
        }
        self.snapshot.render(&mut out, "hiber_snapshot_seconds", "Time to snapshot and stop a session's sandbox.");
        self.restore.render(&mut out, "hiber_restore_seconds", "Time to restore a session's sandbox.");
        out.push_str(
            "# HELP hiber_appends_total Entries appended to context logs.\n# TYPE hiber_appends_total counter\n",
        );
        let _ = writeln!(out, "hiber_appends_total {}", self.appends.load(Ordering::Relaxed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        m.snapshot.observe(Duration::from_millis(60));
        m.appends.fetch_add(3, Ordering::Relaxed);
        let text = m.render(&[(State::Idle, 2)]);
        assert!(text.contains("hiber_sessions{state=\"idle\"} 2"), "{text}");
        assert!(text.contains("hiber_snapshot_seconds_count 1"), "{text}");
        assert!(text.contains("hiber_snapshot_seconds_sum 0.060000"), "{text}");
        assert!(text.contains("hiber_appends_total 3"), "{text}");
    }
}
