//! `warden plugin …`: digests, keys and signatures, checking a component, and
//! scaffolding a new plugin.

use super::common::{list_or_none, load_policy};
use super::{explain, scaffold, PolicyArg};
use anyhow::{anyhow, Context as _};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use warden::runtime::sha256_hex;
use warden::runtime::{Runtime, RuntimeConfig};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

#[derive(Subcommand)]
pub enum PluginCmd {
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
    /// Replay recorded cassettes against a plugin, offline: every capability call is
    /// answered from the recording and compared with what the plugin asks now; exit 1
    /// with the first divergence or output difference.
    Test {
        /// A .wasm component, or a plugin name from the policy.
        plugin: String,
        /// A recording made with `warden action run --record` (repeatable).
        #[arg(long = "cassette", value_name = "FILE", required = true)]
        cassettes: Vec<PathBuf>,
        #[command(flatten)]
        policy: PolicyArg,
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

/// Writes a new file only its owner can read; never overwrites one.
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

fn read_wasm(wasm: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))
}

pub async fn run(cmd: PluginCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCmd::Digest { wasm } => {
            println!("{}", sha256_hex(&read_wasm(&wasm)?));
        }
        PluginCmd::Keygen { name, dir } => {
            let (secret, public) = warden::vetting::keygen()?;
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("{name}.key"));
            if path.exists() {
                return Err(anyhow!("{} exists; refusing to overwrite a key", path.display()));
            }
            write_secret_file(&path, &secret)?;
            eprintln!("secret key written to {} (keep it out of the repository)", path.display());
            println!("[keys.{name}]\npublic_key = \"{public}\"");
        }
        PluginCmd::Sign { wasm, key, key_name } => {
            let secret = std::fs::read_to_string(&key).with_context(|| format!("cannot read key {}", key.display()))?;
            let key_name = key_name.unwrap_or_else(|| key.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
            let rt = Runtime::new(RuntimeConfig::default())?;
            let plugin = rt.load_file(&wasm)?;
            let m = rt.describe(&plugin).await?;
            let sig = warden::vetting::sign(secret.trim(), &key_name, &m.name, &m.version, &plugin.sha256).map_err(|e| anyhow!("{}: {e}", key.display()))?;
            let out = warden::vetting::sig_path(&wasm);
            std::fs::write(&out, serde_json::to_string_pretty(&sig)? + "\n")?;
            println!("signed {} {} ({}) with key {key_name}: {}", m.name, m.version, plugin.sha256, out.display());
        }
        PluginCmd::Verify { wasm, policy, team } => {
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
                Ok(key) => println!("ok: {} {} ({}) signed by key {key}", m.name, m.version, plugin.sha256),
                Err(why) => return Err(anyhow!("{} is refused: {why}", wasm.display())),
            }
        }
        PluginCmd::Check { wasm, policy, team } => {
            let policy = load_policy(&policy)?;
            let bytes = read_wasm(&wasm)?;
            let rt = Runtime::new(RuntimeConfig::default())?;
            let inspection = rt.inspect(&bytes)?;
            println!("component {} (sha256 {})", wasm.display(), inspection.sha256);
            println!("  exports: {}", inspection.exports.join(", "));
            println!("  imports: {}", inspection.imports.join(", "));
            println!("  http: {}", match inspection.http_doors()[..] {
                [] => "none (it makes no HTTP requests)".to_string(),
                ["warden:action/http"] => "warden:action/http (warden's own import; the plugin names credentials in each request)".to_string(),
                ["wasi:http"] => "wasi:http (standard outgoing-handler; a credential is named by the `warden-credential` request header or attached by `inject = \"auto\"`)".to_string(),
                _ => "warden:action/http and wasi:http (both judged by the same policy)".to_string(),
            });
            if !inspection.problems.is_empty() {
                return Err(anyhow!("{} does not fit warden:action@{}: {}", wasm.display(), warden::runtime::WIT_VERSION, inspection.problems.join("; ")));
            }
            let plugin = rt.load_file(&wasm)?;
            let m = rt.describe(&plugin).await?;
            println!("  manifest: {} {} — {}", m.name, m.version, m.description);
            println!("  expects hosts: {}; credentials: {}", list_or_none(&m.hosts), list_or_none(&m.credentials));
            match policy.plugin_at(&wasm) {
                Some(entry) => {
                    if !explain::plugin(&rt, &policy, &entry.name, team.as_deref().unwrap_or("")).await {
                        // Non-zero, so `plugin check` can gate a CI pipeline.
                        return Ok(ExitCode::from(1));
                    }
                }
                None => println!("  policy {}: no [plugins.*] entry points at this file, so it is granted nothing", policy.file),
            }
        }
        PluginCmd::Test { plugin, cassettes, policy } => {
            let policy = load_policy(&policy)?;
            let rt = Runtime::new(RuntimeConfig::default())?;
            // Nothing is sent under replay; the grant gives the limits.
            let (loaded, grant) = super::common::resolve_plugin(&rt, &policy, &plugin)?;
            let mut failed = 0;
            for path in &cassettes {
                let rec = super::cassette::load(path)?;
                let calls = rec.calls.len();
                match super::cassette::replay(&rt, &loaded, grant.clone(), rec).await? {
                    None => println!("ok    {} ({calls} call(s) replayed, same output)", path.display()),
                    Some(why) => {
                        failed += 1;
                        println!("FAIL  {}: {why}", path.display());
                    }
                }
            }
            if failed > 0 {
                println!("{failed} of {} cassette(s) failed", cassettes.len());
                return Ok(ExitCode::from(1));
            }
        }
        PluginCmd::New { name, lang, dir } => {
            let file = name.replace('-', "_");
            let (path, steps, wasm) = match lang {
                Lang::Rust => (
                    scaffold::rust(&name, &dir)?,
                    "cargo test && cargo build --release --target wasm32-wasip2".to_string(),
                    format!("target/wasm32-wasip2/release/{file}.wasm"),
                ),
                Lang::Js => (scaffold::js(&name, &dir)?, "npm install && npm test && npm run build".to_string(), format!("{file}.wasm")),
                Lang::Python => {
                    (scaffold::python(&name, &dir)?, "pip install componentize-py && python3 -m unittest && ./build.sh".to_string(), format!("{file}.wasm"))
                }
            };
            println!("created {}", path.display());
            println!("  cd {} && {steps}", path.display());
            println!("  warden plugin check {wasm} --policy warden.toml");
            println!("  warden plugin test {wasm} --cassette tests/cassettes/get-ticket.json   # replayed offline");
        }
    }
    Ok(ExitCode::SUCCESS)
}
