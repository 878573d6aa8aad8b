//! `warden audit-log`: what people and service accounts did, as JSON lines
//! (one entry a line, oldest first), for a SIEM to take in.

use super::DbArg;
use clap::Subcommand;
use std::io::Write;
use std::process::ExitCode;
use warden::store::ActivityFilter;

#[derive(Subcommand)]
pub enum AuditLogCmd {
    /// Print entries as JSON lines; with --follow, keep printing new ones.
    Tail {
        #[command(flatten)]
        db: DbArg,
        /// Entries after this id (what the last line printed said), else from the start.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Entries at or after this time (Unix milliseconds).
        #[arg(long)]
        since: Option<u64>,
        #[arg(long)]
        actor: Option<String>,
        /// e.g. approval.decide, console.sign_in, token.use
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        team: Option<String>,
        /// Keep reading new entries (once a second) until interrupted.
        #[arg(long)]
        follow: bool,
    },
}

pub fn run(cmd: AuditLogCmd) -> anyhow::Result<ExitCode> {
    let AuditLogCmd::Tail { db, mut after, since, actor, action, team, follow } = cmd;
    let store = warden::store::open(&db.db)?;
    let log = store.activity().ok_or_else(|| anyhow::anyhow!("this run store keeps no audit log"))?;
    let mut out = std::io::stdout().lock();
    loop {
        let filter = ActivityFilter {
            after_id: after,
            since_ms: since,
            actor: actor.as_deref(),
            action: action.as_deref(),
            team: team.as_deref(),
            limit: warden::store::MAX_ACTIVITY_READ,
        };
        let entries = log.read_activity(&filter)?;
        for e in &entries {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
            after = e.id;
        }
        out.flush()?;
        if entries.len() == warden::store::MAX_ACTIVITY_READ {
            continue;
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
