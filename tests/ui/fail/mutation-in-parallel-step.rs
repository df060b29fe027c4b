use durafn::prelude::*;

#[durable_fn]
async fn fan(_ctx: Ctx, _event: Event) -> Result<()> {
    let mut seen = Vec::new();
    let _b: Vec<u32> = parallel!("mutates", vec![1u32, 2], |n| {
        seen.push(n);
        n
    })?;
    Ok(())
}

fn main() {}
