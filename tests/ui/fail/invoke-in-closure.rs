use durafn::prelude::*;

#[durable_fn(id = "child")]
async fn child(_ctx: Ctx, _event: Event) -> Result<u32> {
    Ok(1)
}

#[durable_fn]
async fn parent(_ctx: Ctx, _event: Event) -> Result<()> {
    let later = || invoke!("call", child, 1u32);
    let _: std::result::Result<u32, StepError> = later();
    Ok(())
}

fn main() {}
