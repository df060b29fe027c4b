//! The runtime core through the public API: loop-indexed IDs, both drivers
//! giving the same journal, retries, failures, sleeps and the run-time
//! non-determinism and journal checks.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use durafn::driver::{continuous, reenter, Invocation};
use durafn::prelude::*;
use durafn::testing::{Driver, TestOutcome, TestRun};
use durafn::{DurableFn, Journal, Outcome, Retry, StepId, Transition};
use serde_json::json;

#[derive(Deserialize)]
struct Grid {
    rows: u32,
    cols: u32,
}

#[durable_fn(event = "test/grid")]
async fn grid_walk(_ctx: Ctx, event: Event<Grid>) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut r = 0;
    while r < event.data.rows {
        for c in 0..event.data.cols {
            if c == 1 {
                continue;
            }
            let v: u32 = step!("cell", { r * 10 + c })?;
            out.push(v);
        }
        r += 1;
    }
    let total: u32 = step!("sum", { out.iter().sum::<u32>() })?;
    match total % 2 {
        0 => step!("even", { true })?,
        _ => step!("odd", { false })?,
    };
    let mut n = 0;
    loop {
        n += 1;
        if n > 2 {
            break;
        }
        sleep!("nap", Duration::from_secs(60))?;
    }
    Ok(out)
}

async fn both(run: impl Fn(Driver) -> TestRun<grid_walk>) -> (TestOutcome, TestOutcome) {
    (
        run(Driver::ReEntry).run().await,
        run(Driver::Continuous).run().await,
    )
}

#[tokio::test]
async fn nested_loops_get_indexed_ids_outermost_first() {
    let out = TestRun::new(grid_walk)
        .event("test/grid", json!({"rows": 2, "cols": 3}))
        .run()
        .await;
    assert_eq!(out.output::<Vec<u32>>(), vec![0, 2, 10, 12]);
    assert_eq!(
        out.journal.ids(),
        [
            "cell[0][0]",
            "cell[0][2]",
            "cell[1][0]",
            "cell[1][2]",
            "sum",
            "even",
            "nap[0]",
            "nap[1]"
        ]
    );
}

#[tokio::test]
async fn reentry_and_continuous_give_identical_journals() {
    let (a, b) = both(|d| {
        TestRun::new(grid_walk)
            .event("test/grid", json!({"rows": 3, "cols": 4}))
            .driver(d)
    })
    .await;
    assert_eq!(a.journal, b.journal);
    assert_eq!(a.journal.order(), b.journal.order());
    assert_eq!(a.result, b.result);
    // Re-entry: one call per step (sleeps included) plus the final call.
    assert_eq!(a.calls, a.journal.len() + 1);
    // Continuous: re-entered only after each of the two sleeps.
    assert_eq!(b.calls, 3);

    let (a, b) = both(|d| {
        TestRun::new(grid_walk)
            .event("test/grid", json!({"rows": 2, "cols": 2}))
            .driver(d)
            .fail_step("cell[1][0]", 2)
    })
    .await;
    assert_eq!(a.journal, b.journal);
    assert_eq!(a.attempts("cell[1][0]"), 3);
    assert_eq!(b.attempts("cell[1][0]"), 3);
}

static EFFECTS: AtomicU32 = AtomicU32::new(0);

#[durable_fn(retries = 2)]
async fn counts_effects(_ctx: Ctx, _event: Event) -> Result<u32> {
    let mut sum = 0;
    for i in 0..5u32 {
        sum += step!("effect", {
            EFFECTS.fetch_add(1, Ordering::SeqCst);
            i
        })?;
    }
    Ok(sum)
}

