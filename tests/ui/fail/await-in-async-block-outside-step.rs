use durafn::prelude::*;

async fn notify() {}

#[durable_fn]
async fn notifier(_ctx: Ctx, _event: Event) -> Result<()> {
    let later = async {
        notify().await;
    };
    drop(later);
    Ok(())
}

fn main() {}
