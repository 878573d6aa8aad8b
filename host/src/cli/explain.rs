//! How a grant reads to a person: `policy check` (every plugin, briefly) and
//! `policy explain` / `plugin check` (one plugin for one team, with trust).

use warden::limits::Bytes;
use warden::policy::{Grant, Policy};
use warden::runtime::Runtime;

/// `policy check`'s lines for one grant.
pub fn summary(grant: &Grant) {
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
        let injected = if spec.auto { "; injected automatically" } else { "" };
        println!("  credential {c} -> {} ({}; {state}{injected})", spec.bindings_text(), spec.source.describe());
    }
    let l = &grant.limits;
    println!(
        "  limits memory={} cpu_ms={} wall_ms={} http_requests={} response_bytes={}",
        Bytes(l.memory_bytes),
        l.cpu_ms,
        l.wall_ms,
        l.http_requests,
        Bytes(l.response_bytes)
    );
}

/// `policy explain` for one plugin: trust, rules, credentials, mail, limits.
/// False when the plugin is REFUSED.
pub async fn plugin(rt: &Runtime, policy: &Policy, name: &str, team: &str) -> bool {
    let e = warden::explain::plugin(rt, policy, name, team).await;
    println!("plugin {name}{}", if team.is_empty() { String::new() } else { format!(" for team {team}") });
    println!("  {}", e.trust);
    for line in &e.lines {
        println!("  {line}");
    }
    !e.refused
}
