//! A wake-up flag for the Ready thread.
//!
//! The Ready thread sleeps until its next tick unless something needs it: a proposal was
//! queued, the apply worker reported progress, or (later) a peer message arrived. Each source
//! keeps its own bounded channel; the doorbell only says "look again", so a ring is never
//! lost and many rings before a wake cost one wake.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Doorbell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Doorbell {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks that there is work and wakes the waiter, if any.
    pub fn ring(&self) {
        *self.lock() = true;
        self.cv.notify_one();
    }

    /// Sleeps until rung or until `deadline`, whichever is first, and clears the ring.
    pub fn wait_until(&self, deadline: Instant) {
        let mut rung = self.lock();
        while !*rung {
            let now = Instant::now();
            let Some(left) = deadline
                .checked_duration_since(now)
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            rung = match self.cv.wait_timeout(rung, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        *rung = false;
    }

    // A poisoned flag is still a valid bool: recover it instead of panicking.
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.rung.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let bell = Doorbell::new();
        bell.ring();
        // Would sleep an hour if the ring were lost.
        bell.wait_until(Instant::now() + Duration::from_secs(3600));
        // The ring was consumed: a past deadline returns at once.
        bell.wait_until(Instant::now());
    }
}
