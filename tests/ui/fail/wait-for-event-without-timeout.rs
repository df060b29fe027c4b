use durafn::prelude::*;

#[durable_fn]
async fn approval(_ctx: Ctx, _event: Event) -> Result<()> {
    let _granted: Option<Event> = wait_for_event!("granted", event = "app/approval.granted", match = "data.request_id")?;
    Ok(())
}

fn main() {}
