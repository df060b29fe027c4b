//! A `&mut` borrow of a binding from outside the step, inside the step: the
//! change is lost on replay, like an assignment (R4).
use durafn::prelude::*;

fn add_tag(tags: &mut Vec<String>) {
    tags.push("imported".into());
}

#[durable_fn]
async fn import(_ctx: Ctx, _event: Event) -> Result<usize> {
    let mut buffer = vec![1u32, 2];
    let mut tags: Vec<String> = Vec::new();
    let mut prices = vec![10u32, 20];
    let taken: Vec<u32> = step!("flush", { std::mem::take(&mut buffer) })?;
    step!("tag", { add_tag(&mut tags) })?;
    step!("discount", {
        for p in &mut prices {
            *p -= 1;
        }
    })?;
    Ok(taken.len() + tags.len() + prices.len() + buffer.len())
}

fn main() {}
