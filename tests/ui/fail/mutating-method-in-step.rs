use durafn::prelude::*;
use std::collections::HashMap;

#[durable_fn]
async fn collect(_ctx: Ctx, _event: Event) -> Result<usize> {
    let mut all = Vec::new();
    let mut seen = HashMap::new();
    step!("fetch", {
        all.push(1u32);
        seen.insert("a", 1u32);
    })?;
    Ok(all.len() + seen.len())
}

fn main() {}
