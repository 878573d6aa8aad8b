//! `warden runs list|show`: the run store, read.

use super::{progress, DbArg};
use anyhow::anyhow;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum RunsCmd {
    /// Recent runs, newest first.
    List {
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        story: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One run: its steps, errors, sub-story runs and audit records.
    Show {
        id: String,
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        json: bool,
    },
    /// Re-execute a run's recorded steps (and its sub-stories') offline: each capability call
    /// answered from the recording and compared with what the plugin asks now. Exit 0 when
    /// every step behaves as recorded, 1 with the first divergence or output difference.
    Replay {
        id: String,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        policy: super::PolicyArg,
        /// Only this step.
        #[arg(long)]
        step: Option<String>,
        /// Replay with this component instead of the policy's plugin (e.g. the next version).
        #[arg(long, value_name = "FILE")]
        plugin: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: RunsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RunsCmd::List { db, story, state, limit, json } => {
            let store = warden::store::open(&db.db)?;
            let runs = store.list_runs(story.as_deref(), state.as_deref(), false, limit, 0)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
                return Ok(ExitCode::SUCCESS);
            }
            for r in runs {
                let took = match (r.started_ms, r.finished_ms) {
                    (Some(a), Some(b)) => format!("{:.1}s", (b.saturating_sub(a)) as f64 / 1000.0),
                    _ => "-".into(),
                };
                let err = r.error.map(|e| format!("  {e}")).unwrap_or_default();
                println!("{}  {:<10} {:<20} {:>7}  {}{err}", r.id, r.state, r.story, took, r.trigger);
            }
        }
        RunsCmd::Show { id, db, json } => {
            let store = warden::store::open(&db.db)?;
            let Some(run) = store.get_run(&id)? else {
                return Err(anyhow!("no run `{id}` in {} (see `warden runs list`)", warden::store::describe(&db.db)));
            };
            let recordings = warden::store::recordings_of_tree(store.as_ref(), &id)?;
            if json {
                let mut body = serde_json::to_value(&run)?;
                body["recording"] = serde_json::json!(warden::store::recording_state(&recordings));
                body["recordings"] = serde_json::json!(recordings);
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                progress::print_run(&run);
                let state = warden::store::recording_state(&recordings);
                println!(
                    "  recording: {state} ({} step attempt(s) recorded here and in sub-stories; `warden runs replay {id}` re-executes them offline)",
                    recordings.len()
                );
                if let Some(trace) = &run.run.trace_id {
                    println!("  trace: {trace} (its spans in your tracing backend)");
                }
            }
        }
        RunsCmd::Replay { id, db, policy, step, plugin, json } => {
            let store = warden::store::open(&db.db)?;
            let policy = super::common::load_policy(&policy)?;
            let rt = warden::runtime::Runtime::new(warden::runtime::RuntimeConfig::default())?;
            let other = plugin.as_deref().map(|p| rt.load_file(p)).transpose()?;
            let steps = warden::story::replay::replay_run(&rt, &policy, store.as_ref(), &id, step.as_deref(), other.as_ref()).await?;
            if steps.is_empty() {
                return Err(anyhow!("run {id} has no recorded step{}; only action steps are recorded", step.map(|s| format!(" `{s}`")).unwrap_or_default()));
            }
            let differ = steps.iter().filter(|s| s.differs.is_some()).count();
            if json {
                println!("{}", serde_json::to_string_pretty(&steps)?);
            } else {
                for s in &steps {
                    let at = s.item.map(|i| format!("[{i}]")).unwrap_or_default();
                    match &s.differs {
                        None => println!("same      run {} step {}{at} attempt {} ({}, {} call(s))", s.run, s.step, s.attempt, s.plugin, s.calls),
                        Some(why) => println!("DIFFERS   run {} step {}{at} attempt {} ({}): {why}", s.run, s.step, s.attempt, s.plugin),
                    }
                }
                println!("{} of {} recorded step attempt(s) replayed identically", steps.len() - differ, steps.len());
            }
            return Ok(if differ == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
    }
    Ok(ExitCode::SUCCESS)
}
