use durafn::prelude::*;

mod rand {
    pub fn random() -> u8 {
        4
    }
    pub fn thread_rng() -> u8 {
        4
    }
}
struct Uuid;
impl Uuid {
    fn new_v4() -> u8 {
        4
    }
}

#[durable_fn]
async fn lottery(_ctx: Ctx, _event: Event) -> Result<u8> {
    let a = rand::random();
    let b = rand::thread_rng();
    let c = Uuid::new_v4();
    Ok(a + b + c)
}

fn main() {}
