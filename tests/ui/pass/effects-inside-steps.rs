//! Inside a step body, effects are the point: awaits, clocks, randomness,
//! printing, files, and awaited calls on outside clients.
use durafn::prelude::*;

struct Db;
impl Db {
    async fn insert(&self, _row: u32) -> std::io::Result<u64> {
        Ok(1)
    }
}

async fn fetch(page: u32) -> std::io::Result<Vec<u32>> {
    Ok(vec![page])
}

#[durable_fn]
async fn effects(ctx: Ctx, _event: Event) -> Result<usize> {
    let db = Db;
    let mut all = Vec::new();
    for page in 0..2 {
        let items: Vec<u32> = step!("fetch", {
            println!("fetching page {page}");
            let started = std::time::Instant::now();
            let items = fetch(page).await?;
            let _ = started.elapsed();
            items
        })?;
        all.extend(items);
    }
    let id: u64 = step!("save", {
        let key = ctx.idempotency_key().unwrap_or_default();
        let _ = key;
        db.insert(all.len() as u32).await?
    })?;
    Ok(id as usize)
}

fn main() {}
