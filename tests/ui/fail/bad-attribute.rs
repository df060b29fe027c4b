use durafn::prelude::*;

#[durable_fn(id = "x", retry = 3, event = 5)]
async fn misconfigured(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

fn main() {}
