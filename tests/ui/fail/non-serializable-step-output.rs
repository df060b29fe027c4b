use durafn::prelude::*;

struct Connection {
    _fd: i32,
}

#[durable_fn]
async fn connect(_ctx: Ctx, _event: Event) -> Result<()> {
    let _conn = step!("connect", { Connection { _fd: 3 } })?;
    Ok(())
}

fn main() {}
