//! `warden action run|describe`: one plugin, once, outside any story.

use super::common::{load_policy, read_input, resolve_plugin};
use super::PolicyArg;
use clap::Subcommand;
use std::process::ExitCode;
use warden::{InvocationInfo, Runtime, RuntimeConfig};

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
        /// Print every audit record (JSON lines) on stderr.
        #[arg(long)]
        audit: bool,
        /// Do not print the action's log lines on stderr.
        #[arg(long, short)]
        quiet: bool,
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
        ActionCmd::Run { plugin, input, policy, audit, quiet } => {
            let policy = load_policy(&policy)?;
            let input = read_input(&input)?;
            let rt = Runtime::new(RuntimeConfig::default())?;
            let (plugin, grant) = resolve_plugin(&rt, &policy, &plugin)?;
            let info = InvocationInfo { run_id: format!("cli-{}", warden::audit::now_ms()), team: "cli".into(), attempt: 1, ..Default::default() };
            let report = rt.invoke(&plugin, grant, info, &input, None).await;
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
                    eprintln!("warden: {}: {e}", plugin.name);
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
