//! `warden action run|describe`: one plugin, once, outside any story.

use super::cassette;
use super::common::{load_policy, policy_name, read_input, resolve_plugin};
use super::PolicyArg;
use anyhow::anyhow;
use clap::Subcommand;
use std::process::ExitCode;
use std::sync::Arc;
use warden::recording::Tape;
use warden::runtime::{Runtime, RuntimeConfig};
use warden::story::invoke::PolicyInvoker;
use warden::InvocationInfo;

#[derive(Subcommand)]
pub enum ActionCmd {
    /// Run an action once and print its output JSON on stdout.
    Run {
        /// A plugin name from the policy, or a path to a .wasm component.
        plugin: String,
        /// Input JSON, or @file to read it from a file.
        #[arg(long, default_value = "{}")]
        input: String,
        #[command(flatten)]
        policy: PolicyArg,
        /// Run it as this team: the team's trust (pin or signature) and grant apply, as in a story.
        /// Required when the policy has teams.
        #[arg(long)]
        team: Option<String>,
        /// Print every audit record (JSON lines) on stderr.
        #[arg(long)]
        audit: bool,
        /// Do not print the action's log lines on stderr.
        #[arg(long, short)]
        quiet: bool,
        /// Record every capability call and WASI read into FILE (a cassette for
        /// `warden plugin test`); no credential value is ever in it.
        #[arg(long, value_name = "FILE")]
        record: Option<std::path::PathBuf>,
    },
    /// Print an action's manifest (name, version, schemas, expected hosts and credentials).
    Describe {
        plugin: String,
        #[command(flatten)]
        policy: PolicyArg,
    },
}

pub async fn run(cmd: ActionCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ActionCmd::Run { plugin, input, policy, team, audit, quiet, record } => {
            let policy = Arc::new(load_policy(&policy)?);
            let input = read_input(&input)?;
            let rt = Arc::new(Runtime::new(RuntimeConfig::default())?);
            let team = match (team, policy.teams.is_empty()) {
                (Some(t), _) => t,
                (None, true) => "cli".to_string(),
                (None, false) => return Err(anyhow!("{} has teams: give --team TEAM, so the plugin runs with that team's trust and grant", policy.file)),
            };
            let info = InvocationInfo { run_id: format!("cli-{}", warden::audit::now_ms()), team: team.clone(), attempt: 1, ..Default::default() };
            // The same path as a story step: loaded, vetted for the team, run under its grant.
            let (loaded, grant) = match policy_name(&policy, &plugin) {
                Some(name) => {
                    let p = PolicyInvoker::new(rt.clone(), policy.clone())
                        .plugin(&name, &team)
                        .await
                        .map_err(|e| anyhow!("{name} for team {team}: {}", e.message))?;
                    (p, policy.grant_for_team(&name, &team))
                }
                None if policy.teams.is_empty() => resolve_plugin(&rt, &policy, &plugin)?,
                None => return Err(anyhow!("`{plugin}` is not a plugin of {}; with teams, only the policy's vetted plugins run", policy.file)),
            };
            let tape = match &record {
                Some(_) => Tape::record(grant.limits.recording_bytes),
                None => Tape::Live,
            };
            let report = rt.invoke_taped(&loaded, grant, info.clone(), &input, None, tape.clone()).await;
            if let Some(path) = &record {
                cassette::save(&tape, path, &loaded, &info, &input, &report)?;
            }
            if !quiet {
                for line in &report.logs {
                    eprintln!("[{} {}] {}", line.level, line.source, line.message.trim_end());
                }
            }
            if audit {
                for rec in &report.audit {
                    eprintln!("audit: {}", serde_json::to_string(rec)?);
                }
            }
            match report.outcome {
                Ok(output) => {
                    let value: serde_json::Value = serde_json::from_str(&output)?;
                    println!("{}", serde_json::to_string_pretty(&value)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("warden: {}: {e}", report.plugin);
                    Ok(ExitCode::from(1))
                }
            }
        }
        ActionCmd::Describe { plugin, policy } => {
            let policy = load_policy(&policy)?;
            let rt = Runtime::new(RuntimeConfig::default())?;
            let (plugin, _) = resolve_plugin(&rt, &policy, &plugin)?;
            let manifest = rt.describe(&plugin).await?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
