use durafn::prelude::*;
use std::time::{Instant, SystemTime};

// A stand-in for the chrono crate: its `Utc::now` reads the system clock,
// as the real one does. The check follows it into this module.
mod chrono {
    pub struct Utc;
    impl Utc {
        pub fn now() -> u64 {
            let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            since.map(|d| d.as_secs()).unwrap_or(0)
        }
    }
}

#[durable_fn]
async fn timed(_ctx: Ctx, _event: Event) -> Result<()> {
    let started = Instant::now();
    let wall = SystemTime::now();
    let utc = chrono::Utc::now();
    step!("work", { (started.elapsed().as_millis() as u64, utc) })?;
    let _ = wall;
    Ok(())
}

fn main() {}
