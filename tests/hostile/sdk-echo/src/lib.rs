//! sdk-echo: parses its input as JSON and returns it, the work of the probe's
//! `echo` op, written with warden's SDK like any connector. The probe imports
//! every WASI interface (33, sockets and files included) for the tests that
//! try them; a plugin built from the SDK imports about half as many, and
//! instantiating a component costs per import. `cargo bench -p warden --bench
//! invoke` measures both.

use serde_json::json;
use warden_sdk::{output, parse_input, ActionError, Guest, Invocation, Manifest};

struct Plugin;

impl Guest for Plugin {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "sdk-echo",
            env!("CARGO_PKG_VERSION"),
            "test guest: returns its input",
            json!({"type": "object"}),
            json!({"type": "object"}),
            &[],
            &[],
        )
    }

    fn run(_invocation: Invocation, input: String) -> Result<String, ActionError> {
        let input: serde_json::Value = parse_input(&input)?;
        output(&input)
    }
}

warden_sdk::export_action!(Plugin);
