//! The `warden` command line: argument types here, one file per command group.

mod action;
mod approvals;
mod audit_log;
mod cassette;
mod common;
mod db;
mod explain;
mod kit;
mod plugin;
mod policy;
mod progress;
mod runs;
mod scaffold;
mod story;
mod tines;
mod tokens;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub use common::one_line;

#[derive(Parser)]
#[command(name = "warden", version, about = "Run security automation steps as sandboxed WebAssembly components")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run or inspect a single action (plugin).
    #[command(subcommand)]
    Action(action::ActionCmd),
    /// Check the policy file.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Work with plugin files.
    #[command(subcommand)]
    Plugin(plugin::PluginCmd),
    /// Run and check stories.
    #[command(subcommand)]
    Story(story::StoryCmd),
    /// Inspect recorded runs.
    #[command(subcommand)]
    Runs(runs::RunsCmd),
    /// Pending human approvals: list them, decide one.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCmd),
    /// Tines story exports: import them as warden stories, or run one.
    #[command(subcommand)]
    Tines(tines::TinesCmd),
    /// The run store's schema: migrate or check.
    #[command(subcommand)]
    Db(db::DbCmd),
    /// Service accounts: named API tokens with a role, in a team or every team.
    #[command(subcommand)]
    Tokens(tokens::TokensCmd),
    /// What people and service accounts did (sign-ins, decisions, tokens), as JSON lines.
    #[command(subcommand, name = "audit-log")]
    AuditLog(audit_log::AuditLogCmd),
    /// Serve webhooks, the run API and metrics; run schedules; execute runs durably.
    Serve {
        /// Address to listen on (default: [server] listen, else 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// The run store (default: [server] db, else $WARDEN_DB, else .warden/runs.db).
        #[arg(long, env = "WARDEN_DB")]
        db: Option<PathBuf>,
        #[command(flatten)]
        policy: PolicyArg,
        /// Folder of story files (default: [server] stories, else $WARDEN_STORIES).
        #[arg(long, env = "WARDEN_STORIES")]
        stories: Option<PathBuf>,
        /// Runs executing at once (default: [server] workers, else sized from available memory: 64 to 1024).
        #[arg(long)]
        workers: Option<usize>,
        /// Seconds to let in-flight runs finish after SIGTERM (default 30).
        #[arg(long)]
        drain_secs: Option<u64>,
        /// Log JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
        /// With a PostgreSQL store: all (take webhooks and execute runs), intake (webhooks only) or worker (runs only). Default: [server] role, else all.
        #[arg(long, value_parser = parse_role)]
        role: Option<warden::policy::Role>,
        /// With a PostgreSQL store: seconds a node's claim on a run lasts unless renewed, so how soon another node resumes a dead node's runs (default: [server] lease_secs, else 15).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
        lease_secs: Option<u64>,
    },
}

#[derive(Args)]
pub struct PolicyArg {
    /// Policy file (default: $WARDEN_POLICY, else ./warden.toml if present; without one, everything is denied).
    #[arg(long, env = "WARDEN_POLICY")]
    pub policy: Option<PathBuf>,
}

#[derive(Args)]
pub struct DbArg {
    /// The run store: a SQLite file (created and migrated as needed) or postgres://USER@HOST/DB.
    #[arg(long, env = "WARDEN_DB", default_value = warden::server::config::DEFAULT_DB)]
    pub db: PathBuf,
}

#[derive(Args)]
pub struct StoriesArg {
    /// Folder of story files (default: $WARDEN_STORIES, else the folder of the story file given).
    #[arg(long, env = "WARDEN_STORIES")]
    pub stories: Option<PathBuf>,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Action(cmd) => action::run(cmd).await,
        Command::Policy(cmd) => policy::run(cmd).await,
        Command::Plugin(cmd) => plugin::run(cmd).await,
        Command::Story(cmd) => story::run(cmd).await,
        Command::Runs(cmd) => runs::run(cmd).await,
        Command::Approvals(cmd) => approvals::run(cmd),
        Command::Db(cmd) => db::run(cmd),
        Command::Tokens(cmd) => tokens::run(cmd),
        Command::AuditLog(cmd) => audit_log::run(cmd),
        Command::Tines(cmd) => tines::run(cmd).await,
        Command::Serve { listen, db, policy, stories, workers, drain_secs, log_json: _, role, lease_secs } => {
            let policy = common::load_policy(&policy)?;
            let flags = warden::server::config::ServeFlags { listen, db, stories, workers, drain_secs, role, lease_secs };
            warden::server::run(policy, flags).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_role(text: &str) -> Result<warden::policy::Role, String> {
    warden::policy::Role::parse(text)
}
