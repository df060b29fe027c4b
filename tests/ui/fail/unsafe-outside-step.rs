use durafn::prelude::*;

#[durable_fn]
async fn raw(_ctx: Ctx, _event: Event) -> Result<u8> {
    let x = 7u8;
    let v = unsafe { *std::ptr::addr_of!(x) };
    Ok(v)
}

fn main() {}
