//! `warden policy check|explain`.

use super::common::load_policy;
use super::{explain, PolicyArg};
use anyhow::anyhow;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use warden::runtime::{Runtime, RuntimeConfig};
use warden::Policy;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Parse and validate a policy file; print a summary of each grant.
    Check {
        #[arg(default_value = "warden.toml")]
        file: PathBuf,
    },
    /// What a team's plugins may reach, with which credentials and limits, and which rule grants each.
    Explain {
        team: String,
        /// One plugin (default: all).
        plugin: Option<String>,
        #[command(flatten)]
        policy: PolicyArg,
    },
}

pub async fn run(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Check { file } => {
            let policy = Policy::load(&file)?;
            println!("{}: ok", file.display());
            for (name, entry) in &policy.plugins {
                let pin = entry.sha256.as_deref().map(|s| &s[..12]).unwrap_or("unpinned");
                let exists = if entry.path.exists() { "" } else { " (file missing: build it first)" };
                println!("plugin {name} ({pin}) {}{exists}", entry.path.display());
                explain::summary(&policy.grant_for(name));
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Explain { team, plugin, policy } => {
            let policy = load_policy(&policy)?;
            if !policy.teams.contains_key(&team) && !policy.teams.is_empty() {
                return Err(anyhow!("no [teams.{team}] in {} (teams: {})", policy.file, policy.teams.keys().cloned().collect::<Vec<_>>().join(", ")));
            }
            let names: Vec<String> = match plugin {
                Some(p) if policy.plugins.contains_key(&p) => vec![p],
                Some(p) => return Err(anyhow!("no [plugins.{p}] in {}", policy.file)),
                None => policy.plugins.keys().cloned().collect(),
            };
            let rt = Runtime::new(RuntimeConfig::default())?;
            for name in names {
                explain::plugin(&rt, &policy, &name, &team).await;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
