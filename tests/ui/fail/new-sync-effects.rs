//! Clock reads, entropy and name lookups without the usual names.
use durafn::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::net::ToSocketAddrs;
use std::time::{SystemTime, UNIX_EPOCH};

#[durable_fn]
async fn sync_effects(_ctx: Ctx, _event: Event) -> Result<u64> {
    let age = UNIX_EPOCH.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    let since = SystemTime::elapsed(&UNIX_EPOCH).is_ok();
    let rng = StdRng::from_os_rng();
    let addrs = "example.com:443".to_socket_addrs().map(|a| a.count()).unwrap_or(0);
    let resolved = tokio::net::lookup_host("example.com:443");
    let pid = std::process::id();
    step!("use", { (age, since, addrs, pid) })?;
    drop((rng, resolved));
    Ok(age)
}

fn main() {}
