use durafn::prelude::*;

#[durable_fn]
async fn hello(_ctx: Ctx, _event: Event) -> Result<()> {
    println!("hello");
    step!("a", { println!("a") })?;
    Ok(())
}

fn main() {}
