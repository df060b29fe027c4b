//! A loop over a `HashMap`/`HashSet` whose body holds a step: the loop
//! index numbers the steps in an order that differs between processes.
use durafn::prelude::*;
use std::collections::{HashMap, HashSet};

#[derive(Deserialize)]
struct Order {
    lines: HashMap<String, u32>,
}

#[durable_fn]
async fn charge(_ctx: Ctx, event: Event<Order>) -> Result<u32> {
    let prices: HashMap<String, u32> = HashMap::new();
    for (sku, price) in &prices {
        step!("charge", { (sku.clone(), *price) })?;
    }
    let mut seen = HashSet::new();
    seen.insert(1u32);
    for id in seen.iter() {
        step!("notify", { *id })?;
    }
    let by_sku = event.data.lines.iter().map(|(k, v)| (k.clone(), *v)).collect::<HashMap<_, _>>();
    for (sku, qty) in by_sku.into_iter().enumerate() {
        step!("reserve", { (sku, qty) })?;
    }
    for qty in event.data.lines.values() {
        step!("ship", { *qty })?;
    }
    let skus: Vec<String> = parallel!("price", event.data.lines.keys().cloned().collect::<Vec<_>>(), |sku| {
        sku
    })?;
    Ok(skus.len() as u32)
}

fn main() {}
