//! The authors' kit this binary carries: warden's WIT (the `warden:action`
//! package and the WASI packages it uses) and the Rust guest SDK, so that
//! `warden plugin new` writes a plugin that builds wherever it is moved, with
//! no checkout of warden beside it.

use std::path::Path;

/// `wit/` as compiled in: the contract a plugin is built against.
const WIT: &[(&str, &str)] = &[
    ("action.wit", include_str!("../../../wit/action.wit")),
    ("deps/cli.wit", include_str!("../../../wit/deps/cli.wit")),
    ("deps/clocks.wit", include_str!("../../../wit/deps/clocks.wit")),
    ("deps/filesystem.wit", include_str!("../../../wit/deps/filesystem.wit")),
    ("deps/http.wit", include_str!("../../../wit/deps/http.wit")),
    ("deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    ("deps/random.wit", include_str!("../../../wit/deps/random.wit")),
    ("deps/sockets.wit", include_str!("../../../wit/deps/sockets.wit")),
];

/// The Rust guest SDK's sources, as compiled in.
const SDK: &[(&str, &str)] =
    &[("src/lib.rs", include_str!("../../../plugins/sdk/src/lib.rs")), ("src/client.rs", include_str!("../../../plugins/sdk/src/client.rs"))];

/// The Python helper over wasi:http (plugins/py-fetch/warden_http.py).
pub const PY_HTTP: &str = include_str!("../../../plugins/py-fetch/warden_http.py");

/// Writes `wit/` into `dir`.
pub fn write_wit(dir: &Path) -> std::io::Result<()> {
    for (name, text) in WIT {
        let path = dir.join("wit").join(name);
        std::fs::create_dir_all(path.parent().expect("a file in wit/"))?;
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// Writes the SDK as the crate `warden-sdk` in `dir/warden-sdk`, reading the
/// WIT from `dir/wit` (write that too).
pub fn write_sdk(dir: &Path) -> std::io::Result<()> {
    let root = dir.join("warden-sdk");
    std::fs::create_dir_all(root.join("src"))?;
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            r#"# warden's guest SDK {version}, as carried by the warden binary that wrote this plugin.
[package]
name = "warden-sdk"
version = "{version}"
edition = "2021"
publish = false

[dependencies]
wit-bindgen = "0.61"
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
"#,
            version = env!("CARGO_PKG_VERSION")
        ),
    )?;
    for (name, text) in SDK {
        // In warden's repository the SDK sits two folders below wit/; here, one.
        std::fs::write(root.join(name), text.replace("path: \"../../wit\"", "path: \"../wit\""))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sdk_reads_the_wit_through_the_path_the_kit_rewrites() {
        assert!(super::SDK[0].1.contains("path: \"../../wit\""), "plugins/sdk/src/lib.rs must name its WIT as \"../../wit\" for write_sdk to relocate it");
    }
}
