//! On-disk cache of compiled components, keyed by the component's sha256 and
//! the engine's compatibility hash, so a wasmtime upgrade or a config change
//! never loads stale machine code.
//!
//! A cache entry is native code that warden runs, so the cache is trusted
//! only the way ssh trusts a key file: the folder is created `0700`; a folder
//! or entry that another user owns or can write is not used (warden compiles
//! in memory instead and says why); entries are written to a fresh file that
//! is never a symlink, then renamed into place; only regular files are read.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::Path;
use wasmtime::component::Component;
use wasmtime::Engine;

struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only finalize() is used")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn engine_key(engine: &Engine) -> String {
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..12])
}

/// Why a cache path may not be trusted with native code, if it may not.
#[cfg(unix)]
fn untrusted(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.file_type().is_symlink() {
        return Some(format!("{what} {} is a symlink", path.display()));
    }
    if meta.uid() != me {
        return Some(format!("{what} {} belongs to another user (uid {})", path.display(), meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!("{what} {} can be written by other users (mode {:o}); fix it with chmod go-w", path.display(), meta.mode() & 0o777));
    }
    None
}

#[cfg(not(unix))]
fn untrusted(_: &Path, _: &str) -> Option<String> {
    None
}

/// Creates the cache folder `0700` if it is missing; `Err(why)` if it cannot be trusted.
fn prepare(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| format!("cannot create the compile cache {}: {e}", dir.display()))?;
    }
    match untrusted(dir, "the compile cache") {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

pub fn compile(engine: &Engine, dir: Option<&Path>, digest: &str, bytes: &[u8]) -> anyhow::Result<Component> {
    let Some(dir) = dir else {
        return Component::new(engine, bytes).map_err(anyhow::Error::from);
    };
    if let Err(why) = prepare(dir) {
        tracing::warn!("not using the compile cache: {why}");
        return Component::new(engine, bytes).map_err(anyhow::Error::from);
    }
    let path = dir.join(format!("{digest}-{}.cwasm", engine_key(engine)));
    if std::fs::symlink_metadata(&path).is_ok() {
        match untrusted(&path, "cache entry").or_else(|| (!path.is_file()).then(|| format!("cache entry {} is not a file", path.display()))) {
            Some(why) => tracing::warn!("ignoring a cache entry: {why}"),
            // SAFETY: the file is one this engine configuration wrote (the name
            // carries its compatibility hash) into a folder only this user can write.
            None => match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!("ignoring unusable cache entry {}: {e}", path.display()),
            },
        }
    }
    let component = Component::new(engine, bytes).map_err(anyhow::Error::from)?;
    if let Ok(serialized) = component.serialize() {
        if let Err(e) = store(dir, &path, digest, &serialized) {
            tracing::warn!("cannot write compile cache {}: {e}", path.display());
        }
    }
    Ok(component)
}

/// Writes a fresh temporary file (never through a symlink, never one that
/// exists), then renames it into place: a reader never sees half a file.
fn store(dir: &Path, path: &Path, digest: &str, serialized: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{digest}.{}.{}.tmp", std::process::id(), uuid::Uuid::new_v4().simple()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let written = opts.open(&tmp).and_then(|mut f| f.write_all(serialized)).and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn engine() -> Engine {
        Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap()
    }

    /// The smallest valid component: magic, version 0x0d, layer 1.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("warden-cache-{name}-{}", uuid::Uuid::new_v4().simple()))
    }

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
    }

    #[test]
    fn the_cache_folder_is_created_for_its_owner_only() {
        let dir = temp("fresh").join("nested");
        let bytes = EMPTY_COMPONENT;
        compile(&engine(), Some(&dir), "d1", bytes).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(entries(&dir), 1, "the compiled component is cached");
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn a_folder_others_can_write_is_not_used() {
        let dir = temp("shared");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let bytes = EMPTY_COMPONENT;
        compile(&engine(), Some(&dir), "d2", bytes).unwrap();
        assert_eq!(entries(&dir), 0, "nothing is written to, or read from, a shared folder");
        assert!(prepare(&dir).unwrap_err().contains("can be written by other users"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_planted_symlink_is_neither_read_nor_followed() {
        let dir = temp("planted");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = engine();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"do not touch").unwrap();
        let entry = dir.join(format!("d3-{}.cwasm", engine_key(&e)));
        std::os::unix::fs::symlink(&victim, &entry).unwrap();
        let bytes = EMPTY_COMPONENT;
        compile(&e, Some(&dir), "d3", bytes).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"do not touch", "the symlink's target is untouched");
        assert!(std::fs::symlink_metadata(&entry).unwrap().file_type().is_file(), "the entry was replaced by a real file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
