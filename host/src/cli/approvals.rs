//! `warden approvals list|decide`: the pending decisions in the run store.
//! Deciding here is the operator's path (like the admin API token): it is
//! audited as `cli:USER`, and a serving warden on the same store resumes the
//! run within a second (or at its next start).

use super::DbArg;
use anyhow::anyhow;
use clap::Subcommand;
use std::process::ExitCode;
use warden::approval::{Decision, Refused};
use warden::store::ApprovalFilter;

#[derive(Subcommand)]
pub enum ApprovalsCmd {
    /// Approvals waiting for a decision, oldest first.
    List {
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        story: Option<String>,
        /// Decided and expired ones too.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Decide a pending approval: `warden approvals decide RUN STEP CHOICE`.
    Decide {
        run: String,
        step: String,
        choice: String,
        #[arg(long)]
        comment: Option<String>,
        /// Confirms a choice the story marks `confirm: true` (refused without it).
        #[arg(long)]
        confirm: bool,
        #[command(flatten)]
        db: DbArg,
    },
}

pub fn run(cmd: ApprovalsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ApprovalsCmd::List { db, story, all, limit, json } => {
            let store = warden::store::open(&db.db)?;
            let approvals = store.approvals().ok_or_else(|| anyhow!("this run store keeps no approvals"))?;
            let list = approvals.list_approvals(&ApprovalFilter { team: None, story: story.as_deref(), all, limit })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            if list.is_empty() {
                println!("no {}approvals{}", if all { "" } else { "pending " }, story.map(|s| format!(" for story {s}")).unwrap_or_default());
            }
            for a in list {
                let who = if a.approvers.is_empty() { "anyone with a link or the team's token".to_string() } else { a.approvers.join(", ") };
                println!("{}  {:<12} {:<8} {}  [{}]  by {who}  ({})", a.run, a.step, a.state, a.title, a.choices.join("|"), a.what_happened());
            }
        }
        ApprovalsCmd::Decide { run, step, choice, comment, confirm, db } => {
            let store = warden::store::open(&db.db)?;
            let approvals = store.approvals().ok_or_else(|| anyhow!("this run store keeps no approvals"))?;
            let Some(a) = approvals.approval(&run, &step)? else {
                return Err(anyhow!("run {run} has no approval step `{step}` (see `warden approvals list`)"));
            };
            let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
            let d = Decision {
                choice: None,
                decided_by: format!("cli:{user}"),
                via: "cli".into(),
                from: Some("local".into()),
                comment,
                decided_ms: warden::audit::now_ms(),
            };
            match warden::store::decide(approvals, &a, &choice, None, confirm, d)? {
                Ok(done) => println!(
                    "{}: {}; a serving warden on this store resumes run {run} within a second (or when it next starts)",
                    done.title,
                    done.what_happened()
                ),
                Err(Refused::Over(a)) => return Err(anyhow!("approval {step} of run {run} is over: {}", a.what_happened())),
                Err(Refused::Unconfirmed(_)) => return Err(anyhow!("`{choice}` is marked to be confirmed; decide again with --confirm")),
                Err(r) => return Err(anyhow!("{r}")),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
