//! A condition others can wait for with a deadline: whoever changes what the condition reads
//! calls `notify`; waiters re-check on every notification, not on a timer.

use std::sync::{Condvar, Mutex};
use std::time::Instant;

#[derive(Default)]
pub struct Signal {
    lock: Mutex<()>,
    cond: Condvar,
}

impl Signal {
    pub fn notify(&self) {
        let _guard = self.lock.lock();
        self.cond.notify_all();
    }

    /// Waits until `done()` holds or `deadline` passed; true when it holds.
    pub fn wait_until(&self, deadline: Instant, done: impl Fn() -> bool) -> bool {
        let mut guard = self.lock.lock().expect("signal lock");
        while !done() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .cond
                .wait_timeout(guard, deadline - now)
                .expect("signal lock")
                .0;
        }
        true
    }
}
