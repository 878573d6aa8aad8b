//! The `warden` command line.

use anyhow::{anyhow, Context as _};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use warden::policy::{Grant, Policy};
use warden::runtime::{sha256_hex, Plugin};
use warden::story::engine::{Engine, Observer, Quiet};
use warden::story::Library;
use warden::{InvocationInfo, Runtime, RuntimeConfig};

mod progress;
mod scaffold;

#[derive(Parser)]
#[command(name = "warden", version, about = "Run security automation steps as sandboxed WebAssembly components")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run or inspect a single action (plugin).
    #[command(subcommand)]
    Action(ActionCmd),
    /// Check the policy file.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Work with plugin files.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Run and check stories.
    #[command(subcommand)]
    Story(StoryCmd),
    /// Inspect recorded runs.
    #[command(subcommand)]
    Runs(RunsCmd),
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
        /// Runs executing at once (default: [server] workers, else 64).
        #[arg(long)]
        workers: Option<usize>,
        /// Seconds to let in-flight runs finish after SIGTERM (default 30).
        #[arg(long)]
        drain_secs: Option<u64>,
        /// Log JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
    },
}

#[derive(Args)]
struct StoriesArg {
    /// Folder of story files (default: $WARDEN_STORIES, else the folder of the story file given).
    #[arg(long, env = "WARDEN_STORIES")]
    stories: Option<PathBuf>,
}

#[derive(Args)]
struct DbArg {
    /// The run store (SQLite; created and migrated as needed).
    #[arg(long, env = "WARDEN_DB", default_value = ".warden/runs.db")]
    db: PathBuf,
}

