//! `join!`, `try_join!` and `select!` await the futures they are given:
//! outside a step that is an `.await` like any other (R1).
use durafn::prelude::*;

async fn price(sku: &str) -> u32 {
    sku.len() as u32
}

async fn stock(sku: &str) -> Result<u32> {
    Ok(sku.len() as u32)
}

#[durable_fn]
async fn quote(_ctx: Ctx, _event: Event) -> Result<u32> {
    let (a, b) = tokio::join!(price("a"), price("b"));
    let (c, d) = tokio::try_join!(stock("c"), stock("d"))?;
    let first = tokio::select! {
        p = price("e") => p,
        q = price("f") => q,
    };
    Ok(a + b + c + d + first)
}

fn main() {}
