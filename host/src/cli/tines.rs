//! `warden tines import|run`: Tines story exports (see [`warden::tines`]).

use super::common::read_input;
use super::{progress, DbArg};
use anyhow::Context;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use warden::runtime::{Runtime, RuntimeConfig};
use warden::story::engine::{Observer, Quiet, StoryRunner};
use warden::tines::export::Export;
use warden::tines::import::{import, story_files, ImportOptions, Imported};
use warden::Policy;

#[derive(Subcommand)]
pub enum TinesCmd {
    /// Convert a Tines story export into warden graph stories, a policy
    /// skeleton and a report (exit 2 when anything was not converted).
    Import {
        /// The export (JSON, as Tines' "Export story" gives it).
        export: PathBuf,
        /// Folder to write stories/, warden.toml and import-report.txt into.
        #[arg(long, default_value = "tines-import")]
        out: PathBuf,
        /// Team the stories belong to.
        #[arg(long, default_value = "default")]
        team: String,
        /// Folder holding http_request.wasm and email.wasm, for the policy's plugin paths
        /// (default: target/wasm32-wasip2/guest here, when it exists).
        #[arg(long)]
        plugins: Option<PathBuf>,
        /// Overwrite files already in --out.
        #[arg(long)]
        force: bool,
        /// A credential in an HTTP request's payload or URL path is filled in by
        /// the host at egress (never visible to the step) instead of refused.
        #[arg(long)]
        allow_credential_in_payload: bool,
    },
    /// Import an export in memory and run it once with --input.
    Run {
        export: PathBuf,
        /// Input JSON (what the entry webhook receives), or @file.
        #[arg(long, default_value = "{}")]
        input: String,
        /// The policy to run under (default: the import's skeleton).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Folder holding http_request.wasm and email.wasm (for the skeleton policy).
        #[arg(long)]
        plugins: Option<PathBuf>,
        #[command(flatten)]
        db: DbArg,
        /// No live progress on stderr.
        #[arg(long, short)]
        quiet: bool,
        /// As for `tines import`.
        #[arg(long)]
        allow_credential_in_payload: bool,
    },
}

fn options(team: &str, plugins: Option<&Path>, allow_credential_in_payload: bool) -> anyhow::Result<ImportOptions> {
    let dir = match plugins {
        Some(p) => p.canonicalize().with_context(|| format!("--plugins {}: no such folder", p.display()))?,
        None => {
            let here = Path::new("target/wasm32-wasip2/guest");
            here.canonicalize().unwrap_or_else(|_| PathBuf::from("plugins"))
        }
    };
    Ok(ImportOptions { team: team.to_string(), plugins_dir: dir.display().to_string(), allow_credential_in_payload })
}

fn read(export: &Path, opts: &ImportOptions) -> anyhow::Result<Imported> {
    let e = Export::read(export).map_err(anyhow::Error::msg)?;
    Ok(import(&e, opts))
}

pub async fn run(cmd: TinesCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TinesCmd::Import { export, out, team, plugins, force, allow_credential_in_payload } => {
            let imported = read(&export, &options(&team, plugins.as_deref(), allow_credential_in_payload)?)?;
            let stories = out.join("stories");
            let files = story_files(&imported);
            let mut targets: Vec<(PathBuf, String)> = files.into_iter().map(|(f, t)| (stories.join(f), t)).collect();
            targets.push((out.join("warden.toml"), imported.policy.clone()));
            targets.push((out.join("import-report.txt"), format!("{}\n", imported.report)));
            if !force {
                if let Some((p, _)) = targets.iter().find(|(p, _)| p.exists()) {
                    anyhow::bail!("{} exists; import into an empty --out folder, or pass --force to overwrite", p.display());
                }
            }
            std::fs::create_dir_all(&stories).with_context(|| format!("cannot create {}", stories.display()))?;
            for (p, text) in &targets {
                std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
            }
            // What was written must load: the same checks `warden story check` makes.
            warden::story::Library::load_dir(&stories)
                .map_err(|e| anyhow::anyhow!("the imported stories do not load (a warden bug; please report it):\n{e}"))?;
            println!("{}", imported.report);
            println!("wrote {} stories to {}, the policy skeleton to {}", imported.stories.len(), stories.display(), out.join("warden.toml").display());
            for (name, c) in &imported.credentials {
                println!("credential {name}: set ${} (used with {})", c.env, c.hosts.iter().cloned().collect::<Vec<_>>().join(", "));
            }
            let not_converted = imported.report.count(warden::tines::import::Level::Unsupported) + imported.report.refused();
            Ok(if not_converted == 0 { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        TinesCmd::Run { export, input, policy, plugins, db, quiet, allow_credential_in_payload } => {
            let imported = read(&export, &options("default", plugins.as_deref(), allow_credential_in_payload)?)?;
            if imported.report.refused() + imported.report.count(warden::tines::import::Level::Unsupported) > 0 {
                eprintln!("{}", imported.report);
                anyhow::bail!(
                    "{}: not every agent was converted (above); `warden tines import` writes the stories so they can be finished by hand",
                    export.display()
                );
            }
            let policy = match &policy {
                Some(p) => Policy::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
                None => Policy::parse(&imported.policy, "<tines import skeleton>", &std::env::current_dir()?).map_err(|e| anyhow::anyhow!("{e}"))?,
            };
            let policy = Arc::new(policy);
            let dir = PathBuf::from(format!("<{}>", export.display()));
            let library = warden::tines::library(&imported, &dir)?;
            library.check(&policy)?;
            let first = imported.stories.first().map(|(n, _)| n.clone()).context("the export holds no story")?;
            let input: serde_json::Value = serde_json::from_str(&read_input(&input)?).context("--input is not JSON")?;
            let store = warden::store::open(&db.db)?;
            let rt = Arc::new(Runtime::new(RuntimeConfig::default())?);
            let engine = StoryRunner::new(rt, policy, Arc::new(library), store);
            let observer: Box<dyn Observer> = if quiet { Box::new(Quiet) } else { Box::new(progress::Progress::new()) };
            let result = engine.run(&first, input, "tines", observer.as_ref()).await?;
            if let Some(out) = &result.output {
                println!("{}", serde_json::to_string_pretty(out)?);
            }
            match &result.error {
                None => Ok(ExitCode::SUCCESS),
                Some(e) => {
                    eprintln!("warden: run {} failed at agent {}: {}", result.run_id, result.failed_step.as_deref().unwrap_or("?"), e.message);
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
