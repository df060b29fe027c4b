use durafn::prelude::*;

#[durable_fn]
async fn mapped(_ctx: Ctx, _event: Event) -> Result<()> {
    let ids = vec![1u32, 2, 3];
    let _results: Vec<_> = ids.iter().map(|id| step!("fetch", { *id })).collect();
    Ok(())
}

fn main() {}
