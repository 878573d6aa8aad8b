//! How one plugin's grant reads to a person, for one team: trust, what it may
//! reach, with which credentials (names only), mail, limits. Shared by
//! `warden policy explain` / `plugin check` and the console's Policy page, so
//! both say the same thing.

use crate::limits::Bytes;
use crate::policy::Policy;
use crate::runtime::Runtime;

/// One plugin for one team, as lines a person reads.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explained {
    pub plugin: String,
    pub team: String,
    /// `trusted: …`, `REFUSED: …`, or why trust was not judged.
    pub trust: String,
    pub refused: bool,
    /// `grant: …`, `http: allow …`, `credential …`, `smtp: …`, `limits: …`.
    pub lines: Vec<String>,
}

/// Loads the plugin on `rt` to judge its trust as a run would.
pub async fn plugin(rt: &Runtime, policy: &Policy, name: &str, team: &str) -> Explained {
    let entry = &policy.plugins[name];
    let t = policy.teams.get(team);
    let trust = match (t, rt.load_entry(entry)) {
        (_, Err(e)) => format!("REFUSED: {e:#}"),
        (None, Ok(_)) if policy.teams.is_empty() => "no teams in the policy: runs if the file loads (pin sha256 to be sure)".into(),
        (None, Ok(_)) => "no team given: the global grant below applies to runs outside teams".into(),
        (Some(t), Ok(p)) => match rt.describe(&p).await {
            Ok(m) => match crate::vetting::check(policy, t, entry, &p.sha256, &m.name, &m.version) {
                Ok(trust) => format!("trusted: {trust}"),
                Err(why) => format!("REFUSED: {why}"),
            },
            Err(e) => format!("REFUSED: {e:#}"),
        },
    };
    let refused = trust.starts_with("REFUSED");
    Explained { plugin: name.to_string(), team: team.to_string(), trust, refused, lines: grant_lines(policy, name, team) }
}

/// What the grant allows, without loading the plugin.
pub fn grant_lines(policy: &Policy, name: &str, team: &str) -> Vec<String> {
    let t = policy.teams.get(team);
    let grant = policy.grant_for_team(name, team);
    let mut lines = vec![format!("grant: {}", policy.grant_source(name, team))];
    if grant.rules.is_empty() {
        lines.push("http: reaches nothing".into());
    }
    for r in &grant.rules {
        lines.push(format!("http: allow `{}`", r.text));
    }
    for (c, spec) in &grant.credentials {
        let owner = spec.team.as_deref().map(|o| format!("team {o}")).unwrap_or_else(|| "shared".into());
        let injected = if spec.auto { ", added to every request to them (inject = \"auto\")" } else { "" };
        let minted = match &spec.kind {
            crate::policy::credentials::CredentialKind::OAuth2(o) => {
                format!(", as an OAuth2 token warden obtains from {} (the plugin never sees it)", o.token_url)
            }
            crate::policy::credentials::CredentialKind::Placeholder { marker } => format!(", put where the request holds `{marker}` (URL or body), at egress"),
            _ => String::new(),
        };
        lines.push(format!("credential {c} ({owner}) → only to {}{injected}{minted}", spec.bindings_text()));
    }
    let listed = t.and_then(|t| t.grants.get(name)).or(policy.grants.get(name));
    if let Some(g) = listed {
        for (c, spec) in &g.credentials {
            if !grant.credentials.contains_key(c) {
                lines.push(format!("credential {c}: withheld (belongs to team {})", spec.team.as_deref().unwrap_or("?")));
            }
        }
    }
    if let Some(m) = &grant.mail {
        lines.push(format!(
            "smtp: relay {} ({}:{}), senders {}, recipient domains {}, ≤{} recipients, ≤{} messages",
            m.relay.name,
            m.relay.host,
            m.relay.port,
            m.senders.join(", "),
            m.recipient_domains.join(", "),
            m.max_recipients,
            m.max_messages
        ));
    }
    let l = &grant.limits;
    lines.push(format!(
        "limits: memory {}, cpu {} ms, wall {} ms, {} HTTP requests, responses ≤ {}",
        Bytes(l.memory_bytes),
        l.cpu_ms,
        l.wall_ms,
        l.http_requests,
        Bytes(l.response_bytes)
    ));
    lines
}
