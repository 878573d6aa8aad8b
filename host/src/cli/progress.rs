//! Human output for the CLI: live progress of a story run, and `runs show`.

use std::io::Write;
use std::time::Duration;
use warden::store::RunDetail;
use warden::story::engine::{Event, Observer};
use warden::story::StepState;

pub struct Progress {
    out: std::sync::Mutex<std::io::Stderr>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress { out: std::sync::Mutex::new(std::io::stderr()) }
    }
}

fn secs(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn item(i: Option<usize>) -> String {
    i.map(|i| format!("[{i}]")).unwrap_or_default()
}

impl Observer for Progress {
    fn event(&self, e: &Event) {
        let mut out = self.out.lock().unwrap();
        let _ = match e {
            Event::RunStarted { run, story, depth, .. } => writeln!(out, "{}▶ story {story} (run {run})", "  ".repeat(*depth)),
            Event::StepStarted { step, item: i, attempt, depth, .. } => {
                let again = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                writeln!(out, "{}  … {step}{}{again}", "  ".repeat(*depth), item(*i))
            }
            Event::StepFinished { step, item: i, state, elapsed, error, depth, .. } => {
                let mark = match *state {
                    StepState::Succeeded => "✓",
                    StepState::Skipped => "–",
                    StepState::Retrying => "↻",
                    StepState::Continued => "!",
                    StepState::Waiting => "⏸",
                    _ => "✗",
                };
                let why = error.map(|e| format!(": {}", e.message)).unwrap_or_default();
                writeln!(out, "{}  {mark} {step}{} {state} in {}{why}", "  ".repeat(*depth), item(*i), secs(*elapsed))
            }
            Event::Log { step, line, depth, .. } => {
                let msg = line.message.trim_end().replace('\n', " ");
                writeln!(out, "{}      {step}: {msg}", "  ".repeat(*depth))
            }
            Event::RunFinished { story, state, elapsed, depth, .. } => {
                writeln!(out, "{}■ story {story} {state} in {}", "  ".repeat(*depth), secs(*elapsed))
            }
            Event::Audit { step, record, .. } if record.decision == warden::audit::Verdict::Denied => {
                writeln!(out, "      {step}: denied {} {} ({})", record.method, record.url, record.rule)
            }
            Event::Audit { .. } | Event::Invoked { .. } => Ok(()),
        };
    }
}

pub fn print_run(run: &RunDetail) {
    let r = &run.run;
    let took = match (r.started_ms, r.finished_ms) {
        (Some(a), Some(b)) => format!("{:.1} s", b.saturating_sub(a) as f64 / 1000.0),
        _ => "-".into(),
    };
    println!("run {}  story {}  team {}  {}  ({}, trigger {})", r.id, r.story, r.team, r.state, took, r.trigger);
    if let Some(p) = &r.parent_run {
        println!("  sub-story run of {p}");
    }
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
    println!("steps:");
    for s in &run.steps {
        let took = match (s.started_ms, s.finished_ms) {
            (Some(a), Some(b)) => format!("{} ms", b.saturating_sub(a)),
            _ => "-".into(),
        };
        let err = s.error.as_ref().and_then(|e| e["message"].as_str()).map(|m| format!("  {m}")).unwrap_or_default();
        let it = s.item.map(|i| format!("[{i}]")).unwrap_or_default();
        println!("  {:<16} {:<9} {:<10} attempts {}  {took}{err}", format!("{}{it}", s.step_id), s.kind, s.state, s.attempts);
    }
    if !run.children.is_empty() {
        println!("sub-story runs:");
        for c in &run.children {
            println!("  {}  {}  {}", c.id, c.story, c.state);
        }
    }
    if !run.audit.is_empty() {
        println!("audit:");
        for a in &run.audit {
            if a["kind"] == "approval" {
                let choice = a["choice"].as_str().map(|c| format!("`{c}`")).unwrap_or_else(|| "nothing (expired)".into());
                let from = a["from"].as_str().map(|f| format!(" from {f}")).unwrap_or_default();
                println!(
                    "  {:<8} {:<7} {choice} by {} via {}{from}",
                    a["step"].as_str().unwrap_or(""),
                    a["decision"].as_str().unwrap_or(""),
                    a["decided_by"].as_str().unwrap_or(""),
                    a["via"].as_str().unwrap_or("")
                );
                continue;
            }
            let status = a["status"].as_u64().map(|s| s.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "  {:<8} {:<7} {} {} → {}  rule {}",
                a["step"].as_str().unwrap_or(""),
                a["decision"].as_str().unwrap_or(""),
                a["method"].as_str().unwrap_or(""),
                a["url"].as_str().unwrap_or(""),
                status,
                a["rule"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(out) = &run.output {
        println!("output: {out}");
    }
}
