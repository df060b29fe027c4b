use durafn::prelude::*;
use rand::Rng;

// A stand-in for the uuid crate: its `new_v4` draws random bytes, as the
// real one does. The check follows it.
struct Uuid;
impl Uuid {
    fn new_v4() -> u8 {
        rand::random()
    }
}

#[durable_fn]
async fn lottery(_ctx: Ctx, _event: Event) -> Result<u8> {
    let a: u8 = rand::random();
    let b: u8 = rand::rng().random();
    let c = Uuid::new_v4();
    Ok(a.wrapping_add(b).wrapping_add(c))
}

fn main() {}
