//! Stable-Rust mutation fuzzing of the parsers that read operator and
//! author input: the policy (TOML), stories (YAML), and Tines exports (JSON,
//! imported and the result loaded back).
//!
//! Seeds are the example policy and stories; each iteration mutates one
//! (byte flips, dictionary tokens, deleted and duplicated lines) and parses
//! it. The parsers must never panic, and every refusal must be one line that
//! starts with `file:line:`. CI runs a short burst; run it longer with
//!
//!     FUZZ_ITERS=200000 cargo test --release -p warden --test integration fuzz_parsers -- --nocapture
//!
//! A failure prints the seed and iteration to reproduce it (FUZZ_SEED=…).

use crate::common;

use common::root;
use std::path::Path;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: small, deterministic, good enough to drive mutations.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "{",
    "}",
    "=",
    "\"",
    "'",
    "\n",
    ",",
    "*",
    "*.",
    "://",
    ":",
    "/",
    "@",
    "..",
    "%2e",
    "0x7f.1",
    "2130706433",
    "[::ffff:127.0.0.1]",
    "GET ",
    "* ",
    "http",
    "https",
    "allow",
    "limits",
    "credentials",
    "memory = \"",
    "MiB",
    "99999999999999999999",
    "-1",
    "\u{0}",
    "\u{feff}",
    "é",
    "{{",
    "}}",
    "{%",
    "%}",
    "- id: ",
    "steps:",
    "story: ",
    "action: ",
    "transform: ",
    "if: ",
    "for_each: ",
    "&a",
    "*a",
    "<<: ",
    "!!binary",
    "---",
    "...",
    "#",
    "~",
    "null",
    "true",
    "no",
    "\t",
    "  ",
    "\r\n",
];

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(bytes.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                bytes.splice(i..i, t.iter().copied());
            }
            2 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                let j = (i + rng.below(40)).min(bytes.len());
                bytes.drain(i..j);
            }
            3 => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let lines: Vec<&str> = text.lines().collect();
                if !lines.is_empty() {
                    let l = rng.below(lines.len());
                    let mut out: Vec<&str> = lines.clone();
                    out.insert(rng.below(lines.len() + 1), lines[l]);
                    bytes = out.join("\n").into_bytes();
                }
            }
            _ => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = text.lines().collect();
                if lines.len() > 1 {
                    let a = rng.below(lines.len());
                    let b = rng.below(lines.len());
                    lines.swap(a, b);
                    bytes = lines.join("\n").into_bytes();
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn iterations() -> usize {
    std::env::var("FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x05ee_d0f0_a7c4)
}

fn is_located(line: &str, file: &str) -> bool {
    line.strip_prefix(file).and_then(|r| r.strip_prefix(':')).and_then(|r| r.split_once(':')).is_some_and(|(n, _)| n.parse::<u64>().is_ok())
}

#[test]
fn the_policy_parser_never_panics_and_always_locates_its_errors() {
    let seeds = [
        std::fs::read_to_string(root().join("examples/warden.toml")).unwrap(),
        "[plugins.p]\npath = \"p.wasm\"\n[grants.p]\nallow = [\"GET https://*.example.com/api/*\"]\ncredentials = [\"c\"]\n[credentials.c]\nkind = \"basic\"\nuser = \"u\"\nfile = \"s\"\nhosts = [\"https://a.example.com\"]\n".to_string(),
    ];
    let mut rng = Rng(seed());
    for i in 0..iterations() {
        let text = mutate(&mut rng, &seeds[i % seeds.len()]);
        let result = std::panic::catch_unwind(|| warden::Policy::parse(&text, "fuzz.toml", Path::new("/nonexistent")));
        match result {
            Err(_) => panic!("policy parser panicked at iteration {i} (FUZZ_SEED={}) on:\n{text}", seed()),
            Ok(Err(e)) => {
                let shown = e.to_string();
                assert!(
                    is_located(&shown, "fuzz.toml") && !shown.contains('\n'),
                    "iteration {i}: error not `file:line: …` on one line: {shown:?}\ninput:\n{text}"
                );
            }
            Ok(Ok(_)) => {}
        }
    }
}

const GRAPH_STORY: &str = r#"name: graph-seed
graph:
  templates: formulas
  entry: start
  exit: [done]
  max_events: 500
  agents:
  - {id: start, kind: webhook, options: {response: "{{ .start.x }}", response_code: 201}, receivers: [get]}
  - id: get
    kind: http
    credential: api
    options: {url: "https://api.example.com/x/<<start.id>>", method: post, payload: {a: "=SIZE(start.items)"}, retry_on_status: ["429"]}
    receivers: [check]
    failure: [done]
  - {id: check, kind: trigger, options: {rules: [{type: regex, path: "{{ .get.status }}", value: "^2"}], must_match: 1}, receivers: [each], no_match: [done]}
  - {id: each, kind: explode, options: {path: "=get.body.items", to: item, limit: 10}, receivers: [seen]}
  - {id: seen, kind: deduplicate, options: {path: "{{ .each.item.id }}", lookback: 5}, receivers: [wait]}
  - {id: wait, kind: delay, options: {seconds: "1"}, receivers: [pick]}
  - {id: pick, kind: extract, options: {matchers: [{path: "{{ .each.item.text }}", regexp: "\d+", to: nums}]}, receivers: [all]}
  - {id: all, kind: implode, options: {guid_path: "{{ .each.guid }}", size_path: "{{ .each.size }}"}, receivers: [mail]}
  - {id: mail, kind: email, options: {recipients: "a@corp.example", subject: "x", body: "<<SIZE(all)>>"}, receivers: [sub]}
  - {id: sub, kind: story, story: other, options: {payload: {n: 1}}, receivers: [done]}
  - {id: done, kind: message, options: {loop: "=start.items", payload: {v: "{{ .LOOP.value }}"}}}
"#;

#[test]
fn the_story_parser_never_panics_and_always_locates_its_errors() {
    let dir = root().join("examples/stories");
    let mut seeds: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    seeds.sort();
    // A graph story (what `warden tines import` writes), every agent kind.
    seeds.push(GRAPH_STORY.to_string());
    let mut rng = Rng(seed() ^ 0x9e37_79b9);
    for i in 0..iterations() {
        let text = mutate(&mut rng, &seeds[i % seeds.len()]);
        let result = std::panic::catch_unwind(|| warden::story::parse(&text, Path::new("fuzz.yaml")));
        match result {
            Err(_) => panic!("story parser panicked at iteration {i} (FUZZ_SEED={}) on:\n{text}", seed()),
            Ok(Err(errors)) => {
                for e in &errors.0 {
                    let shown = e.to_string();
                    assert!(
                        is_located(&shown, "fuzz.yaml") && !shown.contains('\n'),
                        "iteration {i}: error not `file:line: …` on one line: {shown:?}\ninput:\n{text}"
                    );
                }
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Tines exports (the fixtures, mutated): reading never panics; an export
/// that reads always imports into stories that load and a policy skeleton
/// that parses (an agent the importer cannot express is reported, never
/// written broken), and each agent's templates and formulas render or fail
/// with a message — never a panic — against an empty event.
#[test]
fn the_tines_importer_never_panics_and_writes_what_loads() {
    use warden::tines::{export::Export, import};
    let dir = root().join("tests/e2e/fixtures/tines");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let seeds: Vec<String> = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().replace("{{PORT}}", "8080").replace("{{S1PORT}}", "8081").replace("{{JIRAPORT}}", "8082"))
        .collect();
    let mut rng = Rng(seed() ^ 0x7135);
    let opts = import::ImportOptions { allow_credential_in_payload: true, ..Default::default() };
    for i in 0..iterations() {
        let text = mutate(&mut rng, &seeds[i % seeds.len()]);
        let outcome = std::panic::catch_unwind(|| {
            let export = match Export::parse(&text) {
                Ok(e) => e,
                Err(e) => return Err(e),
            };
            let imported = import::import(&export, &opts);
            for (file, story) in import::story_files(&imported) {
                if let Err(e) = warden::story::parse(&story, Path::new(&file)) {
                    return Ok(Some(format!("the imported {file} does not load: {e}\n{story}")));
                }
            }
            if let Err(e) = warden::Policy::parse(&imported.policy, "skeleton.toml", Path::new("/nonexistent")) {
                return Ok(Some(format!("the skeleton does not parse: {e}\n{}", imported.policy)));
            }
            // Render every option of every agent against an empty event: errors are fine, panics are not.
            let empty = serde_json::Map::new();
            for (_, doc) in &imported.stories {
                let formulas = doc["graph"]["templates"] == "formulas";
                for a in doc["graph"]["agents"].as_array().into_iter().flatten() {
                    let _ = warden::graph::render(&a["options"], &empty, formulas);
                }
            }
            Ok(None)
        });
        match outcome {
            Err(_) => panic!("the Tines importer panicked at iteration {i} (FUZZ_SEED={}) on:\n{text}", seed()),
            Ok(Err(e)) => assert!(!e.contains('\n'), "iteration {i}: a refused export is one line: {e:?}"),
            Ok(Ok(Some(problem))) => panic!("iteration {i} (FUZZ_SEED={}): {problem}\ninput:\n{text}", seed()),
            Ok(Ok(None)) => {}
        }
    }
}
