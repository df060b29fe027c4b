use durafn::prelude::*;
use std::io::Write;

#[durable_fn]
async fn writer(_ctx: Ctx, _event: Event) -> Result<()> {
    std::io::stdout().write_all(b"hi")?;
    Ok(())
}

fn main() {}
