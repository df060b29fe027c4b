use durafn::prelude::*;

#[durable_fn]
async fn debug(_ctx: Ctx, event: Event) -> Result<()> {
    dbg!(&event.name);
    eprintln!("got {}", event.name);
    Ok(())
}

fn main() {}
