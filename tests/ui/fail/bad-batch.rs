//! `batch_events` and the signature that goes with it.
use durafn::prelude::*;

// A batch runs once for many events: the function takes them all.
#[durable_fn(id = "a", event = "x/a", batch_events(max_size = 10, timeout = "5s"))]
async fn one_event(_ctx: Ctx, event: Event) -> Result<()> {
    let _ = event;
    Ok(())
}

// A list of events without a batch.
#[durable_fn(id = "b", event = "x/b")]
async fn list_without_batch(_ctx: Ctx, events: Vec<Event>) -> Result<()> {
    let _ = events;
    Ok(())
}

// Options decided per event do not combine with a batch.
#[durable_fn(
    id = "c",
    event = "x/c",
    batch_events(max_size = 10, timeout = "5s"),
    idempotency = "event.data.id",
    cancel_on = "x/stop"
)]
async fn per_event_options(_ctx: Ctx, _events: Vec<Event>) -> Result<()> {
    Ok(())
}

// Both bounds, literal and in range.
#[durable_fn(id = "d", event = "x/d", batch_events(max_size = 10))]
async fn without_timeout(_ctx: Ctx, _events: Vec<Event>) -> Result<()> {
    Ok(())
}

#[durable_fn(id = "e", event = "x/e", batch_events(max_size = 0, timeout = "2d", size = 3))]
async fn out_of_bounds(_ctx: Ctx, _events: Vec<Event>) -> Result<()> {
    Ok(())
}

fn main() {}
