//! `warden tokens`: service accounts — named API tokens with one role, in one
//! team or every team, kept hashed in the run store (every node honours them).

use super::DbArg;
use clap::Subcommand;
use std::process::ExitCode;
use warden::policy::access::TeamRole;
use warden::store::{Activity, RunStore, ServiceToken, TokenStore};

#[derive(Subcommand)]
pub enum TokensCmd {
    /// Make a token; it is printed once (the store keeps only its digest).
    Create {
        /// Its name, as logs and decisions will say (`token:NAME`); never reused.
        name: String,
        /// The team it acts in (omit with --all-teams).
        #[arg(long, required_unless_present = "all_teams", conflicts_with = "all_teams")]
        team: Option<String>,
        /// Acts in every team.
        #[arg(long)]
        all_teams: bool,
        /// viewer, approver, operator or admin.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// List tokens (never their secrets): team, role, when made and last used, revoked.
    List {
        #[command(flatten)]
        db: DbArg,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it is refused from now on, on every node.
    Revoke {
        name: String,
        #[command(flatten)]
        db: DbArg,
    },
}

/// Keeps what was done to a token in the audit log of people.
fn note(store: &dyn RunStore, action: &str, actor: &str, token: &str, team: Option<&str>, outcome: &str, detail: Option<String>) -> anyhow::Result<()> {
    let Some(log) = store.activity() else { return Ok(()) };
    let entry = Activity {
        id: 0,
        at_ms: warden::audit::now_ms(),
        actor: actor.into(),
        action: action.into(),
        team: team.map(String::from),
        target: Some(token.into()),
        outcome: outcome.into(),
        detail,
        from: None,
    };
    log.note(&entry)
}

fn tokens(store: &dyn RunStore) -> anyhow::Result<&dyn TokenStore> {
    store.tokens().ok_or_else(|| anyhow::anyhow!("this run store keeps no service tokens"))
}

/// A name that reads well in logs and decisions: letters, digits, `-`, `_`, `.`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    anyhow::ensure!(ok, "token name `{}` must be 1-64 letters, digits, `-`, `_` or `.`", warden::invocation::guest_text(name, 64));
    Ok(())
}

pub fn run(cmd: TokensCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TokensCmd::Create { name, team, all_teams: _, role, db } => {
            check_name(&name)?;
            let role = TeamRole::parse(&role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let store = warden::store::open(&db.db)?;
            let (secret, digest) = warden::store::new_service_token()?;
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let token = ServiceToken {
                name: name.clone(),
                team,
                role: role.name().into(),
                created_ms: warden::audit::now_ms(),
                created_by: format!("cli:{user}"),
                revoked_ms: None,
                last_used_ms: None,
            };
            let created = tokens(store.as_ref())?.create_token(&token, &digest)?;
            let outcome = if created { "ok" } else { "refused" };
            note(store.as_ref(), "token.create", &token.created_by, &name, token.team.as_deref(), outcome, Some(format!("role {role}")))?;
            if !created {
                anyhow::bail!(
                    "a token named `{name}` exists (revoked names stay taken) or the store holds {} tokens; choose another name or revoke unused ones",
                    warden::store::MAX_SERVICE_TOKENS
                );
            }
            let team = token.team.as_deref().map_or("every team".to_string(), |t| format!("team {t}"));
            eprintln!("token `{name}`: {role} of {team}; shown once, keep it in your secret store:");
            println!("{secret}");
            Ok(ExitCode::SUCCESS)
        }
        TokensCmd::List { db, json } => {
            let store = warden::store::open(&db.db)?;
            let list = tokens(store.as_ref())?.list_tokens()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let when = |ms: Option<u64>| ms.map_or("-".to_string(), |ms| format!("{ms}"));
            println!("{:<24} {:<16} {:<9} {:<15} {:<15} revoked", "name", "team", "role", "created_ms", "last_used_ms");
            for t in list {
                let team = t.team.unwrap_or_else(|| "(every)".into());
                println!("{:<24} {:<16} {:<9} {:<15} {:<15} {}", t.name, team, t.role, t.created_ms, when(t.last_used_ms), when(t.revoked_ms));
            }
            Ok(ExitCode::SUCCESS)
        }
        TokensCmd::Revoke { name, db } => {
            let store = warden::store::open(&db.db)?;
            let revoked = tokens(store.as_ref())?.revoke_token(&name, warden::audit::now_ms())?;
            let actor = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
            let team = tokens(store.as_ref())?.list_tokens()?.into_iter().find(|t| t.name == name).and_then(|t| t.team);
            note(store.as_ref(), "token.revoke", &actor, &name, team.as_deref(), if revoked { "ok" } else { "refused" }, None)?;
            if revoked {
                println!("token `{name}` revoked");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no unrevoked token named `{}`", warden::invocation::guest_text(&name, 64));
                Ok(ExitCode::from(1))
            }
        }
    }
}
