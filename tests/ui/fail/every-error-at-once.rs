use durafn::prelude::*;

async fn get(_page: u32) -> Vec<u32> {
    vec![]
}

#[durable_fn(id = "import", event = "shop/import")]
async fn import(_ctx: Ctx, _event: Event) -> Result<usize> {
    println!("starting import");
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    for page in 0..3 {
        step!("fetch", {
            let items = get(page).await;
            all.extend(items);
        })?;
    }
    let _ = started;
    Ok(all.len())
}

fn main() {}
