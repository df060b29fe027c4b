use durafn::prelude::*;
use std::time::Duration;

#[durable_fn]
async fn approval(_ctx: Ctx, _event: Event) -> Result<()> {
    let name = "app/approval.granted";
    let _a: Option<Event> = wait_for_event!("a", event = name, timeout = Duration::from_secs(1))?;
    let _b: Option<Event> = wait_for_event!(
        "b",
        event = "app/x",
        timeout = Duration::from_secs(1),
        match = "data.id == 1",
        if = "true"
    )?;
    let _c: Option<Event> = wait_for_event!(
        "c",
        event = "app/x",
        timeout = Duration::from_secs(1),
        lookback = "5m"
    )?;
    Ok(())
}

fn main() {}
