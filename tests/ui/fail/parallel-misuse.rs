use durafn::prelude::*;

#[durable_fn]
async fn fan(_ctx: Ctx, _event: Event) -> Result<()> {
    let body = 5u32;
    let _a: Vec<u32> = parallel!("not-a-closure", vec![1u32, 2], body)?;
    Ok(())
}

fn main() {}
