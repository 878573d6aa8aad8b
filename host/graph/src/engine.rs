//! Executing a graph story ([`warden_story::story::graph`]): one event at a time, in
//! the order emitted, so the n-th execution of an agent is the same one on
//! every run of the same events — which is what lets a restart resume: an
//! agent execution already recorded as succeeded gives its recorded output
//! instead of running again (no request is sent twice), and one cut off
//! mid-way runs again only if its retry policy allows.

use crate::evaluate::{render, render_each, run_globals};
use serde_json::{json, Map, Value};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use warden_eval::liquid::dotted;
use warden_story::story::graph::{number_of, Agent, AgentKind, Graph, MAX_LOOP};
use warden_story::story::observe::{Event, Observer};
use warden_story::story::recorder::StepAt;
use warden_story::story::run::{RunOutcome, StepRun, StepRunner};
use warden_story::story::state::{ErrorKind, StepError, StepState};
use warden_story::story::template::Bindings;
use warden_story::story::Story;

/// The latest payload of every agent upstream of an event, by id. Payloads
/// are shared, not copied: fanning out (an explode of 500 after an 8 MiB
/// answer) costs a pointer per agent per event, not a copy of the answer.
type Upstream = Arc<BTreeMap<String, Arc<Value>>>;

/// What reaches an agent: what is upstream of it, and which agent sent it
/// (`None` for the entry).
#[derive(Clone)]
struct Delivery {
    agent: usize,
    from: Option<usize>,
    ctx: Upstream,
}

/// The upstream payloads an agent's templates and formulas can read, as the
/// JSON object they read (copied for one execution at a time; what it does
/// not name is left out).
fn as_map(ctx: &Upstream, reads: &std::collections::BTreeSet<String>) -> Map<String, Value> {
    ctx.iter().filter(|(k, _)| reads.contains(*k)).map(|(k, v)| (k.clone(), (**v).clone())).collect()
}

/// An agent execution recorded before a restart.
struct Earlier {
    state: StepState,
    output: Value,
    error: Option<StepError>,
    attempts: u32,
}

/// The state of one graph run.
struct Flow<'g> {
    graph: &'g Graph,
    queue: VecDeque<Delivery>,
    emitted: usize,
    output: Option<Value>,
    last: Value,
    runs: Vec<usize>,
    /// Implode: collected payloads by (agent, guid).
    collected: HashMap<(usize, String), Vec<Value>>,
    /// Deduplicate: values seen in this run, by agent.
    seen: HashMap<usize, HashSet<String>>,
}

impl<'g> Flow<'g> {
    /// `agent` emits `payload` to its receivers (or, for a trigger that did
    /// not match, to its no-match receivers).
    fn emit(&mut self, agent: usize, parent: &Upstream, payload: Value, matched: bool) -> Result<(), StepError> {
        let a = &self.graph.agents[agent];
        let to = if matched { a.receivers.clone() } else { a.no_match.clone() };
        self.emit_to(agent, parent, payload, &to)
    }

    /// `agent` failed with `e`: its failure receivers get `{error}`; without
    /// any, the run fails.
    fn failed(&mut self, agent: usize, parent: &Upstream, e: StepError) -> Result<(), StepError> {
        let to = self.graph.agents[agent].failure.clone();
        if to.is_empty() || e.kind == ErrorKind::Store || e.kind == ErrorKind::Limit {
            return Err(e);
        }
        self.emit_to(agent, parent, json!({"error": {"kind": e.kind, "message": e.message}}), &to)
    }

    fn emit_to(&mut self, agent: usize, parent: &Upstream, payload: Value, to: &[usize]) -> Result<(), StepError> {
        self.emitted += 1;
        if self.emitted > self.graph.max_events {
            let a = &self.graph.agents[agent];
            return Err(StepError::new(
                ErrorKind::Limit,
                format!("the run emitted more than {} events (graph.max_events) at agent `{}`; a loop that never ends? raise graph.max_events if the work is that large", self.graph.max_events, a.id),
            ));
        }
        let a = &self.graph.agents[agent];
        let mut ctx = (**parent).clone();
        ctx.insert(a.id.clone(), Arc::new(payload.clone()));
        let ctx = Arc::new(ctx);
        if self.graph.exits.contains(&agent) {
            self.output = Some(payload.clone());
        }
        self.last = payload;
        for &r in to {
            self.queue.push_back(Delivery { agent: r, from: Some(agent), ctx: ctx.clone() });
        }
        Ok(())
    }
}

