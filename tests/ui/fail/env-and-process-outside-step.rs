use durafn::prelude::*;
use std::process::Command;

#[durable_fn]
async fn deploy(_ctx: Ctx, _event: Event) -> Result<()> {
    let region = std::env::var("REGION").unwrap_or_default();
    let _ = Command::new("deploy").arg(region);
    Ok(())
}

fn main() {}
