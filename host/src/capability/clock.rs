//! The `clock` capability: the time, and sleeps that do not burn the guest's
//! CPU budget. The invocation's wall-clock limit ends a sleep that outlasts it.

use super::Capabilities;
use crate::audit::now_ms;
use crate::bindings::warden::action::clock;
use std::time::Duration;

impl clock::Host for Capabilities {
    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<()> {
        let _off = self.call.meter.off_cpu();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }

    async fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(now_ms())
    }
}
