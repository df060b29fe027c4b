//! The seed's Shopify-style import loop against a fake, local paginated
//! product source: 320 products, 50 per page, so 7 pages (the last partial).
//!
//! ```text
//! cargo run --example shopify_import                 # the engine on an embedded SQLite file
//! cargo run --example shopify_import -- --fail 3     # page 3 fails once: the engine retries it
//! cargo run --example shopify_import -- --reentry    # one call per step, as an executor does over HTTP
//! ```

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use durafn::prelude::*;
use durafn::testing::{Driver, TestRun};
use durafn::{Backoff, Engine};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: u64,
    title: String,
}

#[derive(Deserialize)]
struct ImportRequested {
    store_id: String,
}

/// The fake shop: 320 products, pages of 50 after a cursor.
mod shop {
    use super::*;

    pub const PRODUCTS: u64 = 320;
    pub static FETCHES: AtomicUsize = AtomicUsize::new(0);
    /// A page whose first fetch fails (`--fail N`), as a flaky API would.
    pub static FAIL_PAGE: AtomicU32 = AtomicU32::new(u32::MAX);

    #[derive(Debug)]
    pub struct ShopError(pub String);
    impl std::fmt::Display for ShopError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for ShopError {}

    pub async fn list_products(
        store: &str,
        cursor: Option<u64>,
    ) -> std::result::Result<Vec<Product>, ShopError> {
        FETCHES.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await; // a real client does I/O here
        if store.is_empty() {
            return Err(ShopError("no store".into()));
        }
        let page = (cursor.unwrap_or(0) / 50) as u32;
        if FAIL_PAGE
            .compare_exchange(page, u32::MAX, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Err(ShopError(format!("503 Service Unavailable (page {page})")));
        }
        let start = cursor.map_or(1, |c| c + 1);
        Ok((start..=PRODUCTS)
            .take(50)
            .map(|id| Product {
                id,
                title: format!("product {id}"),
            })
            .collect())
    }
}

#[durable_fn(id = "shopify-product-import", event = "shopify/import.requested")]
async fn import_products(ctx: Ctx, event: Event<ImportRequested>) -> Result<usize> {
    let mut all = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let page: Vec<Product> = step!("fetch-products", {
            shop::list_products(&event.data.store_id, cursor).await?
        })?;
        all.extend(page.iter().cloned());
        if page.len() < 50 {
            break;
        }
        cursor = page.last().map(|p| p.id);
    }
    ctx.log(format!("fetched {} products", all.len()));
    Ok(all.len())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(page) = args
        .iter()
        .position(|a| a == "--fail")
        .and_then(|i| args.get(i + 1))
    {
        shop::FAIL_PAGE.store(
            page.parse().expect("--fail takes a page number"),
            Ordering::SeqCst,
        );
    }
    if args.iter().any(|a| a == "--reentry") {
        return reentry().await;
    }

    // The embedded default: one SQLite file.
    let dir = std::env::temp_dir().join(format!("durafn-shopify-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("durafn.db");
    let engine = Engine::builder()
        .sqlite(&db)
        .register(import_products)
        // Quick retries for the demo (the default starts at 1 s).
        .backoff(Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
        })
        .build()
        .await?;
    println!("engine on {}", db.display());
    let sent = engine
        .send(Event::new(
            "shopify/import.requested",
            serde_json::json!({"store_id": "s1"}),
        ))
        .await?;
    let run = engine
        .wait_for_run(&sent.runs[0], Duration::from_secs(60))
        .await?;
    println!("run {} {}", run.run.id, run.run.status.as_str());
    for step in &run.steps {
        let ms = step.ended_ms.unwrap_or(0) - step.started_ms.unwrap_or(0);
        let retried = match (&step.error, step.attempts) {
            (Some(e), n) if n > 1 => format!(
                "  (attempts: {n}; earlier failure: {})",
                e["message"].as_str().unwrap_or("?")
            ),
            _ => String::new(),
        };
        println!("{:<20} {} in {ms} ms{retried}", step.id, step.status);
    }
    let imported = run
        .run
        .output
        .as_ref()
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    println!("page fetches: {}", shop::FETCHES.load(Ordering::SeqCst));
    println!("imported {imported} products");
    engine.close().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The same function driven by re-entry: each call replays from the top
/// and runs at most one new step.
async fn reentry() -> Result<()> {
    let out = TestRun::new(import_products)
        .event(
            "shopify/import.requested",
            serde_json::json!({"store_id": "s1"}),
        )
        .driver(Driver::ReEntry)
        .run()
        .await;
    println!("driver: re-entry, one call per new step");
    for (id, attempt) in &out.executed {
        println!(
            "{id}{}",
            if *attempt > 0 {
                format!(" (attempt {})", attempt + 1)
            } else {
                String::new()
            }
        );
    }
    println!(
        "calls: {}, page fetches: {}, journaled steps: {}",
        out.calls,
        shop::FETCHES.load(Ordering::SeqCst),
        out.journal.len()
    );
    let n: usize = out.output();
    println!("imported {n} products");
    Ok(())
}
