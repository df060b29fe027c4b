use durafn::prelude::*;
use std::fs::File;

#[durable_fn]
async fn load_config(_ctx: Ctx, _event: Event) -> Result<usize> {
    let text = std::fs::read_to_string("config.toml")?;
    let _file = File::open("data.csv")?;
    Ok(text.len())
}

fn main() {}
