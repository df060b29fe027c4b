use durafn::prelude::*;
use std::time::{Instant, SystemTime};

mod chrono {
    pub struct Utc;
    impl Utc {
        pub fn now() -> u64 {
            0
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
