use durafn::prelude::*;

#[durable_fn]
async fn options(_ctx: Ctx, _event: Event) -> Result<u32> {
    let v: u32 = step!("a", retry = 3, { 1u32 })?;
    Ok(v)
}

fn main() {}
