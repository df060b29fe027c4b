//! A helper fn of the crate that reaches an effect, directly or through
//! other helpers in other modules and files, is the effect: the error sits
//! on the call and names the chain.
use durafn::prelude::*;

#[path = "helper-chain/report.rs"]
mod report;
#[path = "helper-chain/util.rs"]
mod util;

use report::{stamp_line, RateClient};

#[derive(Deserialize)]
struct Order {
    skus: Vec<String>,
}

#[durable_fn]
async fn import(_ctx: Ctx, event: Event<Order>) -> Result<usize> {
    // Through two helpers in two files: report::stamp_line -> util::now_secs.
    let header = stamp_line("import");
    // A helper called by its full path, and one passed as a value.
    let region = crate::util::region();
    let tags: Vec<u32> = event.data.skus.iter().map(util::jitter).collect();
    // A method of a crate type, through `Self::`.
    let client = RateClient::new("eu");
    let rate = client.rate();
    step!("save", { (header.len(), region.len(), tags.len(), rate) })?;
    Ok(event.data.skus.len())
}

fn main() {}
