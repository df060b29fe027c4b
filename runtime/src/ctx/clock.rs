//! Time sources of a run, and injected failures for tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::step_id::StepId;

/// The time source of a run: the system clock, or a manual one in tests.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that runs `factor` times faster than the system clock from the
/// moment it is made: with `FastClock::new(86_400.0)` a durable one-day
/// sleep takes a second. For demos and tests of long schedules.
#[derive(Debug, Clone, Copy)]
pub struct FastClock {
    start_real: i64,
    factor: f64,
}

impl FastClock {
    pub fn new(factor: f64) -> FastClock {
        FastClock {
            start_real: SystemClock.now_ms(),
            factor: factor.max(1.0),
        }
    }
}

impl Clock for FastClock {
    fn now_ms(&self) -> i64 {
        let elapsed = SystemClock.now_ms() - self.start_real;
        self.start_real + (elapsed as f64 * self.factor) as i64
    }
}

/// Failures to inject into step attempts (the test harness's `fail_step`).
#[derive(Debug, Default)]
pub struct Faults {
    remaining: Mutex<HashMap<String, u32>>,
}

impl Faults {
    /// Fail the next `times` attempts of step `id` (a readable ID).
    pub fn fail(&self, id: impl Into<String>, times: u32) {
        self.remaining.lock().unwrap().insert(id.into(), times);
    }

    pub(crate) fn take(&self, id: &StepId) -> bool {
        let mut map = self.remaining.lock().unwrap();
        match map.get_mut(id.as_str()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}
