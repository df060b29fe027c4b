//! `patched!` is a site like a step: at the body's level, with a literal ID
//! of its own and nothing else.
use durafn::prelude::*;

#[durable_fn(id = "a", event = "x/a")]
async fn inside_a_step(_ctx: Ctx, _event: Event) -> Result<u32> {
    Ok(step!("price", {
        if patched!("new-price")? {
            2u32
        } else {
            1
        }
    })?)
}

#[durable_fn(id = "b", event = "x/b")]
async fn computed_id(_ctx: Ctx, _event: Event) -> Result<bool> {
    let id = "new-price";
    Ok(patched!(id)?)
}

#[durable_fn(id = "c", event = "x/c")]
async fn with_arguments(_ctx: Ctx, _event: Event) -> Result<bool> {
    Ok(patched!("new-price", true)?)
}

fn main() {}
