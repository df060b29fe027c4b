use durafn::prelude::*;

const PERIOD: &str = "1m";

// A period the macro cannot read, and one that is no duration.
#[durable_fn(id = "a", event = "x/a", rate_limit(limit = 5, period = PERIOD))]
async fn non_literal_period(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn(id = "b", event = "x/b", rate_limit(limit = 5, period = "1 minute"))]
async fn bad_period(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

// Over Inngest's bound, no runs at all, and an argument it does not take.
#[durable_fn(id = "c", event = "x/c", rate_limit(limit = 0, period = "2d", burst = 3))]
async fn out_of_bounds(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

// A rate limit needs its period; `rate_limit = ..` is not its spelling.
#[durable_fn(id = "d", event = "x/d", rate_limit(limit = 5))]
async fn no_period(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn(id = "e", event = "x/e", rate_limit = 5)]
async fn not_a_list(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

// A singleton's mode is skip or cancel, and it must be given.
#[durable_fn(id = "f", event = "x/f", singleton(key = "event.data.user", mode = "queue"))]
async fn unknown_mode(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn(id = "g", event = "x/g", singleton(key = "event.data.user"))]
async fn no_mode(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

// A shared scope needs a key; scopes are fn, env and account; at most two
// limits.
#[durable_fn(id = "h", event = "x/h", concurrency(limit = 2, scope = "account"))]
async fn shared_without_key(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn(id = "i", event = "x/i", concurrency(limit = 2, key = "event.data.a", scope = "team"))]
async fn unknown_scope(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn(id = "j", event = "x/j", concurrency = 1, concurrency = 2, concurrency(limit = 3))]
async fn three_limits(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

// `burst` belongs to a throttle, whose period may reach a week, not more.
#[durable_fn(id = "k", event = "x/k", rate_limit(limit = 5, period = "1m", burst = 2))]
async fn rate_limit_with_burst(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn(id = "l", event = "x/l", throttle(limit = 5, period = "8d", burst = 0))]
async fn throttle_out_of_bounds(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

// A timeout is a literal duration, of a start or a finish.
#[durable_fn(id = "m", event = "x/m", timeouts(start = "soon", run = "1h"))]
async fn bad_timeouts(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

// `on_failure` names a durable fn, not a string or a plain fn.
#[durable_fn(id = "n", event = "x/n", on_failure = "cleanup")]
async fn handler_as_string(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

fn not_durable() {}

#[durable_fn(id = "o", event = "x/o", on_failure = not_durable)]
async fn handler_not_durable(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

// A debounce needs its period, a literal duration within a week.
#[durable_fn(id = "p", event = "x/p", debounce(key = "event.data.doc"))]
async fn debounce_without_period(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn(id = "q", event = "x/q", debounce(period = "30d", wait = "1m"))]
async fn debounce_out_of_bounds(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

fn main() {}
