use durafn::prelude::*;

#[durable_fn]
async fn counter(_ctx: Ctx, _event: Event) -> Result<()> {
    static mut CALLS: u32 = 0;
    Ok(())
}

fn main() {}
