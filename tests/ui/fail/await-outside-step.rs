use durafn::prelude::*;

async fn fetch_price() -> u32 {
    42
}

#[durable_fn]
async fn quote(_ctx: Ctx, _event: Event) -> Result<u32> {
    let price = fetch_price().await;
    Ok(price)
}

fn main() {}
