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
}

pub fn run(cmd: RunsCmd) -> anyhow::Result<ExitCode> {
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
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                progress::print_run(&run);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
