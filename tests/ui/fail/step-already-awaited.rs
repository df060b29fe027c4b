use durafn::prelude::*;

#[durable_fn]
async fn awaited(_ctx: Ctx, _event: Event) -> Result<u32> {
    let v: u32 = step!("a", { 1u32 }).await?;
    Ok(v)
}

fn main() {}
