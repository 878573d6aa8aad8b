//! On-disk cache of compiled components, keyed by the component's sha256 and
//! the engine's compatibility hash, so a wasmtime upgrade or a config change
//! never loads stale machine code.

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

pub fn compile(engine: &Engine, dir: Option<&Path>, digest: &str, bytes: &[u8]) -> anyhow::Result<Component> {
    let Some(dir) = dir else {
        return Component::new(engine, bytes).map_err(anyhow::Error::from);
    };
    let path = dir.join(format!("{digest}-{}.cwasm", engine_key(engine)));
    if path.exists() {
        // SAFETY: the file is one this engine configuration wrote (the name
        // carries its compatibility hash) into warden's own cache folder.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok(c),
            Err(e) => tracing::warn!("ignoring unusable cache entry {}: {e}", path.display()),
        }
    }
    let component = Component::new(engine, bytes).map_err(anyhow::Error::from)?;
    if let Ok(serialized) = component.serialize() {
        // Write then rename, so a concurrent reader never sees half a file.
        let tmp = dir.join(format!(".{digest}.{}.tmp", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&tmp, &serialized))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!("cannot write compile cache {}: {e}", path.display());
        }
    }
    Ok(component)
}
