//! How a grant reads to a person: `policy check` (every plugin, briefly) and
//! `policy explain` / `plugin check` (one plugin for one team, with trust).

use warden::limits::Bytes;
use warden::policy::{Grant, Policy};
use warden::Runtime;

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
    let entry = &policy.plugins[name];
    let t = policy.teams.get(team);
    let grant = policy.grant_for_team(name, team);
    println!("plugin {name}{}", if team.is_empty() { String::new() } else { format!(" for team {team}") });
    let trust = match (t, rt.load_entry(entry)) {
        (_, Err(e)) => format!("REFUSED: {e:#}"),
        (None, Ok(_)) if policy.teams.is_empty() => "no teams in the policy: runs if the file loads (pin sha256 to be sure)".into(),
        (None, Ok(_)) => "no team given: the global grant below applies to runs outside teams".into(),
        (Some(t), Ok(p)) => match rt.describe(&p).await {
            Ok(m) => match warden::vetting::check(policy, t, entry, &p.sha256, &m.name, &m.version) {
                Ok(trust) => format!("trusted: {trust}"),
                Err(why) => format!("REFUSED: {why}"),
            },
            Err(e) => format!("REFUSED: {e:#}"),
        },
    };
    println!("  {trust}");
    let refused = trust.starts_with("REFUSED");
    println!("  grant: {}", policy.grant_source(name, team));
    if grant.rules.is_empty() {
        println!("  http: reaches nothing");
    }
    for r in &grant.rules {
        println!("  http: allow `{}`", r.text);
    }
    for (c, spec) in &grant.credentials {
        let owner = spec.team.as_deref().map(|o| format!("team {o}")).unwrap_or_else(|| "shared".into());
        let injected = if spec.auto { ", added to every request to them (inject = \"auto\")" } else { "" };
        println!("  credential {c} ({owner}) → only to {}{injected}", spec.bindings_text());
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
            m.relay.name,
            m.relay.host,
            m.relay.port,
            m.senders.join(", "),
            m.recipient_domains.join(", "),
            m.max_recipients,
            m.max_messages
        );
    }
    let l = &grant.limits;
    println!(
        "  limits: memory {}, cpu {} ms, wall {} ms, {} HTTP requests, responses ≤ {}",
        Bytes(l.memory_bytes),
        l.cpu_ms,
        l.wall_ms,
        l.http_requests,
        Bytes(l.response_bytes)
    );
    !refused
}