/// Runs (or, `resumed`, resumes from its record) graph story `story` as
/// run `run_id`; actions and sub-stories are run by `runner`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    runner: &dyn StepRunner,
    story: &Story,
    graph: &Graph,
    run_id: &str,
    root: &str,
    input: Value,
    depth: usize,
    observer: &dyn Observer,
    resumed: bool,
) -> RunOutcome {
    // Only a resumed run has executions recorded before it: a new one reads nothing back.
    let earlier = if resumed { earlier_executions(runner, run_id) } else { HashMap::new() };
    let mut flow = Flow {
        graph,
        queue: VecDeque::new(),
        emitted: 0,
        output: None,
        last: Value::Null,
        runs: vec![0; graph.agents.len()],
        collected: HashMap::new(),
        seen: HashMap::new(),
    };
    let base: BTreeMap<String, Arc<Value>> = run_globals(story, run_id, &runner.policy().resources).into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
    // The run's input reaches the entry agent (a webhook emits it as it is).
    flow.queue.push_back(Delivery { agent: graph.entry, from: None, ctx: Arc::new(base) });
    while let Some(d) = flow.queue.pop_front() {
        let agent = &graph.agents[d.agent];
        let n = flow.runs[d.agent];
        flow.runs[d.agent] += 1;
        let fail = |e: StepError| (Some(agent.id.clone()), e);
        let started = Instant::now();
        let at = StepAt { run: run_id, step: &agent.id, item: Some(n), kind: agent.kind.step_kind() };
        let ctx = as_map(&d.ctx, &agent.reads);
        // The sender's payload, copied only by the kinds that pass it on.
        let incoming = || match d.from {
            Some(f) => d.ctx.get(&graph.agents[f].id).map(|v| (**v).clone()).unwrap_or(Value::Null),
            None => input.clone(),
        };
        let render =
            |v: &Value| render(v, &ctx, graph.formulas).map_err(|e| StepError::new(ErrorKind::Template, format!("agent `{}` ({}): {e}", agent.id, agent.name)));
        // A rule's, matcher's or key's template, rendered as the text it compares.
        let render_text = |t: &str| render(&Value::String(t.to_string())).map(|v| text_of(&v));
        let option = |k: &str| agent.options.get(k).cloned().unwrap_or(Value::Null);
        // Host-side agents: computed here, recorded as transforms.
        let computed: Result<Vec<(Value, bool)>, StepError> = match &agent.kind {
            AgentKind::Webhook => Ok(vec![(incoming(), true)]),
            AgentKind::Message => match agent.options.get("loop").filter(|l| !l.is_null() && **l != "" && **l != false) {
                None => render(&option("payload")).map(|p| vec![(p, true)]),
                // `loop`: the payload once per item (as LOOP.value, LOOP.index), emitted as one list.
                Some(l) => (|| {
                    let list = match l {
                        Value::String(p) => {
                            resolve(p, &ctx, graph.formulas).map_err(|e| StepError::new(ErrorKind::Template, format!("agent `{}`: loop: {e}", agent.id)))?
                        }
                        other => other.clone(),
                    };
                    let items = match list {
                        Value::Array(a) => a,
                        Value::Null => Vec::new(),
                        other => vec![other],
                    };
                    let items: Vec<Value> = items.into_iter().take(MAX_LOOP).collect();
                    let out = render_each(&option("payload"), &ctx, graph.formulas, &items)
                        .map_err(|e| StepError::new(ErrorKind::Template, format!("agent `{}` ({}): {e}", agent.id, agent.name)))?;
                    Ok(vec![(Value::Array(out), true)])
                })(),
            },
            AgentKind::Trigger { rules, must_match } => {
                let mut held = 0;
                for r in rules {
                    let (field, value) = (render_text(&r.path), render_text(&r.value));
                    match (field, value) {
                        (Ok(f), Ok(v)) if r.holds(&f, &v) => held += 1,
                        (Err(e), _) | (_, Err(e)) => return Err(fail(e)),
                        _ => {}
                    }
                }
                let matched = held >= *must_match;
                let mut out = match incoming() {
                    Value::Object(o) => o,
                    other => Map::from_iter([("event".to_string(), other)]),
                };
                out.insert("rule_matched".into(), Value::Bool(matched));
                Ok(vec![(Value::Object(out), matched)])
            }
            AgentKind::Extract(matchers) => {
                let mut out = Map::new();
                for m in matchers {
                    let text = render_text(&m.path).map_err(fail)?;
                    let found: Vec<Value> = m
                        .regex
                        .captures_iter(&text)
                        .take(10_000)
                        .map(|c| Value::String(c.get(1).or_else(|| c.get(0)).map(|x| x.as_str()).unwrap_or("").to_string()))
                        .collect();
                    out.insert(m.to.clone(), Value::Array(found));
                }
                Ok(vec![(Value::Object(out), true)])
            }
            AgentKind::Explode { path, to, limit } => {
                let list =
                    resolve(path, &ctx, graph.formulas).map_err(|e| fail(StepError::new(ErrorKind::Template, format!("agent `{}`: path: {e}", agent.id))))?;
                let items = match list {
                    Value::Array(a) => a,
                    Value::Null => Vec::new(),
                    other => vec![other],
                };
                let guid = format!("{run_id}:{}:{n}", agent.id);
                let size = items.len().min(*limit);
                Ok(items
                    .into_iter()
                    .take(*limit)
                    .enumerate()
                    .map(|(i, item)| (json!({to.as_str(): item, "index": i, "guid": guid, "size": size}), true))
                    .collect())
            }
            AgentKind::Implode { guid_path, size_path } => {
                let guid = render_text(guid_path).map_err(fail)?;
                let size = render(&Value::String(size_path.clone())).ok().as_ref().and_then(number_of).unwrap_or(0.0) as usize;
                let got = flow.collected.entry((d.agent, guid.clone())).or_default();
                got.push(incoming());
                if got.len() >= size {
                    let all = flow.collected.remove(&(d.agent, guid)).unwrap_or_default();
                    Ok(vec![(Value::Array(all), true)])
                } else {
                    Ok(Vec::new())
                }
            }
            AgentKind::Deduplicate { path, lookback } => {
                let key = render_text(path).map_err(fail)?;
                let prior = earlier.get(&(agent.id.clone(), n)).filter(|e| e.state == StepState::Succeeded);
                let fresh = if *lookback == 0 {
                    flow.seen.entry(d.agent).or_default().insert(key)
                } else if let Some(e) = prior {
                    // Decided before a restart: the verdict stands (its value is remembered already).
                    e.output != json!({"duplicate": true})
                } else {
                    // Across runs: the store keeps the last `lookback` values' digests, never the values.
                    let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
                    let scope = format!("{}/{}", story.name, agent.id);
                    runner.recorder().remember(run_id, &scope, &digest, *lookback).await.map_err(|down| fail(down.into()))?
                };
                if fresh {
                    Ok(vec![(incoming(), true)])
                } else {
                    Ok(Vec::new())
                }
            }
            AgentKind::Delay(wait) => {
                // Slept once: a resumed run does not wait again for a delay it already waited out.
                if earlier.get(&(agent.id.clone(), n)).is_none_or(|e| e.state != StepState::Succeeded) {
                    tokio::time::sleep(*wait).await;
                }
                Ok(vec![(incoming(), true)])
            }
            AgentKind::Http(_) | AgentKind::Email(_) | AgentKind::Story(_) => {
                let step = agent.step.as_ref().expect("action and story agents have their step");
                let prior = earlier.get(&(agent.id.clone(), n));
                if let Some(e) = prior.filter(|e| e.state == StepState::Succeeded) {
                    // Ran before a restart: its answer stands, nothing is sent again.
                    let out = e.output.clone();
                    flow.emit(d.agent, &d.ctx, out, true).map_err(fail)?;
                    continue;
                }
                if let Some(e) = prior.filter(|e| e.state == StepState::Failed && !agent.failure.is_empty()) {
                    // Failed before a restart and went down its failure links: the same again, nothing resent.
                    let err = e.error.clone().unwrap_or_else(|| StepError::new(ErrorKind::Failed, "failed before a restart"));
                    flow.failed(d.agent, &d.ctx, err).map_err(fail)?;
                    continue;
                }
                let first_attempt = match prior {
                    Some(e) if e.attempts >= step.retry.attempts => {
                        let msg = format!(
                            "interrupted by a restart during agent `{}` (attempt {}); its retry policy allows no further attempt",
                            agent.id, e.attempts
                        );
                        let err = StepError::new(ErrorKind::Interrupted, msg);
                        runner.recorder().step_finished(&at, StepState::Failed, None, Some(&err), e.attempts);
                        return Err(fail(err));
                    }
                    Some(e) => e.attempts + 1,
                    None => 1,
                };
                let input = match &agent.kind {
                    AgentKind::Http(_) => http_input(agent, &render),
                    AgentKind::Email(plugin) => {
                        // Tines' sender_name goes on the address the grant sends from (the relay's default).
                        let grant = runner.policy().grant_for_team(plugin, &story.team);
                        let default_from = grant.mail.as_ref().and_then(|m| m.relay.default_from.clone());
                        email_input(agent, &render, default_from.as_deref())
                    }
                    _ => render(&option("payload")),
                };
                let input = match input {
                    Ok(i) => i,
                    Err(e) => {
                        runner.recorder().step_finished(&at, StepState::Failed, None, Some(&e), first_attempt);
                        return Err(fail(e));
                    }
                };
                let mut step = step.clone();
                step.with = input;
                let sr = StepRun { story, step: &step, run: run_id, root, depth, observer, waiting_child: None };
                // The agent's input is rendered already (`step.literal`): nothing to bind.
                let ctx = Bindings::default();
                match runner.attempts(&sr, &ctx, Some(n), first_attempt).await {
                    Ok(out) => flow.emit(d.agent, &d.ctx, out, true).map_err(fail)?,
                    Err(e) => flow.failed(d.agent, &d.ctx, e).map_err(fail)?,
                }
                continue;
            }
        };
        let events = match computed {
            Ok(e) => e,
            Err(e) => {
                runner.recorder().step_finished(&at, StepState::Failed, None, Some(&e), 1);
                observer.event(&Event::StepFinished {
                    run: run_id,
                    step: &agent.id,
                    kind: "transform",
                    item: Some(n),
                    state: StepState::Failed,
                    elapsed: started.elapsed(),
                    error: Some(&e),
                    depth,
                });
                flow.failed(d.agent, &d.ctx, e).map_err(fail)?;
                continue;
            }
        };
        let record = match (&agent.kind, events.as_slice()) {
            (_, [(one, _)]) => one.clone(),
            (AgentKind::Deduplicate { .. }, []) => json!({"duplicate": true}),
            (AgentKind::Implode { .. }, []) => json!({"collecting": true}),
            (_, many) => json!({"emitted": many.len()}),
        };
        runner.recorder().step_finished(&at, StepState::Succeeded, Some(&record), None, 1);
        observer.event(&Event::StepFinished {
            run: run_id,
            step: &agent.id,
            kind: "transform",
            item: Some(n),
            state: StepState::Succeeded,
            elapsed: started.elapsed(),
            error: None,
            depth,
        });
        for (payload, matched) in events {
            flow.emit(d.agent, &d.ctx, payload, matched).map_err(fail)?;
        }
    }
    // Implodes still short of their size when the events ran out emit nothing: said in the log.
    for ((a, guid), got) in &flow.collected {
        tracing::info!(run = run_id, agent = %graph.agents[*a].id, guid, collected = got.len(), "implode never reached its size; nothing emitted");
    }
    Ok(if graph.exits.is_empty() { flow.last } else { flow.output.unwrap_or(Value::Null) })
}

