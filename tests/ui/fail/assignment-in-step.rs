use durafn::prelude::*;

#[durable_fn]
async fn totals(_ctx: Ctx, _event: Event) -> Result<u32> {
    let mut total = 0;
    let mut last = String::new();
    for i in 0..3u32 {
        step!("add", {
            total += i;
            last = format!("item {i}");
        })?;
    }
    Ok(total + last.len() as u32)
}

fn main() {}
