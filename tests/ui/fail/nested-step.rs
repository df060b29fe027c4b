use durafn::prelude::*;

#[durable_fn]
async fn nested(_ctx: Ctx, _event: Event) -> Result<u32> {
    let v: u32 = step!("outer", {
        let inner: u32 = step!("inner", { 1u32 })?;
        inner + 1
    })?;
    Ok(v)
}

fn main() {}