/// Agent executions recorded before a restart, by (agent, n). A new run has none.
fn earlier_executions(runner: &dyn StepRunner, run_id: &str) -> HashMap<(String, usize), Earlier> {
    let Ok(Some(detail)) = runner.store().get_run(run_id) else { return HashMap::new() };
    detail
        .steps
        .into_iter()
        .filter_map(|r| {
            let n = r.item? as usize;
            let state = StepState::parse(&r.state)?;
            let error = r.error.and_then(|e| serde_json::from_value(e).ok());
            Some(((r.step_id, n), Earlier { state, output: r.output.unwrap_or(Value::Null), error, attempts: r.attempts }))
        })
        .collect()
}

/// A rendered value as the text a rule compares.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// An explode's `path`: a template (`{{ .a.body.list | as_object }}`) or a
/// bare path (`.a.body.list`, `a.body.list`).
fn resolve(path: &str, ctx: &Map<String, Value>, formulas: bool) -> Result<Value, String> {
    let p = path.trim();
    if formulas && warden_eval::formula::is_formula(p) {
        return render(&Value::String(p.to_string()), ctx, true);
    }
    if p.contains("{{") {
        let v = render(&Value::String(p.to_string()), ctx, false)?;
        return Ok(match v {
            // `{{ .a.list }}` without as_object renders the list as text: read it back.
            Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
            other => other,
        });
    }
    let obj = Value::Object(ctx.clone());
    Ok(dotted(&obj, p).cloned().unwrap_or(Value::Null))
}

