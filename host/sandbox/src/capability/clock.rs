//! The `clock` capability: the time, and sleeps that do not burn the guest's
//! CPU budget. The invocation's wall-clock limit ends a sleep that outlasts it.

use super::Capabilities;
use crate::audit::now_ms;
use crate::bindings::warden::action::clock;
use crate::recording::{Call, Intercepted};
use std::time::Duration;

impl clock::Host for Capabilities {
    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<()> {
        let _off = self.call.meter.off_cpu();
        match self.tape.intercept(|| Call::Sleep { ms }) {
            // A replayed sleep is checked, not slept.
            Intercepted::Answered(answered) => answered.map(drop).map_err(|d| self.call.diverged(&d)),
            Intercepted::Proceed(made) => {
                made.keep(|| Call::Sleep { ms });
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
        }
    }

    async fn now(&mut self) -> wasmtime::Result<u64> {
        match self.tape.intercept(|| Call::Now { ms: 0 }) {
            Intercepted::Answered(Ok(Call::Now { ms })) => Ok(ms),
            Intercepted::Answered(Ok(_)) => unreachable!("answer() returns a call of the kind asked"),
            Intercepted::Answered(Err(d)) => Err(self.call.diverged(&d)),
            Intercepted::Proceed(made) => {
                let ms = now_ms();
                made.keep(|| Call::Now { ms });
                Ok(ms)
            }
        }
    }
}