#[derive(Subcommand)]
enum StoryCmd {
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

#[derive(Subcommand)]
enum RunsCmd {
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

#[derive(Args)]
struct PolicyArg {
    /// Policy file (default: $WARDEN_POLICY, else ./warden.toml if present; without one, everything is denied).
    #[arg(long, env = "WARDEN_POLICY")]
    policy: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ActionCmd {
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

#[derive(Subcommand)]
enum PolicyCmd {
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum Lang {
    Rust,
    Js,
    Python,
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Print a component's sha256, for pinning in the policy.
    Digest { wasm: PathBuf },
    /// Make an Ed25519 signing key: writes NAME.key (secret) and prints the public key for [keys.NAME].
    Keygen {
        name: String,
        /// Folder for the secret key file.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Sign a component (its sha256 with the name and version its describe() returns); writes <wasm>.sig.
    Sign {
        wasm: PathBuf,
        /// The secret key file from `warden plugin keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The key's name in the policy (default: the key file's stem).
        #[arg(long)]
        key_name: Option<String>,
    },
    /// Check that a component implements warden:action: its imports, exports, manifest, and what a policy grants it.
    Check {
        wasm: PathBuf,
        #[command(flatten)]
        policy: PolicyArg,
        /// Explain the grant for this team (default: the global grant).
        #[arg(long)]
        team: Option<String>,
    },
    /// Scaffold a new plugin that builds and passes its own tests out of the box.
    New {
        name: String,
        /// Language of the plugin.
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// Folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Verify a component's signature against the policy's keys (and a team's trust).
    Verify {
        wasm: PathBuf,
        #[command(flatten)]
        policy: PolicyArg,
        #[arg(long)]
        team: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (default_level, json) = match &cli.command {
        Command::Serve { log_json, .. } => ("info", *log_json),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG").unwrap_or_else(|_| default_level.into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warden: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn load_policy(arg: &PolicyArg) -> anyhow::Result<Policy> {
    let path = match &arg.policy {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from("warden.toml")).filter(|p| p.exists()),
    };
    match path {
        Some(p) => Ok(Policy::load(&p)?),
        None => Ok(Policy::empty()),
    }
}

/// A name from the policy, or a path; a path gets the grant of the policy
/// entry that points at the same file, otherwise nothing.
fn resolve_plugin(rt: &Runtime, policy: &Policy, spec: &str) -> anyhow::Result<(Arc<Plugin>, Arc<Grant>)> {
    if let Some(entry) = policy.plugins.get(spec) {
        return Ok((rt.load_entry(entry)?, policy.grant_for(spec)));
    }
    let path = Path::new(spec);
    if !path.exists() {
        let known: Vec<&str> = policy.plugins.keys().map(String::as_str).collect();
        return Err(anyhow!(
            "`{spec}` is neither a plugin in {} (known: {}) nor a file",
            policy.file,
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ));
    }
    let canonical = path.canonicalize()?;
    if let Some(entry) = policy.plugins.values().find(|e| e.path.canonicalize().ok().as_deref() == Some(&canonical)) {
        return Ok((rt.load_entry(entry)?, policy.grant_for(&entry.name)));
    }
    let plugin = rt.load_file(path)?;
    let grant = Arc::new(Grant::deny_all(&plugin.name));
    Ok((plugin, grant))
}

/// The library that holds `spec` (a story file, or a name in `stories`) and the story's name.
fn load_library(spec: &str, stories: Option<&Path>) -> anyhow::Result<(Library, String)> {
    let path = Path::new(spec);
    if path.is_file() {
        let text = std::fs::read_to_string(path)?;
        let story = warden::story::parse(&text, path)?;
        let dir = stories.map(Path::to_path_buf).unwrap_or_else(|| {
            path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
        });
        let mut library = Library::load_dir(&dir)?;
        library.stories.entry(story.name.clone()).or_insert_with(|| Arc::new(story.clone()));
        return Ok((library, story.name));
    }
    let Some(dir) = stories else {
        return Err(anyhow!("`{spec}` is not a story file; to run a story by name, give --stories DIR (or set WARDEN_STORIES)"));
    };
    let library = Library::load_dir(dir)?;
    if library.get(spec).is_none() {
        return Err(anyhow!(
            "no story `{spec}` in {} (it has: {})",
            dir.display(),
            library.stories.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok((library, spec.to_string()))
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// `policy explain` for one plugin: trust, rules, credentials, mail, limits.
async fn explain_plugin(rt: &Runtime, policy: &Policy, name: &str, team: &str) {
    let entry = &policy.plugins[name];
    let t = policy.teams.get(team);
    let grant = policy.grant_for_team(name, team);
    println!("plugin {name}{}", if team.is_empty() { String::new() } else { format!(" for team {team}") });
    let trust = match (t, rt.load_entry(entry)) {
        (_, Err(e)) => format!("REFUSED: {e:#}"),
        (None, Ok(_)) if policy.teams.is_empty() => "no teams in the policy: runs if the file loads (pin sha256 to be sure)".into(),
        (None, Ok(_)) => "no team given: the global grant below applies to runs outside teams".into(),
        (Some(t), Ok(p)) => match rt.describe(&p).await {
            Ok(m) => match warden::vetting::check(policy, t, name, &entry.path, entry.sha256.as_deref(), &p.sha256, &m.name, &m.version) {
                Ok(trust) => format!("trusted: {trust}"),
                Err(why) => format!("REFUSED: {why}"),
            },
            Err(e) => format!("REFUSED: {e:#}"),
        },
    };
    println!("  {trust}");
    println!("  grant: {}", policy.grant_source(name, team));
    if grant.rules.is_empty() {
        println!("  http: reaches nothing");
    }
    for r in &grant.rules {
        println!("  http: allow `{}`", r.text);
    }
    for (c, spec) in &grant.credentials {
        let owner = spec.team.as_deref().map(|o| format!("team {o}")).unwrap_or_else(|| "shared".into());
        println!("  credential {c} ({owner}) → only to {}", spec.bindings_text());
    }
    let listed = t.and_then(|t| t.grants.get(name)).or(policy.grants.get(name));
    if let Some(g) = listed {
        for (c, spec) in &g.credentials {
            if !grant.credentials.contains_key(c) {
                println!("  credential {c}: withheld (belongs to team {})", spec.team.as_deref().unwrap_or("?"));
            }
        }
    }
    if let Some(m) = &grant.mail {
        println!(
            "  smtp: relay {} ({}:{}), senders {}, recipient domains {}, ≤{} recipients, ≤{} messages",
            m.relay.name, m.relay.host, m.relay.port, m.senders.join(", "), m.recipient_domains.join(", "), m.max_recipients, m.max_messages
        );
    }
    let l = &grant.limits;
    println!(
        "  limits: memory {}, cpu {} ms, wall {} ms, {} HTTP requests, responses ≤ {}",
        warden::limits::Bytes(l.memory_bytes), l.cpu_ms, l.wall_ms, l.http_requests, warden::limits::Bytes(l.response_bytes)
    );
}

fn write_secret_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}

fn read_input(input: &str) -> anyhow::Result<String> {
    let text = match input.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("cannot read input file {file}"))?,
        None => input.to_string(),
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| anyhow!("--input is not JSON ({e}); pass a JSON object or @file.json"))?;
    Ok(text)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Action(ActionCmd::Run { plugin, input, policy, audit, quiet }) => {
            let policy = load_policy(&policy)?;
            let input = read_input(&input)?;
            let rt = Runtime::new(RuntimeConfig::default())?;
            let (plugin, grant) = resolve_plugin(&rt, &policy, &plugin)?;
            let info = InvocationInfo {
                run_id: format!("cli-{}", warden::audit::now_ms()),
                team: "cli".into(),
                attempt: 1,
                ..Default::default()
            };
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
        Command::Action(ActionCmd::Describe { plugin, policy }) => {
            let policy = load_policy(&policy)?;
            let rt = Runtime::new(RuntimeConfig::default())?;
            let (plugin, _) = resolve_plugin(&rt, &policy, &plugin)?;
            let manifest = rt.describe(&plugin).await?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCmd::Check { file }) => {
            let policy = Policy::load(&file)?;
            println!("{}: ok", file.display());
            for (name, entry) in &policy.plugins {
                let grant = policy.grant_for(name);
                let pin = entry.sha256.as_deref().map(|s| &s[..12]).unwrap_or("unpinned");
                let exists = if entry.path.exists() { "" } else { " (file missing: build it first)" };
                println!("plugin {name} ({pin}) {}{exists}", entry.path.display());
                if grant.rules.is_empty() {
                    println!("  reaches nothing");
                }
                for r in &grant.rules {
                    println!("  allow {}", r.text);
                }
                for (c, spec) in &grant.credentials {
                    let state = match spec.source.read() {
                        Ok(_) => "value present".to_string(),
                        Err(why) => format!("NO VALUE: {why}"),
                    };
                    println!("  credential {c} -> {} ({}; {state})", spec.bindings_text(), spec.source.describe());
                }
                let l = &grant.limits;
                println!(
                    "  limits memory={} cpu_ms={} wall_ms={} http_requests={} response_bytes={}",
                    warden::limits::Bytes(l.memory_bytes),
                    l.cpu_ms,
                    l.wall_ms,
                    l.http_requests,
                    warden::limits::Bytes(l.response_bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Story(StoryCmd::Run { story, input, policy, stories, db, json, quiet }) => {
            let policy = Arc::new(load_policy(&policy)?);
            let input: serde_json::Value = serde_json::from_str(&read_input(&input)?)?;
            let (library, name) = load_library(&story, stories.stories.as_deref())?;
            library.check(&policy)?;
            let store = Arc::new(warden::store::RunStore::open(&db.db)?);
            let rt = Arc::new(Runtime::new(RuntimeConfig::default())?);
            let engine = Engine::new(rt, policy, Arc::new(library), store);
            let observer: Box<dyn Observer> = if quiet { Box::new(Quiet) } else { Box::new(progress::Progress::new()) };
            let result = engine.run(&name, input, "cli", observer.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else if let Some(out) = &result.output {
                println!("{}", serde_json::to_string_pretty(out)?);
            }
            match &result.error {
                None => Ok(ExitCode::SUCCESS),
                Some(e) => {
                    eprintln!(
                        "warden: run {} failed at step {}: {}",
                        result.run_id,
                        result.failed_step.as_deref().unwrap_or("?"),
                        e.message
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Story(StoryCmd::Check { path, policy }) => {
            let policy = load_policy(&policy)?;
            let library = if path.is_dir() {
                Library::load_dir(&path)?
            } else {
                let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                Library::load_dir(dir)?
            };
            library.check(&policy)?;
            for s in library.stories.values() {
                println!("ok {} ({}, team {}, {} steps)", s.name, s.file.display(), s.team, s.steps.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs(RunsCmd::List { db, story, state, limit, json }) => {
            let store = warden::store::RunStore::open(&db.db)?;
            let runs = store.list_runs(story.as_deref(), state.as_deref(), false, limit, 0)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                for r in runs {
                    let took = match (r.started_ms, r.finished_ms) {
                        (Some(a), Some(b)) => format!("{:.1}s", (b.saturating_sub(a)) as f64 / 1000.0),
                        _ => "-".into(),
                    };
                    let err = r.error.map(|e| format!("  {e}")).unwrap_or_default();
                    println!("{}  {:<10} {:<20} {:>7}  {}{err}", r.id, r.state, r.story, took, r.trigger);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs(RunsCmd::Show { id, db, json }) => {
            let store = warden::store::RunStore::open(&db.db)?;
            let Some(run) = store.get_run(&id)? else {
                return Err(anyhow!("no run `{id}` in {} (see `warden runs list`)", db.db.display()));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                progress::print_run(&run);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { listen, db, policy, stories, workers, drain_secs, log_json: _ } => {
            let policy = Arc::new(load_policy(&policy)?);
            let cfg = policy.server.clone();
            let stories = stories.or(cfg.stories).ok_or_else(|| anyhow!("give --stories DIR (or [server] stories in the policy)"))?;
            let library = Library::load_dir(&stories)?;
            library.check(&policy)?;
            for name in policy.triggers.keys() {
                if library.get(name).is_none() {
                    return Err(anyhow!("{}: [triggers.{name}] names a story that is not in {}", policy.file, stories.display()));
                }
            }
            let db = db.or(cfg.db).unwrap_or_else(|| PathBuf::from(".warden/runs.db"));
            let store = Arc::new(warden::store::RunStore::open(&db)?);
            let workers = workers.or(cfg.workers).unwrap_or(64);
            let rt = Arc::new(Runtime::new(RuntimeConfig { max_instances: (workers as u32 * 4).max(64), ..Default::default() })?);
            let engine = Arc::new(Engine::new(rt, policy, Arc::new(library), store));
            let listen = listen.or(cfg.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
            let opts = warden::server::ServeOptions { workers, drain: std::time::Duration::from_secs(drain_secs.or(cfg.drain_secs).unwrap_or(30)) };
            warden::server::serve(engine, &listen, opts).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCmd::Keygen { name, dir }) => {
            let (secret, public) = warden::vetting::keygen()?;
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("{name}.key"));
            if path.exists() {
                return Err(anyhow!("{} exists; refusing to overwrite a key", path.display()));
            }
            write_secret_file(&path, &secret)?;
            eprintln!("secret key written to {} (keep it out of the repository)", path.display());
            println!("[keys.{name}]\npublic_key = \"{public}\"");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCmd::Sign { wasm, key, key_name }) => {
            let secret = std::fs::read_to_string(&key).with_context(|| format!("cannot read key {}", key.display()))?;
            let key_name = key_name.unwrap_or_else(|| key.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
            let rt = Runtime::new(RuntimeConfig::default())?;
            let plugin = rt.load_file(&wasm)?;
            let m = rt.describe(&plugin).await?;
            let sig = warden::vetting::sign(secret.trim(), &key_name, &m.name, &m.version, &plugin.sha256).map_err(|e| anyhow!("{}: {e}", key.display()))?;
            let out = warden::vetting::sig_path(&wasm);
            std::fs::write(&out, serde_json::to_string_pretty(&sig)? + "\n")?;
            println!("signed {} {} ({}) with key {key_name}: {}", m.name, m.version, plugin.sha256, out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCmd::Verify { wasm, policy, team }) => {
            let policy = load_policy(&policy)?;
            let team = match &team {
                Some(t) => Some(policy.teams.get(t).ok_or_else(|| anyhow!("no [teams.{t}] in {}", policy.file))?),
                None => None,
            };
            let path = warden::vetting::sig_path(&wasm);
            let text = std::fs::read_to_string(&path).with_context(|| format!("no signature at {}", path.display()))?;
            let sig: warden::vetting::SignatureFile = serde_json::from_str(&text).with_context(|| format!("{} is not a signature file", path.display()))?;
            let rt = Runtime::new(RuntimeConfig::default())?;
            let plugin = rt.load_file(&wasm)?;
            let m = rt.describe(&plugin).await?;
            match warden::vetting::verify(&policy, team, &sig, &plugin.sha256, &m.name, &m.version) {
                Ok(key) => {
                    println!("ok: {} {} ({}) signed by key {key}", m.name, m.version, plugin.sha256);
                    Ok(ExitCode::SUCCESS)
                }
                Err(why) => Err(anyhow!("{} is refused: {why}", wasm.display())),
            }
        }
        Command::Policy(PolicyCmd::Explain { team, plugin, policy }) => {
            let policy = load_policy(&policy)?;
            let t = policy.teams.get(&team);
            if t.is_none() && !policy.teams.is_empty() {
                return Err(anyhow!("no [teams.{team}] in {} (teams: {})", policy.file, policy.teams.keys().cloned().collect::<Vec<_>>().join(", ")));
            }
            let names: Vec<String> = match plugin {
                Some(p) if policy.plugins.contains_key(&p) => vec![p],
                Some(p) => return Err(anyhow!("no [plugins.{p}] in {}", policy.file)),
                None => policy.plugins.keys().cloned().collect(),
            };
            let rt = Runtime::new(RuntimeConfig::default())?;
            for name in names {
                explain_plugin(&rt, &policy, &name, &team).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCmd::Check { wasm, policy, team }) => {
            let policy = load_policy(&policy)?;
            let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
            let rt = Runtime::new(RuntimeConfig::default())?;
            let inspection = rt.inspect(&bytes)?;
            println!("component {} (sha256 {})", wasm.display(), inspection.sha256);
            println!("  exports: {}", inspection.exports.join(", "));
            println!("  imports: {}", inspection.imports.join(", "));
            if !inspection.problems.is_empty() {
                return Err(anyhow!("{} does not fit warden:action@{}: {}", wasm.display(), warden::runtime::WIT_VERSION, inspection.problems.join("; ")));
            }
            let plugin = rt.load_file(&wasm)?;
            let m = rt.describe(&plugin).await?;
            println!("  manifest: {} {} — {}", m.name, m.version, m.description);
            println!("  expects hosts: {}; credentials: {}", list_or_none(&m.hosts), list_or_none(&m.credentials));
            let canonical = wasm.canonicalize()?;
            match policy.plugins.values().find(|e| e.path.canonicalize().ok().as_deref() == Some(&canonical)) {
                Some(entry) => explain_plugin(&rt, &policy, &entry.name, team.as_deref().unwrap_or("")).await,
                None => println!("  policy {}: no [plugins.*] entry points at this file, so it is granted nothing", policy.file),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCmd::New { name, lang, dir }) => {
            let file = name.replace('-', "_");
            let (path, steps, wasm) = match lang {
                Lang::Rust => (scaffold::rust(&name, &dir)?, "cargo test && cargo build --release --target wasm32-wasip2".to_string(), format!("target/wasm32-wasip2/release/{file}.wasm")),
                Lang::Js => (scaffold::js(&name, &dir)?, "npm install && npm test && npm run build".to_string(), format!("{file}.wasm")),
                Lang::Python => (scaffold::python(&name, &dir)?, "pip install componentize-py && python3 -m unittest && ./build.sh".to_string(), format!("{file}.wasm")),
            };
            println!("created {}", path.display());
            println!("  cd {} && {steps}", path.display());
            println!("  warden plugin check {wasm} --policy warden.toml");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCmd::Digest { wasm }) => {
            let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
            println!("{}", sha256_hex(&bytes));
            Ok(ExitCode::SUCCESS)
        }
    }
}