#[tokio::test]
async fn reentry_runs_each_step_body_exactly_once() {
    EFFECTS.store(0, Ordering::SeqCst);
    let out = TestRun::new(counts_effects)
        .driver(Driver::ReEntry)
        .run()
        .await;
    assert_eq!(out.output::<u32>(), 10);
    assert_eq!(EFFECTS.load(Ordering::SeqCst), 5);
    assert_eq!(out.calls, 6);
    assert_eq!(counts_effects.id(), "counts-effects");
    assert_eq!(counts_effects.config().retries, 2);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Path {
    Recovered(String),
}

#[durable_fn(retries = 2)]
async fn flaky(_ctx: Ctx, _event: Event) -> Result<Path> {
    match step!("charge", { 42u32 }) {
        Ok(_) => {}
        Err(e) => {
            // The step failed for good: the function sees the error and
            // can compensate in another step.
            let msg = e.error.message.clone();
            return Ok(step!("compensate", { Path::Recovered(msg.clone()) })?);
        }
    }
    step!("after", { 1u8 })?;
    Ok(Path::Recovered(String::new()))
}

#[tokio::test]
async fn exhausted_retries_hand_err_to_the_function() {
    for driver in [Driver::ReEntry, Driver::Continuous] {
        let out = TestRun::new(flaky)
            .driver(driver)
            .fail_step("charge", 10)
            .run()
            .await;
        // retries = 2: three attempts, then the error is journaled.
        assert_eq!(out.attempts("charge"), 3, "{driver:?}");
        assert!(matches!(
            out.journal.get(&StepId::from("charge")),
            Some(Outcome::Error { .. })
        ));
        assert_eq!(out.journal.ids(), ["charge", "compensate"]);
        match out.output::<Path>() {
            Path::Recovered(msg) => assert!(msg.contains("injected failure"), "{msg}"),
        }
    }
}

#[durable_fn]
async fn propagates(_ctx: Ctx, _event: Event) -> Result<u8> {
    let v: u8 = step!("only", retries = 0, { 1u8 })?;
    Ok(v)
}

#[tokio::test]
async fn a_step_error_propagated_with_question_mark_fails_the_run_for_good() {
    let out = TestRun::new(propagates).fail_step("only", 1).run().await;
    assert_eq!(
        out.attempts("only"),
        1,
        "retries = 0 on the step overrides the function's 4"
    );
    let err = out.result.unwrap_err();
    assert!(err.message.contains("injected failure"), "{err:?}");
    let last = out.transitions.last().unwrap();
    assert!(
        matches!(
            last,
            Transition::Failed {
                retry: Retry::Never,
                ..
            }
        ),
        "{last:?}"
    );
}

#[derive(Debug)]
struct Boom;
impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}
impl std::error::Error for Boom {}

static NR_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

#[durable_fn]
async fn non_retriable(_ctx: Ctx, _event: Event) -> Result<()> {
    step!("validate", {
        NR_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
        if NR_ATTEMPTS.load(Ordering::SeqCst) > 0 {
            Err(NonRetriable::new("invalid input"))?;
        }
        Err(Boom)?;
        0u8
    })?;
    Ok(())
}

#[tokio::test]
async fn non_retriable_errors_are_not_retried() {
    let out = TestRun::new(non_retriable).run().await;
    assert_eq!(NR_ATTEMPTS.load(Ordering::SeqCst), 1);
    assert_eq!(out.result.unwrap_err().message, "invalid input");
}

#[durable_fn]
async fn rate_limited(_ctx: Ctx, _event: Event) -> Result<u8> {
    let v = step!("call-api", {
        let (_, attempt) = _ctx.step_info().expect("inside a step");
        if attempt == 0 {
            Err(RetryAfter::new(Duration::from_secs(30), "429"))?;
        }
        7u8
    })?;
    Ok(v)
}

#[tokio::test]
async fn retry_after_is_reported_with_its_delay() {
    let out = TestRun::new(rate_limited).run().await;
    assert_eq!(out.output::<u8>(), 7);
    assert!(out.transitions.iter().any(|t| matches!(
        t,
        Transition::StepErrored(f) if f[0].retry_after == Some(Duration::from_secs(30)) && f[0].attempt == 0
    )));
}

static SHAPE_B: AtomicBool = AtomicBool::new(false);

#[durable_fn]
async fn shape_shifter(_ctx: Ctx, _event: Event) -> Result<()> {
    step!("start", { 0u8 })?;
    // The test switches the shape between calls on purpose.
    if unchecked!("the test's deploy switch", SHAPE_B.load(Ordering::SeqCst)) {
        step!("new-step", { 1u8 })?;
    } else {
        step!("old-step", { 2u8 })?;
    }
    step!("end", { 3u8 })?;
    Ok(())
}

fn ev() -> serde_json::Value {
    json!({"name": "t", "data": {}, "id": "e", "ts": 0})
}

