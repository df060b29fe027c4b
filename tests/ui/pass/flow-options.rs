//! Every flow option the attribute takes, in each spelling it accepts.
use durafn::prelude::*;
use durafn::{ConcurrencyScope, DurableFn, SingletonMode};

#[durable_fn(
    id = "all",
    event = "x/all",
    idempotency = "event.data.order_id",
    rate_limit(limit = 10, period = "1h30m", key = "event.data.user"),
    singleton(key = "event.data.account", mode = "cancel"),
    concurrency(limit = 5, key = "event.data.customer_id"),
    concurrency(limit = 50, key = "'shared-api'", scope = "account"),
    throttle(limit = 10, period = "1m", burst = 2, key = "event.data.user"),
    priority = "event.data.vip ? 60 : 0",
    timeouts(start = "10m", finish = "1h30m"),
    on_failure = cleanup,
    debounce(period = "5s", key = "event.data.doc", timeout = "1m"),
    retries = 2,
)]
async fn all(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn(
    event = "x/plain",
    rate_limit(period = "1s", limit = 1),
    singleton(mode = "skip"),
    concurrency = 3
)]
async fn without_keys(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

// A batch, with the options that combine with it; the events are a plain
// `Vec`, looped over like any other.
#[durable_fn(
    id = "batched",
    event = "x/batched",
    batch_events(max_size = 100, timeout = "5s", key = "event.data.account", if = "event.data.bulk"),
    concurrency = 2,
    throttle(limit = 10, period = "1m"),
    timeouts(finish = "1h"),
)]
async fn batched(_ctx: Ctx, events: Vec<durafn::Event<serde_json::Value>>) -> Result<usize> {
    for e in &events {
        let id = e.id.clone();
        step!("write", { id })?;
    }
    Ok(events.len())
}

#[durable_fn(event = "x/few", batch_events(timeout = "1m", max_size = 1))]
async fn few(_ctx: Ctx, _events: Vec<Event>) -> Result<()> {
    Ok(())
}

#[durable_fn(id = "cleanup")]
async fn cleanup(_ctx: Ctx, event: Event<durafn::FunctionFailed>) -> Result<String> {
    Ok(event.data.function_id)
}

fn main() {
    assert_eq!(all.on_failure().map(|h| h.id()), Some("cleanup"));
    assert!(without_keys.on_failure().is_none());
    let c = all.config();
    assert_eq!(c.idempotency, Some("event.data.order_id"));
    let r = c.rate_limit.unwrap();
    assert_eq!((r.limit, r.period_ms, r.key), (10, 5_400_000, Some("event.data.user")));
    let s = c.singleton.unwrap();
    assert_eq!((s.key, s.mode), (Some("event.data.account"), SingletonMode::Cancel));
    assert_eq!(c.concurrency.len(), 2);
    assert_eq!(c.concurrency[0].key, Some("event.data.customer_id"));
    assert_eq!(c.concurrency[1].scope, ConcurrencyScope::Account);
    let t = c.throttle.unwrap();
    assert_eq!((t.limit, t.period_ms, t.burst), (10, 60_000, 2));
    assert_eq!(c.priority, Some("event.data.vip ? 60 : 0"));
    assert_eq!(c.timeouts.start_ms, Some(600_000));
    assert_eq!(c.timeouts.finish_ms, Some(5_400_000));
    let d = c.debounce.unwrap();
    assert_eq!((d.period_ms, d.key, d.timeout_ms), (5_000, Some("event.data.doc"), Some(60_000)));
    let c = without_keys.config();
    assert_eq!((c.throttle, c.priority), (None, None));
    assert_eq!(c.timeouts.finish_ms, None);
    assert_eq!((c.concurrency[0].limit, c.concurrency[0].key), (3, None));
    assert_eq!(c.rate_limit.unwrap().key, None);
    assert_eq!(c.singleton.unwrap().mode, SingletonMode::Skip);
    assert_eq!(c.idempotency, None);
    let b = batched.config().batch_events.unwrap();
    assert_eq!((b.max_size, b.timeout_ms), (100, 5_000));
    assert_eq!((b.key, b.when), (Some("event.data.account"), Some("event.data.bulk")));
    let b = few.config().batch_events.unwrap();
    assert_eq!((b.max_size, b.timeout_ms, b.key), (1, 60_000, None));
    assert_eq!(without_keys.config().batch_events, None);
}
