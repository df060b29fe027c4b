//! What the checks that see past the body must keep allowing: pure helpers
//! (also with effect-like names, and as methods), effects in helpers called
//! inside steps or vouched for, `HashMap` lookups and loops without steps,
//! `BTreeMap` iteration, sorted keys, deterministic statics and consts,
//! `env!`, awaiting macros inside steps, and `&mut` of the step's own
//! bindings.
use durafn::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

static NAMES: [&str; 2] = ["a", "b"];
const LIMIT: usize = 10;
static RATES: LazyLock<HashMap<&'static str, u32>> = LazyLock::new(|| HashMap::from([("eu", 2)]));
static REGION: OnceLock<String> = OnceLock::new();
static CALLS: AtomicUsize = AtomicUsize::new(0);

// Names that look like effects but are this crate's pure fns.
mod fs {
    pub fn read(name: &str) -> usize {
        name.len()
    }
}

fn random(seed: u32) -> u32 {
    seed.wrapping_mul(2_654_435_761)
}

fn total(prices: &[u32]) -> u32 {
    prices.iter().map(|p| double(*p)).sum()
}

fn double(x: u32) -> u32 {
    x * 2
}

// A helper with an effect: fine inside a step or vouched for.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bump() -> usize {
    CALLS.fetch_add(1, Ordering::SeqCst)
}

struct Cart {
    items: Vec<u32>,
}

impl Cart {
    fn new(items: Vec<u32>) -> Cart {
        Cart { items }
    }

    fn sum(&self) -> u32 {
        total(&self.items)
    }
}

#[derive(Deserialize)]
struct Order {
    lines: HashMap<String, u32>,
    tags: BTreeMap<String, u32>,
}

async fn price(sku: &str) -> u32 {
    sku.len() as u32
}

#[durable_fn]
async fn allowed(_ctx: Ctx, event: Event<Order>) -> Result<u32> {
    // Pure helpers, methods, effect-like names that are the crate's own.
    let cart = Cart::new(vec![1, 2, 3]);
    let sum = cart.sum() + total(&[4, 5]) + random(7) + fs::read("x") as u32;
    // Deterministic statics and consts; `get` on a `OnceLock`.
    let first = NAMES[0].len() + LIMIT + RATES.get("eu").copied().unwrap_or(0) as usize;
    let region = REGION.get().cloned().unwrap_or_default();
    let package = env!("CARGO_PKG_NAME");
    // `HashMap` lookups and a loop without steps.
    let qty = event.data.lines.get("sku-1").copied().unwrap_or(0);
    let mut lines_total = 0;
    for (_, q) in &event.data.lines {
        lines_total += q;
    }
    let set: HashSet<u32> = HashSet::from([1, 2]);
    let has_one = set.contains(&1);
    // `BTreeMap` iteration and sorted keys, with steps.
    for (tag, n) in &event.data.tags {
        step!("tag", { (tag.clone(), *n) })?;
    }
    let mut skus: Vec<&String> = event.data.lines.keys().collect();
    skus.sort();
    for sku in skus {
        step!("line", { sku.clone() })?;
    }
    let sorted: BTreeMap<String, u32> = event.data.lines.clone().into_iter().collect();
    for (sku, q) in sorted {
        step!("sorted-line", { (sku, q) })?;
    }
    // Effects in helpers, inside steps.
    let stamp = step!("stamp", { now_secs() })?;
    let calls = step!("count", { bump() })?;
    // Awaiting macros inside a step.
    let both = step!("prices", {
        let (a, b) = tokio::join!(price("a"), price("b"));
        a + b
    })?;
    // `&mut` of the step's own bindings.
    let trimmed: Vec<u32> = step!("trim", {
        let mut v = vec![3, 1, 2];
        let first = std::mem::take(&mut v[0]);
        for x in &mut v {
            *x += first;
        }
        v
    })?;
    // Vouched for.
    let boot = unchecked!("the boot time is set once per deploy and read-only", now_secs());
    let _ = (stamp, calls, boot, region, package, has_one);
    Ok(sum + first as u32 + qty + lines_total + both + trimmed.len() as u32)
}

fn main() {}
