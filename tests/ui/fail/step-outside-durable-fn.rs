use durafn::prelude::*;

async fn plain() -> Result<u32> {
    let v: u32 = step!("a", { 1u32 })?;
    Ok(v)
}

fn main() {}
