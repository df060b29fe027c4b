//! An effect behind a `use` rename, a group, a glob of std's module, or a
//! `use` inside the body is still the effect.
use durafn::prelude::*;
use std::fs::read_to_string as slurp;
use std::time::Instant as Clock;
use std::{env as environment, process::id as pid};

mod globbed {
    use durafn::prelude::*;
    use std::fs::*;

    #[durable_fn]
    pub async fn from_glob(_ctx: Ctx, _event: Event) -> Result<usize> {
        let text = read_to_string("config.toml")?;
        Ok(text.len())
    }
}

#[durable_fn]
async fn aliased(_ctx: Ctx, _event: Event) -> Result<u64> {
    let started = Clock::now();
    let config = slurp("config.toml")?;
    let region = environment::var("REGION").unwrap_or_default();
    let me = pid();
    use std::time::SystemTime as Wall;
    let wall = Wall::now();
    let took = step!("work", { started.elapsed().as_millis() as u64 })?;
    step!("save", { (wall.elapsed().is_ok(), config.len(), region.len(), took) })?;
    Ok(me as u64)
}

fn main() {}
