//! Prometheus metrics for `warden serve`: runs by state, step durations,
//! egress denials by rule, webhook answers, and instance pool use.

use crate::audit::Verdict;
use crate::story::engine::{Event, Observer};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

const BUCKETS: &[f64] = &[0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Default)]
pub struct Metrics {
    runs_finished: Mutex<BTreeMap<(String, String), u64>>,
    pub runs_in_flight: AtomicI64,
    pub runs_queued: AtomicI64,
    step_seconds: Mutex<BTreeMap<String, Histogram>>,
    denials: Mutex<BTreeMap<String, u64>>,
    webhooks: Mutex<BTreeMap<(String, u16), u64>>,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The runs of `story` a process finished, in any state, read back from the
/// text [`Metrics::render`] wrote (`warden_runs_finished_total`): how tests
/// and benches learn what one node did, with the line format kept here.
pub fn finished_runs(metrics_text: &str, story: &str) -> u64 {
    let prefix = format!("warden_runs_finished_total{{story=\"{}\",", esc(story));
    metrics_text.lines().filter(|l| l.starts_with(&prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

impl Metrics {
    pub fn webhook(&self, story: &str, code: u16) {
        *self.webhooks.lock().unwrap().entry((story.to_string(), code)).or_default() += 1;
    }

    /// `unfinished`: the store's top-level runs per unfinished state
    /// ([`crate::store::RunStore::count_unfinished`]); a state it lacks is 0.
    pub fn render(&self, instances: crate::runtime::PoolGauges, unfinished: &[(String, u64)], store: &crate::store::group::StoreHealth) -> String {
        let store_write_failures = store.failures();
        let (commits, writes) = store.commits();
        let mut out = String::new();
        out.push_str(
            "# HELP warden_runs_finished_total Story runs finished by this process, by story and final state.\n# TYPE warden_runs_finished_total counter\n",
        );
        for ((story, state), n) in self.runs_finished.lock().unwrap().iter() {
            let _ = writeln!(out, "warden_runs_finished_total{{story=\"{}\",state=\"{}\"}} {n}", esc(story), esc(state));
        }
        out.push_str("# HELP warden_runs Top-level runs in the run store not finished yet, by state (finished runs: warden_runs_finished_total).\n# TYPE warden_runs gauge\n");
        for state in crate::store::UNFINISHED_STATES {
            let n = unfinished.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "warden_runs{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP warden_store_write_failures_total Run store writes refused after every retry (each failed its run).\n# TYPE warden_store_write_failures_total counter\nwarden_store_write_failures_total {store_write_failures}");
        let _ = writeln!(out, "# HELP warden_store_commits_total Run store transactions committed (group commit: many writes share one).\n# TYPE warden_store_commits_total counter\nwarden_store_commits_total {commits}");
        let _ = writeln!(
            out,
            "# HELP warden_store_writes_total Run store writes committed.\n# TYPE warden_store_writes_total counter\nwarden_store_writes_total {writes}"
        );
        let _ = writeln!(
            out,
            "# HELP warden_runs_in_flight Runs executing now.\n# TYPE warden_runs_in_flight gauge\nwarden_runs_in_flight {}",
            self.runs_in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP warden_runs_waiting Runs accepted and waiting for a worker.\n# TYPE warden_runs_waiting gauge\nwarden_runs_waiting {}",
            self.runs_queued.load(Ordering::Relaxed)
        );
        out.push_str("# HELP warden_step_duration_seconds Step attempt durations by step kind.\n# TYPE warden_step_duration_seconds histogram\n");
        for (kind, h) in self.step_seconds.lock().unwrap().iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "warden_step_duration_seconds_bucket{{kind=\"{kind}\",le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "warden_step_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "warden_step_duration_seconds_sum{{kind=\"{kind}\"}} {}", h.sum);
            let _ = writeln!(out, "warden_step_duration_seconds_count{{kind=\"{kind}\"}} {}", h.count);
        }
        out.push_str(
            "# HELP warden_egress_denials_total Capability calls refused by policy, by the rule that refused.\n# TYPE warden_egress_denials_total counter\n",
        );
        for (rule, n) in self.denials.lock().unwrap().iter() {
            let _ = writeln!(out, "warden_egress_denials_total{{rule=\"{}\"}} {n}", esc(rule));
        }
        out.push_str("# HELP warden_webhooks_total Webhook requests by story and HTTP status.\n# TYPE warden_webhooks_total counter\n");
        for ((story, code), n) in self.webhooks.lock().unwrap().iter() {
            let _ = writeln!(out, "warden_webhooks_total{{story=\"{}\",code=\"{code}\"}} {n}", esc(story));
        }
        let _ = writeln!(
            out,
            "# HELP warden_instances_in_use Plugin instances alive now.\n# TYPE warden_instances_in_use gauge\nwarden_instances_in_use {}",
            instances.in_use
        );
        let _ = writeln!(
            out,
            "# HELP warden_instances_capacity Instance pool capacity.\n# TYPE warden_instances_capacity gauge\nwarden_instances_capacity {}",
            instances.capacity
        );
        let idle = instances.idle_resident;
        out.push_str("# HELP warden_instances_idle_resident_bytes Memory that finished instances' pool slots keep resident, wiped (zeroed or restored from the module image), for the next ones.\n# TYPE warden_instances_idle_resident_bytes gauge\n");
        for (kind, bytes) in [("memory", idle.memory), ("tables", idle.tables)] {
            let _ = writeln!(out, "warden_instances_idle_resident_bytes{{kind=\"{kind}\"}} {bytes}");
        }
        out
    }
}

/// Feeds [`Metrics`] (and the traces, when on) from engine events and logs
/// each run (human or JSON, per tracing's format; with its trace and span ids
/// when traced).
pub struct MetricsObserver<'a>(pub &'a Metrics, pub Option<&'a crate::telemetry::Telemetry>);

impl Observer for MetricsObserver<'_> {
    fn event(&self, e: &Event) {
        // A run's span exists once the traces are told of its start, and is
        // gone once told of its end: its ids are read after one, before the other.
        use crate::story::observe::TraceContext as _;
        let traced = |run: &str| self.1.and_then(|t| t.trace_of(run));
        let ending = match e {
            Event::RunFinished { run, depth: 0, .. } => traced(run),
            _ => None,
        };
        if let Some(t) = self.1 {
            t.event(e);
        }
        let trace = match e {
            Event::RunStarted { run, depth: 0, .. } => traced(run),
            _ => ending,
        };
        let (trace_id, span_id) = (trace.as_ref().map(|t| t.0.as_str()), trace.as_ref().map(|t| t.1.as_str()));
        match e {
            Event::StepFinished { step, kind, state, elapsed, run, error, .. } => {
                if *state != "skipped" {
                    self.0.step_seconds.lock().unwrap().entry(kind.to_string()).or_default().observe(elapsed.as_secs_f64());
                }
                if let Some(err) = error {
                    tracing::info!(run = %run, step = %step, state = %state, kind = %err.kind, "step {state}: {}", err.message);
                }
            }
            Event::Audit { record, .. } if record.decision == Verdict::Denied => {
                *self.0.denials.lock().unwrap().entry(record.rule.clone()).or_default() += 1;
            }
            // The trace fields are absent when the run is not traced.
            Event::RunStarted { run, story, depth: 0, .. } => tracing::info!(run = %run, story = %story, trace_id, span_id, "run started"),
            Event::RunFinished { run, story, state, elapsed, depth: 0 } => {
                *self.0.runs_finished.lock().unwrap().entry((story.to_string(), state.to_string())).or_default() += 1;
                tracing::info!(run = %run, story = %story, state = %state, ms = elapsed.as_millis() as u64, trace_id, span_id, "run finished");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_runs_reads_back_what_render_wrote_for_that_story_only() {
        let m = Metrics::default();
        for (story, state, n) in [("two", "succeeded", 7), ("two", "failed", 2), ("two-b", "succeeded", 5), ("say \"hi\"", "succeeded", 3)] {
            m.runs_finished.lock().unwrap().insert((story.to_string(), state.to_string()), n);
        }
        let text = m.render(crate::runtime::PoolGauges { capacity: 1, ..Default::default() }, &[], &crate::store::group::StoreHealth::default());
        assert_eq!(finished_runs(&text, "two"), 9, "every state of that story, not a story it prefixes");
        assert_eq!(finished_runs(&text, "two-b"), 5);
        assert_eq!(finished_runs(&text, "say \"hi\""), 3, "a name is escaped as render escapes it");
        assert_eq!(finished_runs(&text, "none"), 0);
    }
}
