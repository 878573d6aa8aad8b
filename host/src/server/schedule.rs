//! Cron schedules: each trigger with a `schedule` submits a run of its story
//! (input `schedule_input`) at every upcoming time.

use super::queue::{Queue, Start};
use crate::policy::Policy;
use crate::story::engine::{Accepted, Engine};
use std::str::FromStr;
use std::sync::Arc;

pub fn start(engine: Arc<Engine>, queue: Queue, policy: &Policy) {
    for t in policy.triggers.values() {
        let Some(expr) = &t.schedule else { continue };
        let schedule = cron::Schedule::from_str(expr).expect("validated at policy load");
        let (engine, queue, story, input) = (engine.clone(), queue.clone(), t.story.clone(), t.schedule_input.clone());
        tokio::spawn(async move {
            for next in schedule.upcoming(chrono::Utc) {
                let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await;
                match engine.accept(&story, input.clone(), "schedule", None, false).await {
                    Ok(Accepted::New(run)) => {
                        tracing::info!(story = %story, run = %run.id, "schedule fired");
                        queue.push(run.id.clone(), &story, Start::Accepted(run), None);
                    }
                    Ok(Accepted::Existing(_)) => unreachable!("no idempotency key"),
                    Err(e) => tracing::error!(story = %story, "scheduled run refused: {e}"),
                }
            }
        });
    }
}
