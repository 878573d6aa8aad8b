//! The seam between story semantics and the runtime: the engine asks an
//! [`Invoke`] to run a plugin for a team, and never touches wasmtime. The
//! real one, [`PolicyInvoker`], loads, vets and runs plugins under the
//! policy's grants; unit tests give the engine a scripted one.

use super::state::{ErrorKind, StepError};
use crate::invocation::{InvocationInfo, LogLine};
use crate::policy::Policy;
use crate::recording::{Stored, Tape};
use crate::runtime::{InvocationReport, Plugin, Runtime};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

#[async_trait::async_trait]
pub trait Invoke: Send + Sync {
    /// Makes `plugin` ready to run for `team` (loaded, vetted); the error is
    /// the one a step using it would fail with.
    async fn prepare(&self, plugin: &str, team: &str) -> Result<(), StepError>;
    /// The runtime plugins run on, when there is one (the console explains trust with it).
    fn runtime(&self) -> Option<&Arc<Runtime>> {
        None
    }

    /// Runs `plugin` once for `team`, under that team's grant. `tap` receives
    /// log lines as they are written.
    async fn invoke(
        &self,
        plugin: &str,
        team: &str,
        info: InvocationInfo,
        input: &str,
        tap: Option<UnboundedSender<LogLine>>,
    ) -> Result<InvocationReport, StepError>;

    /// [`Invoke::invoke`], recording every capability call and WASI read
    /// within the grant's `limits.recording_bytes` (see [`crate::recording`]).
    /// An invoker that cannot record returns no recording.
    async fn invoke_recorded(
        &self,
        plugin: &str,
        team: &str,
        info: InvocationInfo,
        input: &str,
        tap: Option<UnboundedSender<LogLine>>,
    ) -> Result<(InvocationReport, Option<Stored>), StepError> {
        self.invoke(plugin, team, info, input, tap).await.map(|r| (r, None))
    }

    /// Invocations alive now, how many can be, and what idle slots keep (for metrics).
    fn instances(&self) -> crate::runtime::PoolGauges {
        crate::runtime::PoolGauges::default()
    }
}

/// Runs plugins from the policy on the runtime, each vetted once per team.
pub struct PolicyInvoker {
    pub runtime: Arc<Runtime>,
    policy: Arc<Policy>,
    vetted: Mutex<HashMap<(String, String), Arc<Plugin>>>,
}

impl PolicyInvoker {
    pub fn new(runtime: Arc<Runtime>, policy: Arc<Policy>) -> PolicyInvoker {
        PolicyInvoker { runtime, policy, vetted: Mutex::default() }
    }

    /// The plugin, vetted for `team` when the policy has teams: pinned, or
    /// signed by a key the team trusts (see [`crate::vetting`]).
    pub async fn plugin(&self, name: &str, team: &str) -> Result<Arc<Plugin>, StepError> {
        let key = (team.to_string(), name.to_string());
        if let Some(p) = self.vetted.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let entry = self.policy.plugins.get(name).ok_or_else(|| StepError::new(ErrorKind::Failed, format!("plugin `{name}` is not in the policy")))?;
        let p = self.runtime.load_entry(entry).map_err(|e| StepError::new(ErrorKind::Denied, format!("{e:#}")))?;
        let denied = |why: String| StepError::new(ErrorKind::Denied, why);
        if !self.policy.teams.is_empty() {
            let t = self.policy.teams.get(team).ok_or_else(|| denied(format!("team `{team}` is not in the policy, so it may run nothing")))?;
            let m = self.runtime.describe(&p).await.map_err(|e| StepError::new(ErrorKind::Failed, format!("{e:#}")))?;
            let trust = crate::vetting::check(&self.policy, t, entry, &p.sha256, &m.name, &m.version).map_err(denied)?;
            tracing::debug!(team, plugin = name, "plugin trusted: {trust}");
        } else if entry.min_version.is_some() {
            let m = self.runtime.describe(&p).await.map_err(|e| StepError::new(ErrorKind::Failed, format!("{e:#}")))?;
            crate::vetting::version_allowed(entry, &m.version).map_err(denied)?;
        }
        self.vetted.lock().unwrap().insert(key, p.clone());
        Ok(p)
    }
}

#[async_trait::async_trait]
impl Invoke for PolicyInvoker {
    fn runtime(&self) -> Option<&Arc<Runtime>> {
        Some(&self.runtime)
    }
    async fn prepare(&self, plugin: &str, team: &str) -> Result<(), StepError> {
        self.plugin(plugin, team).await.map(|_| ())
    }

    async fn invoke(
        &self,
        plugin: &str,
        team: &str,
        info: InvocationInfo,
        input: &str,
        tap: Option<UnboundedSender<LogLine>>,
    ) -> Result<InvocationReport, StepError> {
        let p = self.plugin(plugin, team).await?;
        // The grant of the story's own team: a sub-story runs under its team, never the caller's.
        Ok(self.runtime.invoke(&p, self.policy.grant_for_team(plugin, team), info, input, tap).await)
    }

    async fn invoke_recorded(
        &self,
        plugin: &str,
        team: &str,
        info: InvocationInfo,
        input: &str,
        tap: Option<UnboundedSender<LogLine>>,
    ) -> Result<(InvocationReport, Option<Stored>), StepError> {
        let p = self.plugin(plugin, team).await?;
        let grant = self.policy.grant_for_team(plugin, team);
        let tape = Tape::record(grant.limits.recording_bytes);
        let report = self.runtime.invoke_taped(&p, grant, info.clone(), input, tap, tape.clone()).await;
        let recording = tape.finish_stored(&p.name, &p.sha256, &info, input, &report.outcome);
        Ok((report, recording))
    }

    fn instances(&self) -> crate::runtime::PoolGauges {
        self.runtime.instances()
    }
}
