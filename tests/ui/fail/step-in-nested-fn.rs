use durafn::prelude::*;

#[durable_fn]
async fn outer(_ctx: Ctx, _event: Event) -> Result<()> {
    async fn helper() -> u32 {
        step!("helper-step", { 1u32 }).unwrap()
    }
    let _ = helper;
    Ok(())
}

fn main() {}
