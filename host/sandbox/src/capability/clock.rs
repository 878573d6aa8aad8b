//! The `clock` capability: the time, and sleeps that do not burn the guest's
//! CPU budget. The invocation's wall-clock limit ends a sleep that outlasts it.

use super::Capabilities;
use crate::audit::now_ms;
use crate::bindings::warden::action::clock;
use crate::recording::{locked, Call, Tape};
use std::time::Duration;

impl clock::Host for Capabilities {
    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<()> {
        let _off = self.call.meter.off_cpu();
        match &self.tape {
            // A replayed sleep is checked, not slept.
            Tape::Replay(r) => {
                let answered = locked(r).answer(&Call::Sleep { ms });
                return answered.map(drop).map_err(|d| self.call.diverged(&d));
            }
            Tape::Record(r) => locked(r).put(None, Call::Sleep { ms }),
            Tape::Live => {}
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }

    async fn now(&mut self) -> wasmtime::Result<u64> {
        match &self.tape {
            Tape::Replay(r) => {
                let answered = locked(r).answer(&Call::Now { ms: 0 });
                match answered {
                    Ok(Call::Now { ms }) => Ok(ms),
                    Ok(_) => unreachable!("answer() returns a call of the kind asked"),
                    Err(d) => Err(self.call.diverged(&d)),
                }
            }
            Tape::Record(r) => {
                let ms = now_ms();
                locked(r).put(None, Call::Now { ms });
                Ok(ms)
            }
            Tape::Live => Ok(now_ms()),
        }
    }
}
