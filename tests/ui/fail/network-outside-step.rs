use durafn::prelude::*;
use std::net::TcpStream;

#[durable_fn]
async fn ping(_ctx: Ctx, _event: Event) -> Result<()> {
    let _conn = TcpStream::connect("127.0.0.1:6379")?;
    Ok(())
}

fn main() {}