/// The http-request plugin's input from an HTTP Request agent's options.
fn http_input(agent: &Agent, render: &dyn Fn(&Value) -> Result<Value, StepError>) -> Result<Value, StepError> {
    let mut input = Map::new();
    for k in ["url", "method", "content_type", "payload", "headers", "user_agent", "basic_auth"] {
        if let Some(v) = agent.options.get(k).filter(|v| !v.is_null()) {
            input.insert(k.to_string(), render(v)?);
        }
    }
    for k in ["retry_on_status", "log_error_on_status"] {
        if let Some(v) = agent.options.get(k).filter(|v| !v.is_null()) {
            input.insert(k.to_string(), statuses(&render(v)?));
        }
    }
    if let Some(c) = &agent.credential {
        input.insert("credential".into(), Value::String(c.clone()));
    }
    Ok(Value::Object(input))
}

/// `Name <user@domain>` → `user@domain`.
fn bare_address(a: &str) -> &str {
    match (a.rfind('<'), a.rfind('>')) {
        (Some(s), Some(e)) if s < e => &a[s + 1..e],
        _ => a.trim(),
    }
}

/// `["429", 503, "5.."]` or `"429,503"` as a list of strings.
fn statuses(v: &Value) -> Value {
    let list: Vec<Value> = match v {
        Value::Array(a) => a.iter().map(|x| Value::String(text_of(x).trim().to_string())).collect(),
        Value::String(s) => s.split(',').map(|x| x.trim()).filter(|x| !x.is_empty()).map(|x| Value::String(x.to_string())).collect(),
        Value::Number(n) => vec![Value::String(n.to_string())],
        _ => Vec::new(),
    };
    Value::Array(list)
}

