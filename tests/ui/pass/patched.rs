//! `patched!` at the body's level, in a loop (its ID takes the index) and
//! in an `if`; its site is in the step table.
use durafn::prelude::*;
use durafn::{DurableFn, StepKind};

#[durable_fn(id = "pricing", event = "shop/priced")]
async fn pricing(_ctx: Ctx, _event: Event) -> Result<u32> {
    let mut total = 0;
    for i in 0..3u32 {
        total += if patched!("per-item-tax")? {
            step!("item", { i * 2 })?
        } else {
            step!("item-old", { i })?
        };
    }
    Ok(total)
}

fn main() {
    let sites = pricing.steps();
    assert_eq!(sites[0].id, "per-item-tax");
    assert_eq!(sites[0].kind, StepKind::Patched);
    assert_eq!(sites[0].loop_depth, 1);
}
