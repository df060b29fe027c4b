use durafn::prelude::*;

#[durable_fn]
async fn background(_ctx: Ctx, _event: Event) -> Result<()> {
    let _task = tokio::spawn(async { 1 });
    let _thread = std::thread::spawn(|| 2);
    Ok(())
}

fn main() {}