/// The email plugin's input from a Send Email agent's options.
fn email_input(agent: &Agent, render: &dyn Fn(&Value) -> Result<Value, StepError>, default_from: Option<&str>) -> Result<Value, StepError> {
    let get = |k: &str| -> Result<Value, StepError> { agent.options.get(k).filter(|v| !v.is_null()).map(render).transpose().map(|v| v.unwrap_or(Value::Null)) };
    let addresses = |v: Value| -> Vec<Value> {
        match v {
            Value::Array(a) => a.into_iter().filter(|x| !text_of(x).trim().is_empty()).map(|x| Value::String(text_of(&x).trim().to_string())).collect(),
            Value::String(s) => s.split([',', ';']).map(str::trim).filter(|x| !x.is_empty()).map(|x| Value::String(x.to_string())).collect(),
            _ => Vec::new(),
        }
    };
    let to = addresses(get("recipients")?);
    if to.is_empty() {
        return Err(StepError::new(ErrorKind::InvalidInput, format!("agent `{}`: recipients rendered to no address", agent.id)));
    }
    let body = text_of(&get("body")?);
    let mut input = json!({"to": to, "subject": text_of(&get("subject")?), "text": body});
    // Tines sends the body as HTML; a body with markup goes as both.
    if body.contains('<') && body.contains('>') {
        input["html"] = Value::String(body.replace('\n', "<br>\n"));
    }
    for (k, to) in [("cc", "cc"), ("bcc", "bcc")] {
        let list = addresses(get(k)?);
        if !list.is_empty() {
            input[to] = Value::Array(list);
        }
    }
    // From: `sender_address` (the grant decides whether it may be used) or the
    // relay's default sender, under `sender_name` when given.
    let address = text_of(&get("sender_address")?).trim().to_string();
    let address = if address.is_empty() { default_from.map(|d| bare_address(d).to_string()) } else { Some(address) };
    let name: String = text_of(&get("sender_name")?).chars().filter(|c| !matches!(c, '<' | '>' | '"' | '\r' | '\n' | '\\')).collect();
    match (address, name.trim()) {
        (Some(a), "") => input["from"] = Value::String(a),
        (Some(a), n) => input["from"] = Value::String(format!("\"{n}\" <{a}>")),
        (None, _) => {}
    }
    let reply_to = text_of(&get("reply_to")?);
    if !reply_to.trim().is_empty() {
        input["reply_to"] = Value::String(reply_to.trim().to_string());
    }
    Ok(input)
}
