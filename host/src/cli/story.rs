//! `warden story run|check`.

use super::common::{folder_of, load_library, load_policy, read_input};
use super::{progress, DbArg, PolicyArg, StoriesArg};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use warden::runtime::{Runtime, RuntimeConfig};
use warden::story::engine::{Observer, Quiet, StoryRunner};
use warden::story::invoke::{Invoke, PolicyInvoker};
use warden::story::{Body, Library, StepKind};

#[derive(Subcommand)]
pub enum StoryCmd {
    /// Run a story, showing each step live, and print its output JSON.
    Run {
        /// A story file, or a story name from --stories.
        story: String,
        /// Input JSON, or @file.
        #[arg(long, default_value = "{}")]
        input: String,
        #[command(flatten)]
        policy: PolicyArg,
        #[command(flatten)]
        stories: StoriesArg,
        #[command(flatten)]
        db: DbArg,
        /// Print the whole run result (id, state, output, error) as JSON.
        #[arg(long)]
        json: bool,
        /// No live progress on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Validate story files (and their plugins and sub-stories) without running them.
    Check {
        /// A story file or a folder of them.
        path: PathBuf,
        #[command(flatten)]
        policy: PolicyArg,
    },
}

/// With teams, every action step's plugin vetted for its story's team, as a
/// run would: one `file:line: …` per step whose plugin would be refused.
async fn refused_plugins(policy: warden::Policy, library: &Library) -> anyhow::Result<Vec<String>> {
    if policy.teams.is_empty() {
        return Ok(Vec::new());
    }
    let invoker = PolicyInvoker::new(Arc::new(Runtime::new(RuntimeConfig::default())?), Arc::new(policy));
    let mut refused = Vec::new();
    for story in library.stories.values() {
        for step in story.all_steps() {
            if let StepKind::Action(plugin) = &step.kind {
                if let Err(e) = invoker.prepare(plugin, &story.team).await {
                    refused.push(format!("{}:{}: step `{}`: {}", story.file.display(), step.line, step.id, e.message));
                }
            }
        }
    }
    Ok(refused)
}

pub async fn run(cmd: StoryCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        StoryCmd::Run { story, input, policy, stories, db, json, quiet } => {
            let policy = Arc::new(load_policy(&policy)?);
            let input: serde_json::Value = serde_json::from_str(&read_input(&input)?)?;
            let (library, name) = load_library(&story, stories.stories.as_deref())?;
            library.check(&policy)?;
            let store = warden::store::open(&db.db)?;
            let rt = Arc::new(Runtime::new(RuntimeConfig::default())?);
            let engine = StoryRunner::new(rt, policy, Arc::new(library), store);
            let observer: Box<dyn Observer> = if quiet { Box::new(Quiet) } else { Box::new(progress::Progress::new()) };
            let result = engine.run(&name, input, "cli", observer.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else if let Some(out) = &result.output {
                println!("{}", serde_json::to_string_pretty(out)?);
            }
            if result.state == warden::story::RunState::Waiting {
                eprintln!(
                    "warden: run {} waits at step {} for a decision (see `warden approvals list`); once decided, `warden serve` on this store resumes it",
                    result.run_id,
                    result.failed_step.as_deref().unwrap_or("?")
                );
                return Ok(ExitCode::from(3));
            }
            match &result.error {
                None => Ok(ExitCode::SUCCESS),
                Some(e) => {
                    eprintln!("warden: run {} failed at step {}: {}", result.run_id, result.failed_step.as_deref().unwrap_or("?"), e.message);
                    Ok(ExitCode::from(1))
                }
            }
        }
        StoryCmd::Check { path, policy } => {
            let policy = load_policy(&policy)?;
            let library = Library::load_dir(if path.is_dir() { &path } else { folder_of(&path) })?;
            library.check(&policy)?;
            let refused = refused_plugins(policy, &library).await?;
            for s in library.stories.values() {
                match &s.body {
                    Body::Graph(g) => println!("ok {} ({}, team {}, a graph of {} agents)", s.name, s.file.display(), s.team, g.agents.len()),
                    Body::Steps(b) => println!("ok {} ({}, team {}, {} steps)", s.name, s.file.display(), s.team, b.steps.len()),
                }
            }
            if refused.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            for line in &refused {
                eprintln!("{line}");
            }
            Err(anyhow::anyhow!("{} step(s) use a plugin their team refuses", refused.len()))
        }
    }
}
