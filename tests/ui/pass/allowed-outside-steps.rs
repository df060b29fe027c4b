//! What stays allowed outside steps: pure computation, `format!`,
//! iterators, closures, mutation of locals, shadowed names, reading event
//! data, steps in `if`/`match`/`while`/`loop`/`for`, `continue`/`break`,
//! early `return`, and the durafn primitives.
use durafn::prelude::*;
use std::time::Duration;

#[derive(Deserialize)]
struct Order {
    items: Vec<u32>,
    express: bool,
}

#[durable_fn(id = "allowed", event = "shop/order.*", event = "shop/legacy", retries = 2)]
async fn allowed(ctx: Ctx, event: Event<Order>) -> Result<String> {
    // Reading event data, pure computation, iterators and closures.
    let total: u32 = event.data.items.iter().map(|x| x * 2).sum();
    let label = format!("order of {total}");
    let double = |x: u32| x * 2;
    // Locals that share a name with an effect are not effects.
    let now = 5;
    let spawn = |x: u32| x + 1;
    let random = now + spawn(1);
    let mut local = vec![double(random)];
    local.push(3);
    local.sort();
    // Deterministic helpers are durafn primitives: awaiting them is fine.
    let started = ctx.now().await;
    let _key = ctx.uuid().await;
    if event.data.express {
        step!("express", { true })?;
    } else {
        step!("standard", { false })?;
    }
    match total {
        0 => return Ok("empty".into()),
        _ => {
            step!("charge", { total })?;
        }
    }
    let mut i = 0;
    while i < 3 {
        i += 1;
        if i == 2 {
            continue;
        }
        step!("while-step", { i })?;
    }
    loop {
        let done: bool = step!("poll", { true })?;
        if done {
            break;
        }
    }
    for item in &event.data.items {
        // A binding declared inside the step may be mutated there.
        let doubled: Vec<u32> = step!("item", {
            let mut v = Vec::new();
            v.push(*item);
            v.push(*item);
            v
        })?;
        local.extend(doubled);
    }
    sleep!("cool-off", Duration::from_secs(1))?;
    sleep_until!("deadline", started + Duration::from_secs(60))?;
    // The escape hatch, with its reason.
    let cwd_len = unchecked!("the build directory never changes between replays", {
        std::env::var("CARGO_MANIFEST_DIR").map(|s| s.len()).unwrap_or(0)
    });
    ctx.log(format!("{label}: {}", local.len() + cwd_len));
    Ok(label)
}

fn main() {
    use durafn::DurableFn;
    assert_eq!(allowed.id(), "allowed");
    assert_eq!(allowed.config().retries, 2);
    assert_eq!(allowed.triggers().len(), 2);
}
