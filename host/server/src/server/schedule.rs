//! Cron schedules: each trigger with a `schedule` starts a run of its story
//! (input `schedule_input`) at every tick. A tick's run carries the tick as
//! its idempotency key ([`crate::store::schedule_key`]), so however many
//! nodes fire it, the store keeps one run per tick. A tick missed while no
//! node ran is skipped, or fired once at start (`catch_up = "once"`).

use super::queue::Queue;
use crate::policy::{CatchUp, Policy, Trigger};
use crate::story::engine::{Accepted, Creation, StoryRunner};
use chrono::{DateTime, Utc};
use std::str::FromStr;
use std::sync::Arc;

pub fn start(engine: Arc<StoryRunner>, queue: Queue, policy: &Policy) {
    for t in policy.triggers.values() {
        let Some(expr) = &t.schedule else { continue };
        let schedule = cron::Schedule::from_str(expr).expect("validated at policy load");
        let (engine, queue, trigger) = (engine.clone(), queue.clone(), t.clone());
        tokio::spawn(async move {
            if trigger.catch_up == CatchUp::Once {
                catch_up(&engine, &queue, &trigger, &schedule).await;
            }
            for next in ticks(&schedule, trigger.timezone) {
                let wait = (next - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await;
                fire(&engine, &queue, &trigger, next).await;
            }
        });
    }
}

/// A schedule's ticks from now on, its hours read in `zone` (so `0 0 9 * * *`
/// in Europe/Dublin is 09:00 there, summer time or not).
pub fn ticks(schedule: &cron::Schedule, zone: chrono_tz::Tz) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    schedule.upcoming(zone).map(|t| t.with_timezone(&Utc))
}

/// Fires the latest tick missed since the story's last scheduled run, if any.
async fn catch_up(engine: &StoryRunner, queue: &Queue, trigger: &Trigger, schedule: &cron::Schedule) {
    let last = match engine.store.last_schedule_tick(&trigger.story) {
        Ok(Some(ms)) => DateTime::<Utc>::from_timestamp_millis(ms as i64),
        // Never fired: nothing was missed.
        Ok(None) => return,
        Err(e) => {
            tracing::error!(story = %trigger.story, "cannot read the schedule's last tick, so no missed tick is caught up: {e:#}");
            return;
        }
    };
    let Some(last) = last else { return };
    // The latest tick before now (cron's ticks run backwards from a time too).
    let Some(missed) = schedule.after(&Utc::now().with_timezone(&trigger.timezone)).next_back().map(|t| t.with_timezone(&Utc)) else { return };
    if missed > last {
        tracing::info!(story = %trigger.story, tick = %missed, "catching up a tick missed while no node ran (catch_up = \"once\")");
        fire(engine, queue, trigger, missed).await;
    }
}

async fn fire(engine: &StoryRunner, queue: &Queue, trigger: &Trigger, tick: DateTime<Utc>) {
    let key = crate::store::schedule_key(tick.timestamp_millis().max(0) as u64);
    match engine.accept(&trigger.story, trigger.schedule_input.clone(), "schedule", Some(&key), Creation::Durable).await {
        Ok(Accepted::New(run)) => {
            tracing::info!(story = %trigger.story, run = %run.id, "schedule fired");
            if let Err(e) = queue.dispatch(run, false).await {
                tracing::error!(story = %trigger.story, "scheduled run not started: {e}");
            }
        }
        // Another node fired this tick.
        Ok(Accepted::Existing(_)) => {}
        Err(e) => tracing::error!(story = %trigger.story, "scheduled run refused: {e}"),
    }
}

/// Starts the run of one tick, unless another node already did.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_reads_its_hours_in_its_time_zone() {
        let s = cron::Schedule::from_str("0 0 9 * * *").unwrap();
        let utc = ticks(&s, chrono_tz::Tz::UTC).next().unwrap();
        assert_eq!(utc.format("%H:%M").to_string(), "09:00");
        let tokyo = ticks(&s, chrono_tz::Asia::Tokyo).next().unwrap();
        assert_eq!(tokyo.format("%H:%M").to_string(), "00:00", "09:00 in Tokyo is midnight UTC");
    }
}
