//! The seed's Shopify-style import loop against a fake, local paginated
//! product source: 320 products, 50 per page, so 7 pages (the last partial).
//!
//! ```text
//! cargo run --example shopify_import                 # continuous driver, in process
//! cargo run --example shopify_import -- --fail 3     # page 3 fails once: watch the retry
//! cargo run --example shopify_import -- --reentry    # one call per step, as over HTTP
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

use durafn::prelude::*;
use durafn::testing::{Driver, TestRun};
use durafn::Transition;

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
        tokio::task::yield_now().await; // a real client would do I/O here
        if store.is_empty() {
            return Err(ShopError("no store".into()));
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reentry = args.iter().any(|a| a == "--reentry");
    let fail_page = args
        .iter()
        .position(|a| a == "--fail")
        .and_then(|i| args.get(i + 1))
        .map(|p| p.parse::<u32>().expect("--fail takes a page number"));

    let mut run = TestRun::new(import_products)
        .event(
            "shopify/import.requested",
            serde_json::json!({"store_id": "s1"}),
        )
        .driver(if reentry {
            Driver::ReEntry
        } else {
            Driver::Continuous
        });
    if let Some(page) = fail_page {
        run = run.fail_step(&format!("fetch-products[{page}]"), 1);
    }
    let out = run.run().await;

    println!(
        "driver: {}",
        if reentry {
            "re-entry (one call per step)"
        } else {
            "continuous (in process)"
        }
    );
    for (id, attempt) in &out.executed {
        let failed = out.transitions.iter().find_map(|t| match t {
            Transition::StepErrored {
                id: e,
                attempt: a,
                error,
                ..
            } if e == id && a == attempt => Some(error),
            _ => None,
        });
        match (attempt, failed) {
            (0, None) => println!("{id}"),
            (a, None) => println!("{id} (attempt {})", a + 1),
            (a, Some(e)) => println!("{id} (attempt {}) failed: {}; retrying", a + 1, e.message),
        }
    }
    println!(
        "calls: {}, page fetches: {}, journaled steps: {}",
        out.calls,
        shop::FETCHES.load(Ordering::SeqCst),
        out.journal.len()
    );
    let n: usize = out.output();
    println!("imported {n} products");
}
