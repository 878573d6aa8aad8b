//! Deduplication and the per-host summary.
//!
//! An event counts once: a repeated `id`, or the same host, process, request
//! and time under another id (Deep Visibility returns both kinds), is dropped.

use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};

#[derive(Serialize, Default)]
pub struct HostSummary {
    pub agent_name: String,
    pub agent_uuid: String,
    pub os: String,
    pub ip: String,
    pub site: String,
    pub first_seen: String,
    pub last_seen: String,
    pub processes: BTreeSet<String>,
    pub users: BTreeSet<String>,
    pub dns_requests: BTreeSet<String>,
    pub event_count: u64,
}

pub struct Summary {
    pub unique_events: u64,
    pub duplicates: u64,
    pub hosts: Vec<HostSummary>,
    pub sample: Vec<Value>,
}

fn s<'a>(e: &'a Value, key: &str) -> &'a str {
    e[key].as_str().unwrap_or("")
}

pub fn summarize(events: &[Value], sample_size: usize) -> Summary {
    let mut ids = HashSet::new();
    let mut shapes = HashSet::new();
    let mut hosts: BTreeMap<String, HostSummary> = BTreeMap::new();
    let mut sample = Vec::new();
    let (mut unique, mut duplicates) = (0u64, 0u64);
    for e in events {
        let id = match &e["id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        let host_key = if s(e, "agentUuid").is_empty() { s(e, "agentName") } else { s(e, "agentUuid") };
        let request =
            [s(e, "dnsRequest"), s(e, "networkUrl"), s(e, "dstIp"), s(e, "tgtFilePath"), s(e, "sha256")].into_iter().find(|v| !v.is_empty()).unwrap_or("");
        let time = if s(e, "eventTime").is_empty() { s(e, "createdAt") } else { s(e, "eventTime") };
        let shape = format!("{host_key}\u{1f}{}\u{1f}{request}\u{1f}{time}", s(e, "processName"));
        let id_repeat = !id.is_empty() && !ids.insert(id);
        let shape_repeat = !shapes.insert(shape);
        if id_repeat || shape_repeat {
            duplicates += 1;
            continue;
        }
        unique += 1;
        if sample.len() < sample_size {
            sample.push(e.clone());
        }
        let h = hosts.entry(host_key.to_string()).or_default();
        if h.event_count == 0 {
            h.agent_name = s(e, "agentName").to_string();
            h.agent_uuid = s(e, "agentUuid").to_string();
            h.os = if s(e, "agentOs").is_empty() { s(e, "endpointOs") } else { s(e, "agentOs") }.to_string();
            h.ip = s(e, "agentIp").to_string();
            h.site = s(e, "siteName").to_string();
            h.first_seen = time.to_string();
            h.last_seen = time.to_string();
        }
        h.event_count += 1;
        if !time.is_empty() {
            if h.first_seen.is_empty() || time < h.first_seen.as_str() {
                h.first_seen = time.to_string();
            }
            if time > h.last_seen.as_str() {
                h.last_seen = time.to_string();
            }
        }
        for (set, key) in [(&mut h.processes, "processName"), (&mut h.users, "user"), (&mut h.dns_requests, "dnsRequest")] {
            let v = s(e, key);
            if !v.is_empty() {
                set.insert(v.to_string());
            }
        }
        if s(e, "user").is_empty() && !s(e, "srcProcUser").is_empty() {
            h.users.insert(s(e, "srcProcUser").to_string());
        }
    }
    let mut hosts: Vec<HostSummary> = hosts.into_values().collect();
    hosts.sort_by(|a, b| b.event_count.cmp(&a.event_count).then(a.agent_name.cmp(&b.agent_name)));
    Summary { unique_events: unique, duplicates, hosts, sample }
}
