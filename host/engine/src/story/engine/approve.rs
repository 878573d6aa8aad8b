//! The `approval` step: ask once, park the run, answer with the decision.
//! See [`crate::approval`] for the whole path (links, decisions, waking).

use super::{ErrorKind, StepError, StepRun, StoryRunner};
use crate::approval::{self, Approval, ApprovalSpec, LinkKey, OnTimeout};
use crate::invocation::Handed;
use crate::story::template::{render_str, render_value, Bindings};
use crate::story::{StepKind, Story};
use serde_json::{json, Value};

impl StoryRunner {
    /// The link key, derived once (see [`approval::link_key`]).
    pub fn link_key(&self) -> Result<LinkKey, StepError> {
        if let Some(key) = self.link_key.get() {
            return Ok(*key);
        }
        let store = self.store.approvals().ok_or_else(|| StepError::new(ErrorKind::Failed, "this run store keeps no approvals"))?;
        let secret = approval::operator_secret(&self.policy.server, || store.local_secret()).map_err(|e| StepError::new(ErrorKind::Failed, e))?;
        let salt = store.key_salt().map_err(|e| StepError::new(ErrorKind::Store, format!("run store unavailable: {e:#}")))?;
        Ok(*self.link_key.get_or_init(|| approval::link_key(&secret, &salt)))
    }

    /// `approval.<step>.links.<choice>` (and `links_for.<address>.<choice>`)
    /// for every approval step of the story, from the run's first step: a
    /// step before the approval (an email) carries the links it will accept.
    /// Each link's token is a placeholder sealed to the run tree `root`
    /// ([`approval::placeholder`]); only egress puts the token in its place.
    pub(super) fn approval_links_of(&self, story: &Story, run: &str, root: &str, ctx: &Bindings) -> Result<Option<Value>, StepError> {
        let mut specs = story.steps().into_iter().flat_map(|b| &b.steps).filter_map(|s| match &s.kind {
            StepKind::Approval(spec) => Some((s.id.as_str(), spec)),
            _ => None,
        });
        let Some(first) = specs.next() else { return Ok(None) };
        let key = self.link_key()?;
        let mut all = serde_json::Map::new();
        for (step, spec) in std::iter::once(first).chain(specs) {
            let approvers = render_approvers(&spec.approvers, ctx).map_err(|e| StepError::new(ErrorKind::Template, format!("step {step}: approvers: {e}")))?;
            all.insert(step.to_string(), approval::links_value(&key, &self.links_base, root, run, step, &spec.choices, &approvers));
        }
        Ok(Some(Value::Object(all)))
    }

    /// The links a step's rendered input holds as placeholders, opened for
    /// its run tree: what its egress may put in their place. Nothing when
    /// the input holds none (the common case costs one scan).
    pub(super) fn handed_links(&self, root: &str, input: &str) -> Handed {
        if memchr::memmem::find(input.as_bytes(), approval::PLACEHOLDER_PREFIX.as_bytes()).is_none() {
            return Handed::default();
        }
        match self.link_key() {
            Ok(key) => Handed::new(approval::handed_in(&key, root, input)),
            // No link key, so no link was made: nothing to hand.
            Err(_) => Handed::default(),
        }
    }

    /// Runs an approval step: the decision's output once there is one;
    /// otherwise records the pending approval (first time) and parks the run.
    pub(super) async fn approval(&self, sr: &StepRun<'_>, spec: &ApprovalSpec, ctx: &Bindings) -> Result<Value, StepError> {
        let (run, step) = (sr.run, sr.step.id.as_str());
        let store = self.store.approvals().ok_or_else(|| StepError::new(ErrorKind::Failed, "this run store keeps no approvals"))?;
        let known = store.approval(run, step).map_err(|e| StepError::new(ErrorKind::Store, format!("run store unavailable: {e:#}")))?;
        match known {
            Some(a) if a.state == "pending" => {
                // Woken without a decision (nothing lost): wait again.
                self.recorder.park(&sr.at(None), None).await?;
                Err(waiting(&a.title))
            }
            Some(a) => match a.output() {
                Some(out) => Ok(out),
                None => {
                    Err(StepError::new(ErrorKind::Timeout, format!("no decision within {} ({}); on_timeout: fail", human(spec.timeout), a.what_happened())))
                }
            },
            None => {
                let key = self.link_key()?;
                let fail = |what: &str, e: String| StepError::new(ErrorKind::Template, format!("approval {what}: {e}"));
                let title = match render_str(&spec.title, ctx).map_err(|e| fail("title", e))? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let title = crate::invocation::guest_text(&title, approval::MAX_TITLE);
                let mut details = render_value(&spec.details, ctx).map_err(|e| fail("details", e))?;
                let size = details.to_string().len();
                if size > approval::MAX_DETAILS {
                    // Kept readable and bounded; the full value is in the earlier steps' outputs.
                    details = json!(format!(
                        "(details were {size} bytes; the first {} are shown) {}",
                        approval::MAX_DETAILS,
                        crate::invocation::guest_text(&details.to_string(), approval::MAX_DETAILS)
                    ));
                }
                let approvers = render_approvers(&spec.approvers, ctx).map_err(|e| fail("approvers", e))?;
                let now = crate::audit::now_ms();
                let a = Approval {
                    run: run.to_string(),
                    root_run: sr.root.to_string(),
                    step: step.to_string(),
                    story: sr.story.name.clone(),
                    team: sr.story.team.clone(),
                    title,
                    details,
                    choices: spec.choices.clone(),
                    danger: spec.danger.clone(),
                    confirm: spec.confirm.clone(),
                    approvers,
                    created_ms: now,
                    deadline_ms: now.saturating_add(spec.timeout.as_millis() as u64),
                    on_timeout: match &spec.on_timeout {
                        OnTimeout::Choice(c) => Some(c.clone()),
                        OnTimeout::Fail => None,
                    },
                    state: "pending".into(),
                    decision: None,
                };
                let links = approval::links(&key, run, step, &a.choices, &a.approvers);
                let why = waiting(&a.title);
                self.recorder.park(&sr.at(None), Some((a, links))).await?;
                Err(why)
            }
        }
    }
}

fn waiting(title: &str) -> StepError {
    StepError::new(ErrorKind::Waiting, format!("waiting for a decision: {title}"))
}

fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The approvers a run's approval step names, rendered (against the run's
/// input only, so the links exist from the run's first step).
fn render_approvers(approvers: &approval::Approvers, ctx: &Bindings) -> Result<Vec<String>, String> {
    match approvers {
        approval::Approvers::List(l) => Ok(l.clone()),
        approval::Approvers::Template(t) => approval::approvers_of(render_str(t, ctx)?),
    }
}
