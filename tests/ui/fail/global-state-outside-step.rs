//! Process-global state outside a step: a replayed run changes or reads it
//! again, and another process holds another value.
use durafn::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
static REGION: OnceLock<String> = OnceLock::new();

thread_local! {
    static SEEN: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

#[durable_fn]
async fn stateful(_ctx: Ctx, _event: Event) -> Result<usize> {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    LOG.lock().unwrap().push(format!("run {n}"));
    SEEN.with(|s| s.borrow_mut().push(1));
    let _ = REGION.set("eu".to_string());
    let id = next_id();
    step!("work", { n + id })?;
    Ok(n)
}

fn main() {}
