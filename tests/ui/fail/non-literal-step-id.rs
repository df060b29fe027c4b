use durafn::prelude::*;

#[durable_fn]
async fn pages(_ctx: Ctx, _event: Event) -> Result<()> {
    for page in 0..3 {
        let id = format!("fetch-page-{page}");
        step!(id, { page })?;
    }
    Ok(())
}

fn main() {}
