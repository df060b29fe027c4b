use durafn::prelude::*;

async fn cached() -> u32 {
    1
}

#[durable_fn]
async fn hatch(_ctx: Ctx, _event: Event) -> Result<u32> {
    let v = unchecked!("", cached().await);
    Ok(v)
}

fn main() {}