#[tokio::test]
async fn a_changed_shape_fails_with_expected_and_found_step() {
    // Call 1 and 2 with the old shape journal `start` and `old-step`.
    let mut journal = Journal::new();
    for _ in 0..2 {
        let res = reenter(
            &shape_shifter,
            Invocation::new("r", ev()).with_journal(journal.clone()),
        )
        .await;
        match res.transition {
            Transition::StepRan { id, output } => journal.insert(id, Outcome::data(output)),
            t => panic!("{t:?}"),
        }
    }
    assert_eq!(journal.ids(), ["start", "old-step"]);
    // The code changes between calls.
    SHAPE_B.store(true, Ordering::SeqCst);
    for res in [
        reenter(
            &shape_shifter,
            Invocation::new("r", ev()).with_journal(journal.clone()),
        )
        .await,
        continuous(
            &shape_shifter,
            Invocation::new("r", ev()).with_journal(journal.clone()),
            None,
        )
        .await
        .expect("no sink, no abandon"),
    ] {
        match res.transition {
            Transition::Failed { error, retry } => {
                assert_eq!(retry, Retry::Never);
                assert_eq!(error.name, "NonDeterminism");
                assert!(
                    error.message.contains("expects step `old-step`"),
                    "{}",
                    error.message
                );
                assert!(
                    error.message.contains("new step `new-step`"),
                    "{}",
                    error.message
                );
            }
            t => panic!("{t:?}"),
        }
        assert!(
            res.executed.is_empty(),
            "no new step may run after a non-determinism"
        );
    }
    SHAPE_B.store(false, Ordering::SeqCst);
}

#[tokio::test]
async fn a_journal_from_another_function_is_refused() {
    let journal: Journal = [(StepId::from("fetch-products[0]"), Outcome::data(json!([])))]
        .into_iter()
        .collect();
    let res = continuous(
        &counts_effects,
        Invocation::new("r", ev()).with_journal(journal),
        None,
    )
    .await
    .expect("no sink, no abandon");
    match res.transition {
        Transition::Failed { error, .. } => {
            assert_eq!(error.name, "JournalMismatch");
            assert!(error.message.contains("fetch-products[0]"));
            assert!(error.message.contains("effect[_]"), "{}", error.message);
        }
        t => panic!("{t:?}"),
    }
    // Right name, wrong type.
    let journal: Journal = [(
        StepId::from("effect[0]"),
        Outcome::data(json!("not a number")),
    )]
    .into_iter()
    .collect();
    let res = continuous(
        &counts_effects,
        Invocation::new("r", ev()).with_journal(journal),
        None,
    )
    .await
    .expect("no sink, no abandon");
    match res.transition {
        Transition::Failed { error, .. } => {
            assert_eq!(error.name, "JournalMismatch");
            assert!(error.message.contains("`effect[0]`"), "{}", error.message);
        }
        t => panic!("{t:?}"),
    }
}

#[tokio::test]
async fn an_event_of_the_wrong_type_fails_clearly() {
    let out = TestRun::new(grid_walk)
        .event("test/grid", json!({"rows": "two"}))
        .run()
        .await;
    let err = out.result.unwrap_err();
    assert_eq!(err.name, "EventMismatch");
    assert!(err.message.contains("grid-walk"), "{}", err.message);
}

#[durable_fn]
async fn panics(_ctx: Ctx, _event: Event) -> Result<()> {
    step!("before", { 1u8 })?;
    let v: Vec<u8> = Vec::new();
    let _ = v[3];
    Ok(())
}

#[tokio::test]
async fn a_panic_fails_the_call_and_keeps_the_journal() {
    let res = continuous(&panics, Invocation::new("r", ev()), None)
        .await
        .expect("no sink, no abandon");
    match res.transition {
        Transition::Failed { error, retry } => {
            assert_eq!(error.name, "Panic");
            assert!(
                error.message.contains("index out of bounds"),
                "{}",
                error.message
            );
            assert_eq!(retry, Retry::Backoff);
        }
        t => panic!("{t:?}"),
    }
    assert_eq!(res.journal.ids(), ["before"]);
}

#[durable_fn]
async fn deterministic_helpers(ctx: Ctx, _event: Event) -> Result<(u64, String, f64)> {
    let t = ctx.now().await;
    let id = ctx.uuid().await;
    let r = ctx.random().await;
    step!("use", { id.len() })?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    Ok((ms, id, r))
}

#[tokio::test]
async fn now_uuid_and_random_are_memoized() {
    let out = TestRun::new(deterministic_helpers)
        .driver(Driver::ReEntry)
        .run()
        .await;
    let (ms, id, r) = out.output::<(u64, String, f64)>();
    assert_eq!(ms, 1_700_000_000_000);
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert!((0.0..1.0).contains(&r));
    assert_eq!(
        out.journal.ids(),
        ["~now[0]", "~uuid[0]", "~random[0]", "use"]
    );
    // Replaying the finished journal gives the same values.
    let again = continuous(
        &deterministic_helpers,
        Invocation::new("r", ev()).with_journal(out.journal.clone()),
        None,
    )
    .await
    .expect("no sink, no abandon");
    match again.transition {
        Transition::Done(v) => assert_eq!(v, json!([ms, id, r])),
        t => panic!("{t:?}"),
    }
}

