use durafn::prelude::*;
use std::time::Duration;

#[durable_fn]
async fn waits(_ctx: Ctx, _event: Event) -> Result<()> {
    std::thread::sleep(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

fn main() {}
