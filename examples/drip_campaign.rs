//! The seed's third best practice: sleep in a loop. A drip campaign sends
//! three emails a day apart. Each sleep is a durable timer, so the process
//! may stop and restart between emails; here a fast clock (a day per
//! second) makes the three days pass in about two seconds.
//!
//! ```text
//! cargo run --example drip_campaign
//! ```

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use durafn::prelude::*;
use durafn::{Engine, FastClock};

#[derive(Deserialize)]
struct SignedUp {
    email: String,
}

mod mailer {
    pub async fn send(to: &str, template: &str) -> std::io::Result<String> {
        Ok(format!("{template} -> {to}"))
    }
}

#[durable_fn(id = "drip-campaign", event = "user/signed.up")]
async fn drip_campaign(ctx: Ctx, event: Event<SignedUp>) -> Result<Vec<String>> {
    let mut sent = Vec::new();
    for (day, template) in ["welcome", "tips", "upgrade"].into_iter().enumerate() {
        if day > 0 {
            sleep!("wait-a-day", Duration::from_secs(86_400))?;
        }
        let receipt: String = step!("send-email", {
            mailer::send(&event.data.email, template).await?
        })?;
        let now = ctx.now().await;
        let days = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            / 86_400;
        ctx.log(format!("day {day} (clock day {days}): {receipt}"));
        sent.push(receipt);
    }
    Ok(sent)
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("durafn-drip-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let clock = Arc::new(FastClock::new(86_400.0));
    let engine = Engine::builder()
        .sqlite(dir.join("durafn.db"))
        .clock(clock)
        .register(drip_campaign)
        .build()
        .await?;
    let started = std::time::Instant::now();
    let sent = engine
        .send(Event::new(
            "user/signed.up",
            serde_json::json!({"email": "ada@example.com"}),
        ))
        .await?;
    let run = engine
        .wait_for_run(&sent.runs[0], Duration::from_secs(60))
        .await?;
    println!(
        "run {}: {} in {:.1} s of real time",
        run.run.id,
        run.run.status.as_str(),
        started.elapsed().as_secs_f64()
    );
    for s in &run.steps {
        let at = s.started_ms.unwrap_or(0);
        println!(
            "  {:<16} {:<10} at clock day {:.2}",
            s.id,
            s.status,
            (at - run.run.created_ms) as f64 / 86_400_000.0
        );
    }
    engine.close().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