static LOGGED: AtomicU32 = AtomicU32::new(0);

#[durable_fn]
async fn logs_once(ctx: Ctx, _event: Event) -> Result<()> {
    if !ctx.is_replaying() {
        unchecked!("a counter the test reads, not the run", {
            LOGGED.fetch_add(1, Ordering::SeqCst)
        });
    }
    step!("a", { 1 })?;
    step!("b", { 2 })?;
    Ok(())
}

#[tokio::test]
async fn is_replaying_is_true_only_while_replaying() {
    let out = TestRun::new(logs_once).driver(Driver::ReEntry).run().await;
    assert_eq!(out.calls, 3);
    assert_eq!(LOGGED.load(Ordering::SeqCst), 1);
}

#[durable_fn]
async fn while_condition(_ctx: Ctx, _event: Event) -> Result<u32> {
    let mut n = 0;
    while step!("more", { n < 3 })? {
        n += 1;
    }
    Ok(n)
}

#[tokio::test]
async fn a_step_in_a_while_condition_is_indexed_per_iteration() {
    let out = TestRun::new(while_condition)
        .driver(Driver::ReEntry)
        .run()
        .await;
    assert_eq!(out.output::<u32>(), 3);
    assert_eq!(
        out.journal.ids(),
        ["more[0]", "more[1]", "more[2]", "more[3]"]
    );
}

#[tokio::test]
async fn the_step_table_describes_the_function() {
    let sites = grid_walk.steps();
    let summary: Vec<(&str, u32)> = sites.iter().map(|s| (s.id, s.loop_depth)).collect();
    assert_eq!(
        summary,
        [("cell", 2), ("sum", 0), ("even", 0), ("odd", 0), ("nap", 1)]
    );
    assert!(sites.windows(2).all(|w| w[0].line <= w[1].line));
    assert!(sites[0].line > 0);
    assert!(grid_walk.triggers()[0].matches("test/grid"));
}

/// A macro of another module that hides an `.await`: the compile-time check
/// cannot see it (it is not in the durable fn's tokens).
mod hidden {
    macro_rules! nap {
        () => {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await
        };
    }
    pub(crate) use nap;
}

#[durable_fn(event = "test/sneaky")]
async fn sneaky(_ctx: Ctx, _event: Event) -> Result<u32> {
    let a: u32 = step!("first", { 1 })?;
    hidden::nap!();
    let b: u32 = step!("second", { 2 })?;
    Ok(a + b)
}

#[durable_fn(event = "test/vouched")]
async fn vouched(ctx: Ctx, _event: Event) -> Result<u32> {
    let a: u32 = step!("first", { 1 })?;
    unchecked!("a pause that has no effect", hidden::nap!());
    let _ = ctx.now().await;
    let b: u32 = step!("second", { 2 })?;
    Ok(a + b)
}

#[tokio::test]
async fn an_await_hidden_from_the_check_fails_the_run_naming_the_last_step() {
    for driver in [Driver::ReEntry, Driver::Continuous] {
        let out = TestRun::new(sneaky)
            .event("test/sneaky", json!({}))
            .driver(driver)
            .run()
            .await;
        let err = out
            .result
            .clone()
            .expect_err("the hidden await fails the run");
        assert_eq!(err.name, "AwaitOutsideStep", "{driver:?}: {err}");
        assert!(err.message.contains("after step `first`"), "{err}");
        assert_eq!(
            out.attempts("second"),
            0,
            "{driver:?}: no step after it ran"
        );
        // Not retried: the code, not the world, is at fault.
        assert_eq!(out.attempts("first"), 1, "{driver:?}");
    }
}

#[tokio::test]
async fn an_await_vouched_for_with_unchecked_runs() {
    for driver in [Driver::ReEntry, Driver::Continuous] {
        let out = TestRun::new(vouched)
            .event("test/vouched", json!({}))
            .driver(driver)
            .run()
            .await;
        assert_eq!(out.output::<u32>(), 3, "{driver:?}");
    }
}

#[tokio::test]
async fn an_await_hidden_from_the_check_fails_an_engine_run() {
    let engine = durafn::Engine::builder()
        .register(sneaky)
        .build()
        .await
        .unwrap();
    let sent = engine
        .send(durafn::Event::new("test/sneaky", json!({})))
        .await
        .unwrap();
    let run = engine
        .wait_for_run(&sent.runs[0], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(run.run.status, durafn::store::RunStatus::Failed);
    let error = run.run.error.unwrap();
    assert_eq!(error["name"], "AwaitOutsideStep", "{error}");
}
