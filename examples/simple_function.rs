//! The seed's simple function: print "hello", then run steps a, b and c.
//! Driven by re-entry, one step per call, as an executor does over HTTP:
//! every call runs the function from the top against the journal.
//!
//! `hello` is printed with `ctx.log`, which prints once, when the run first
//! gets there. A plain `println!("hello")` outside a step would print on
//! every call (four times); durafn refuses it at compile time.

use durafn::driver::{reenter, Invocation};
use durafn::prelude::*;
use durafn::{Journal, Outcome, Transition};

#[durable_fn(id = "simple-function", event = "demo/simple")]
async fn simple_function(ctx: Ctx, _event: Event) -> Result<()> {
    ctx.log("hello");
    step!("a", { println!("a") })?;
    step!("b", { println!("b") })?;
    step!("c", { println!("c") })?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let event = serde_json::json!({"name": "demo/simple", "data": {}, "id": "e1", "ts": 0});
    let mut journal = Journal::new();
    for call in 1.. {
        let before = journal.ids();
        eprintln!("--- call {call}: journal {before:?}");
        let res = reenter(
            &simple_function,
            Invocation::new("run-1", event.clone()).with_journal(journal.clone()),
        )
        .await;
        eprintln!(
            "    replayed {} step(s), ran {:?}",
            res.replayed,
            res.executed
                .iter()
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
        );
        match res.transition {
            Transition::StepRan { id, output } => {
                eprintln!("    -> step {id} ran; journal it and call again");
                journal.insert(id, Outcome::data(output));
            }
            Transition::Done(v) => {
                eprintln!("    -> done: {v}");
                break;
            }
            other => panic!("unexpected transition {other:?}"),
        }
    }
}
