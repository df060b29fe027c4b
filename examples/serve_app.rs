//! The seed's functions served over HTTP with the Inngest SDK protocol: an
//! executor (`durafn dev`, or Inngest's dev server) calls this endpoint
//! once per step.
//!
//! ```text
//! INNGEST_DEV=1 cargo run -p durafn-cli --example serve_app      # serves http://127.0.0.1:3000/api/durafn
//! cargo run -p durafn-cli -- dev -u http://127.0.0.1:3000/api/durafn
//! cargo run -p durafn-cli -- send shopify/import.requested --data '{"store_id": "s1"}'
//! ```
//! `--port N` picks another port. Every page fetch is logged, so you can
//! see that each page is fetched once although the function is re-entered
//! from the top for every step.

use std::sync::atomic::{AtomicUsize, Ordering};

use durafn::prelude::*;
use durafn::serve::Handler;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: u64,
    title: String,
}

#[derive(Deserialize)]
struct ImportRequested {
    store_id: String,
}

static FETCHES: AtomicUsize = AtomicUsize::new(0);

/// The fake shop: 320 products, pages of 50 after a cursor.
async fn list_products(store: &str, cursor: Option<u64>) -> std::io::Result<Vec<Product>> {
    let n = FETCHES.fetch_add(1, Ordering::SeqCst) + 1;
    eprintln!("shop: fetch #{n} of store {store}, cursor {cursor:?}");
    let start = cursor.map_or(1, |c| c + 1);
    Ok((start..=320)
        .take(50)
        .map(|id| Product {
            id,
            title: format!("product {id}"),
        })
        .collect())
}

#[durable_fn(id = "shopify-product-import", event = "shopify/import.requested")]
async fn import_products(ctx: Ctx, event: Event<ImportRequested>) -> Result<usize> {
    let mut all = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let page: Vec<Product> = step!("fetch-products", {
            list_products(&event.data.store_id, cursor).await?
        })?;
        all.extend(page.iter().cloned());
        if page.len() < 50 {
            break;
        }
        cursor = page.last().map(|p| p.id);
    }
    ctx.log(format!("imported {} products", all.len()));
    Ok(all.len())
}

#[durable_fn(id = "simple-function", event = "demo/simple")]
async fn simple_function(ctx: Ctx, _event: Event) -> Result<()> {
    ctx.log("hello");
    step!("a", { println!("a") })?;
    step!("b", { println!("b") })?;
    step!("c", { println!("c") })?;
    Ok(())
}

/// Sleeps a day before it reminds anyone: a run to watch wait, or cancel.
#[durable_fn(id = "reminder", event = "demo/remind")]
async fn reminder(_ctx: Ctx, event: Event) -> Result<String> {
    sleep!("wait-a-day", std::time::Duration::from_secs(86_400))?;
    Ok(step!("remind", {
        format!("reminded {}", event.data["who"])
    })?)
}

static CHARGES: AtomicUsize = AtomicUsize::new(0);

/// The card processor declines the first charge it is sent (a hiccup that
/// `retries = 0` does not absorb): the run fails at `charge`, and replaying
/// it from `charge` completes it without reserving the stock again.
#[durable_fn(id = "checkout", event = "shop/checkout", retries = 0)]
async fn checkout(_ctx: Ctx, event: Event) -> Result<u64> {
    let amount: u64 = step!("reserve", {
        eprintln!("shop: reserved stock");
        event.data["amount"].as_u64().unwrap_or(0)
    })?;
    let charged: u64 = step!("charge", {
        if CHARGES.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(durafn::Error::msg(
                "card declined: the processor is warming up",
            ));
        }
        amount
    })?;
    Ok(charged)
}

#[durable_fn(id = "square", event = "demo/square")]
async fn square(_ctx: Ctx, event: Event) -> Result<i64> {
    let n = event.data["n"].as_i64().unwrap_or(0);
    Ok(step!("multiply", { n * n })?)
}

/// Invokes `square` and waits for its result: a child run, linked from
/// the step that started it.
#[durable_fn(id = "area", event = "demo/area")]
async fn area(_ctx: Ctx, event: Event) -> Result<i64> {
    let side = event.data["side"].as_i64().unwrap_or(0);
    let area: i64 = invoke!("square-it", square, serde_json::json!({ "n": side }))?;
    Ok(area)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let port = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .map_or(3000, |p| p.parse().expect("--port takes a number"));
    let app = Handler::new("seed-app")
        .register(import_products)
        .register(simple_function)
        .register(reminder)
        .register(checkout)
        .register(square)
        .register(area)
        .router_at("/api/durafn");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("serving http://127.0.0.1:{port}/api/durafn");
    axum::serve(listener, app).await
}
