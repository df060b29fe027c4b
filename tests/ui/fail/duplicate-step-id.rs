use durafn::prelude::*;

#[durable_fn]
async fn twice(_ctx: Ctx, _event: Event) -> Result<u32> {
    let a: u32 = step!("fetch", { 1u32 })?;
    let b: u32 = step!("fetch", { 2u32 })?;
    Ok(a + b)
}

fn main() {}
