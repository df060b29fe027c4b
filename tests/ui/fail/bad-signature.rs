use durafn::prelude::*;

#[durable_fn]
fn not_async(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn]
async fn no_ctx(_event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn]
async fn no_result(_ctx: Ctx, _event: Event) -> u32 {
    1
}

fn main() {}
