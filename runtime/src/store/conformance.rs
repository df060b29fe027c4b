//! The store conformance suite: what every [`Store`] must do, written
//! against the trait alone. Each case takes a fresh store and panics on a
//! broken promise. Run them all for a store with [`store_conformance!`]:
//!
//! ```ignore
//! durafn::store_conformance!(|| async {
//!     std::sync::Arc::new(durafn::store::MemoryStore::new()) as std::sync::Arc<dyn durafn::store::Store>
//! });
//! ```
//!
//! The cases use explicit times: `T` on the timers' clock and on the wall
//! clock alike.
//!
//! [`store_conformance!`]: crate::store_conformance

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::step_id::StepId;
use crate::transition::INVOKE_CANCELLED;

/// The start of every case's clock (ms).
pub const T: i64 = 1_700_000_000_000;

/// Generates one `#[tokio::test]` per conformance case, each with a fresh
/// store from `$make`: a closure returning a future of `Arc<dyn Store>`,
/// or of `(Arc<dyn Store>, guard)` where the guard lives until the case
/// ends (and cleans up in its `Drop`, panic or not), or of an `Option` of
/// either (`None` skips the case).
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@cases $make;
            ingest_stores_events_and_their_runs_once,
            a_failing_batch_stores_nothing,
            claim_leases_each_due_run_once,
            an_ended_lease_is_claimed_again_and_the_old_one_is_fenced,
            a_heartbeat_keeps_a_lease,
            steps_are_journaled_in_order_and_reloaded_on_claim,
            a_sleep_wakes_at_its_time_with_null,
            retries_count_attempts_per_step,
            a_matching_event_resolves_a_wait_in_the_same_ingest,
            a_wait_that_looks_back_takes_the_first_match_in_its_window,
            retention_deletes_what_ended_long_ago_and_keeps_what_may_be_needed,
            a_wait_times_out_with_null_and_later_events_do_not_count,
            an_invoked_runs_end_resolves_its_parent,
            an_invoke_times_out_with_its_timeout_error,
            cancel_ends_a_run_and_fences_its_lease,
            cancel_rules_fire_in_the_ingest,
            a_failed_run_announces_its_failure_in_the_same_write,
            listing_filters_and_orders_newest_first,
            app_registrations_are_kept,
            released_leases_are_claimed_at_once,
            a_delay_requeues_without_spending_an_attempt,
            a_claim_takes_runs_of_other_functions_only_once_overdue,
            an_idempotency_key_starts_one_run_per_day,
            a_rate_limit_skips_events_over_it_per_key,
            a_singleton_skips_or_cancels_per_key,
            concurrency_limits_how_many_runs_of_a_key_run_at_once,
            a_throttle_queues_runs_and_priority_reorders_them,
            timeouts_cancel_runs_that_start_or_finish_too_late,
            a_debounce_runs_once_per_burst_with_its_last_event,
            a_batch_gathers_events_until_full_or_timed_out,
            a_restart_makes_a_run_from_another_with_its_journal_and_records_it,
            events_are_listed_newest_first_page_by_page,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test]
            async fn $case() {
                let make = $make;
                let Some((store, _guard)) = $crate::store::conformance::Made::split(make().await) else {
                    return; // the factory skipped the store (and said why)
                };
                $crate::store::conformance::$case(store).await;
            }
        )*
    };
}

/// What a conformance factory makes: a store, with or without a guard, or
/// `None` to skip (a server that is not there).
pub trait Made {
    type Guard;
    fn split(self) -> Option<(Arc<dyn Store>, Self::Guard)>;
}

impl Made for Arc<dyn Store> {
    type Guard = ();
    fn split(self) -> Option<(Arc<dyn Store>, ())> {
        Some((self, ()))
    }
}

impl<G> Made for (Arc<dyn Store>, G) {
    type Guard = G;
    fn split(self) -> Option<(Arc<dyn Store>, G)> {
        Some(self)
    }
}

impl<M: Made> Made for Option<M> {
    type Guard = M::Guard;
    fn split(self) -> Option<(Arc<dyn Store>, M::Guard)> {
        self.and_then(Made::split)
    }
}

fn event(id: &str, name: &str, data: Value, runs: &[(&str, &str)]) -> NewEvent {
    NewEvent {
        id: id.into(),
        name: name.into(),
        ts: T,
        payload: json!({"name": name, "id": id, "ts": T, "data": data}),
        runs: runs
            .iter()
            .map(|(id, f)| NewRun {
                id: id.to_string(),
                fn_id: f.to_string(),
                parent: None,
                flow: Default::default(),
                version: Some("v1".into()),
            })
            .collect(),
        cancels: Vec::new(),
    }
}

async fn ingest(store: &Arc<dyn Store>, events: Vec<NewEvent>) -> IngestReceipt {
    store
        .ingest(IngestBatch { now_ms: T, events })
        .await
        .expect("ingest")
}

/// The functions the cases' claimants have.
fn functions() -> Vec<String> {
    ["f", "g", "handler"].map(String::from).to_vec()
}

async fn claim_as(store: &Arc<dyn Store>, owner: &str, now: i64, lease_ms: i64) -> Vec<ClaimedRun> {
    store
        .claim(ClaimRequest {
            owner: owner.into(),
            now_ms: now,
            lease_now_ms: now,
            lease_ms,
            limit: 100,
            functions: functions(),
            unknown_before_ms: i64::MIN,
        })
        .await
        .expect("claim")
}

async fn claim(store: &Arc<dyn Store>, now: i64) -> Vec<ClaimedRun> {
    claim_as(store, "a", now, 60_000).await
}

/// Start one run and claim it.
async fn running(store: &Arc<dyn Store>, run: &str, data: Value) -> ClaimedRun {
    ingest(
        store,
        vec![event(&format!("e-{run}"), "t/start", data, &[(run, "f")])],
    )
    .await;
    let mut c = claim(store, T).await;
    assert_eq!(c.len(), 1, "one due run");
    c.remove(0)
}

fn commit(step: &str, outcome: Outcome) -> StepCommit {
    StepCommit {
        step: step.into(),
        name: None,
        outcome,
        attempts: 1,
        started_ms: T,
        ended_ms: T,
        reset_fn_attempt: false,
    }
}

fn pending(step: &str) -> PendingStep {
    PendingStep {
        step: step.into(),
        name: None,
    }
}

async fn status(store: &Arc<dyn Store>, run: &str) -> RunStatus {
    store
        .run_record(run)
        .await
        .expect("read")
        .expect("the run exists")
        .status
}

fn lost<T: std::fmt::Debug>(r: StoreResult<T>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::LeaseLost { .. })),
        "{what} with a lost lease must be refused with LeaseLost, got {r:?}"
    );
}

pub async fn ingest_stores_events_and_their_runs_once(store: Arc<dyn Store>) {
    let r = ingest(
        &store,
        vec![event(
            "e1",
            "t/a",
            json!({"x": 1}),
            &[("r1", "f"), ("r2", "g")],
        )],
    )
    .await;
    assert_eq!(r.events.len(), 1);
    assert!(r.events[0].new);
    assert_eq!(r.events[0].runs, ["r1", "r2"]);
    let again = ingest(&store, vec![event("e1", "t/a", json!({}), &[("r3", "f")])]).await;
    assert!(
        !again.events[0].new,
        "an event ID seen before is a duplicate"
    );
    assert!(again.events[0].runs.is_empty());
    let runs = store.list_runs(RunFilter::default()).await.unwrap();
    assert_eq!(runs.len(), 2, "the duplicate started nothing");
    let d = store.run("r1").await.unwrap().expect("r1");
    assert_eq!(d.run.status, RunStatus::Queued);
    assert_eq!(d.run.event_id, "e1");
    assert_eq!(d.event["data"]["x"], 1);
    assert_eq!(
        d.run.version.as_deref(),
        Some("v1"),
        "the version it started on"
    );
    let claimed = claim(&store, T).await;
    assert!(claimed
        .iter()
        .all(|c| c.run.version.as_deref() == Some("v1")));
    assert!(store.run("nope").await.unwrap().is_none());
}

pub async fn a_failing_batch_stores_nothing(store: Arc<dyn Store>) {
    ingest(&store, vec![event("e1", "t/a", json!({}), &[("r1", "f")])]).await;
    let bad = store
        .ingest(IngestBatch {
            now_ms: T,
            events: vec![
                event("e2", "t/a", json!({}), &[("r2", "f")]),
                event("e3", "t/a", json!({}), &[("r1", "f")]),
            ],
        })
        .await;
    assert!(
        matches!(bad, Err(StoreError::Conflict(_))),
        "a run ID that exists fails the batch: {bad:?}"
    );
    let runs = store.list_runs(RunFilter::default()).await.unwrap();
    assert_eq!(runs.len(), 1, "nothing of the failed batch is stored");
    let r = ingest(&store, vec![event("e2", "t/a", json!({}), &[("r2", "f")])]).await;
    assert!(r.events[0].new, "the failed batch's events were not stored");
}

pub async fn claim_leases_each_due_run_once(store: Arc<dyn Store>) {
    ingest(
        &store,
        vec![event(
            "e1",
            "t/a",
            json!({}),
            &[("r1", "f"), ("r2", "f"), ("r3", "f")],
        )],
    )
    .await;
    let first = store
        .claim(ClaimRequest {
            owner: "a".into(),
            now_ms: T,
            lease_now_ms: T,
            lease_ms: 60_000,
            limit: 2,
            functions: functions(),
            unknown_before_ms: i64::MIN,
        })
        .await
        .unwrap();
    assert_eq!(first.len(), 2, "no more than the limit");
    let second = claim_as(&store, "b", T, 60_000).await;
    assert_eq!(second.len(), 1);
    assert!(
        claim(&store, T).await.is_empty(),
        "a leased run is not claimed again"
    );
    let mut ids: Vec<&str> = first
        .iter()
        .chain(&second)
        .map(|c| c.run.id.as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["r1", "r2", "r3"]);
    for c in first.iter().chain(&second) {
        assert_eq!(c.run.status, RunStatus::Running);
        assert_eq!(c.lease.run_id, c.run.id);
        assert_eq!(c.lease.until_ms, T + 60_000);
        assert_eq!(c.event["id"], "e1");
        assert!(c.journal.is_empty());
        assert_eq!(status(&store, &c.run.id).await, RunStatus::Running);
    }
    assert!(claim(&store, T - 1).await.is_empty());
}

pub async fn an_ended_lease_is_claimed_again_and_the_old_one_is_fenced(store: Arc<dyn Store>) {
    ingest(&store, vec![event("e1", "t/a", json!({}), &[("r1", "f")])]).await;
    let old = claim_as(&store, "a", T, 100).await.remove(0);
    assert!(
        claim_as(&store, "b", T + 50, 100).await.is_empty(),
        "the lease holds"
    );
    let new = claim_as(&store, "b", T + 101, 100).await;
    assert_eq!(new.len(), 1, "an ended lease is free to claim");
    let new = &new[0];
    assert!(new.lease.generation > old.lease.generation);
    lost(
        store
            .commit_step(&old.lease, commit("s", Outcome::null()))
            .await,
        "a commit",
    );
    lost(store.heartbeat(&old.lease, T + 10_000).await, "a heartbeat");
    lost(
        store
            .suspend(&old.lease, Suspension::Delay { wake_at: T }, T)
            .await,
        "a suspend",
    );
    lost(
        store
            .finish(&old.lease, Finish::Completed { output: json!(1) }, T)
            .await,
        "a finish",
    );
    // The same owner is fenced by the generation too.
    let same_owner = Lease {
        owner: new.lease.owner.clone(),
        ..old.lease.clone()
    };
    lost(
        store
            .commit_step(&same_owner, commit("s", Outcome::null()))
            .await,
        "a commit of an older generation",
    );
    store
        .commit_step(&new.lease, commit("s", Outcome::data(json!(2))))
        .await
        .expect("the new lease commits");
    let d = store.run("r1").await.unwrap().unwrap();
    assert_eq!(d.steps.len(), 1, "only the new lease's step is journaled");
}

pub async fn a_heartbeat_keeps_a_lease(store: Arc<dyn Store>) {
    ingest(&store, vec![event("e1", "t/a", json!({}), &[("r1", "f")])]).await;
    let c = claim_as(&store, "a", T, 100).await.remove(0);
    store
        .heartbeat(&c.lease, T + 10_000)
        .await
        .expect("heartbeat");
    assert!(
        claim_as(&store, "b", T + 5_000, 100).await.is_empty(),
        "a heartbeat extends the lease"
    );
    assert_eq!(claim_as(&store, "b", T + 10_001, 100).await.len(), 1);
}

pub async fn steps_are_journaled_in_order_and_reloaded_on_claim(store: Arc<dyn Store>) {
    let c = running(&store, "r1", json!({})).await;
    let err = crate::error::ErrorInfo::new("E", "boom");
    for (id, o) in [
        ("b", Outcome::data(json!({"v": 1}))),
        ("a", Outcome::null()),
        ("c[0]", Outcome::error(err.clone())),
    ] {
        store.commit_step(&c.lease, commit(id, o)).await.unwrap();
    }
    store
        .suspend(&c.lease, Suspension::Delay { wake_at: T }, T)
        .await
        .unwrap();
    let again = claim(&store, T).await.remove(0);
    assert_eq!(again.journal.ids(), ["b", "a", "c[0]"], "completion order");
    let read = store.journal(&again.run.id).await.unwrap().expect("stored");
    assert_eq!(read.ids(), again.journal.ids(), "read without a lease");
    assert_eq!(
        read.get(&StepId::from("b")),
        again.journal.get(&StepId::from("b"))
    );
    assert!(store.journal("nope").await.unwrap().is_none());
    assert_eq!(
        again.journal.get(&StepId::from("b")),
        Some(&Outcome::data(json!({"v": 1})))
    );
    assert_eq!(
        again.journal.get(&StepId::from("a")),
        Some(&Outcome::null())
    );
    assert_eq!(
        again.journal.get(&StepId::from("c[0]")),
        Some(&Outcome::error(err))
    );
    let d = store.run("r1").await.unwrap().unwrap();
    let statuses: Vec<&str> = d.steps.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(statuses, ["completed", "completed", "failed"]);
    assert_eq!(d.steps[0].output, Some(json!({"v": 1})));
}

pub async fn a_sleep_wakes_at_its_time_with_null(store: Arc<dyn Store>) {
    let c = running(&store, "r1", json!({})).await;
    store
        .suspend(
            &c.lease,
            Suspension::Sleep {
                step: pending("nap"),
                until_ms: T + 1_000,
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(status(&store, "r1").await, RunStatus::Sleeping);
    assert_eq!(
        store.next_wake(functions(), 60_000).await.unwrap(),
        Some(T + 1_000)
    );
    let d = store.run("r1").await.unwrap().unwrap();
    assert_eq!(d.steps.len(), 1);
    assert_eq!(d.steps[0].status, "sleeping");
    assert!(
        claim(&store, T + 999).await.is_empty(),
        "not before its time"
    );
    let woke = claim(&store, T + 1_000).await.remove(0);
    assert_eq!(woke.journal.ids(), ["nap"]);
    assert_eq!(
        woke.journal.get(&StepId::from("nap")),
        Some(&Outcome::null())
    );
    assert_eq!(store.next_wake(functions(), 60_000).await.unwrap(), None);
}

pub async fn retries_count_attempts_per_step(store: Arc<dyn Store>) {
    let c = running(&store, "r1", json!({})).await;
    let failure = |step: &str, attempts: u32| AttemptFailure {
        step: step.into(),
        name: None,
        attempts,
        error: crate::error::ErrorInfo::new("E", format!("{step} failed")),
        started_ms: T,
    };
    store
        .suspend(
            &c.lease,
            Suspension::Retry {
                failures: vec![failure("p[0]", 1), failure("p[2]", 1)],
                fn_attempt: 0,
                wake_at: T + 10,
            },
            T,
        )
        .await
        .unwrap();
    assert!(
        claim(&store, T + 9).await.is_empty(),
        "not before the backoff"
    );
    let c = claim(&store, T + 10).await.remove(0);
    assert_eq!(c.attempts.get("p[0]"), Some(&1));
    assert_eq!(c.attempts.get("p[2]"), Some(&1));
    store
        .commit_step(
            &c.lease,
            StepCommit {
                attempts: 2,
                ..commit("p[0]", Outcome::data(json!(0)))
            },
        )
        .await
        .unwrap();
    store
        .suspend(
            &c.lease,
            Suspension::Retry {
                failures: vec![failure("p[2]", 2)],
                fn_attempt: 1,
                wake_at: T + 20,
            },
            T + 10,
        )
        .await
        .unwrap();
    let c = claim(&store, T + 20).await.remove(0);
    assert_eq!(c.run.fn_attempt, 1);
    assert_eq!(
        c.attempts.len(),
        1,
        "a journaled step is no longer retried: {:?}",
        c.attempts
    );
    assert_eq!(c.attempts.get("p[2]"), Some(&2));
    let d = store.run("r1").await.unwrap().unwrap();
    let p2 = d
        .steps
        .iter()
        .find(|s| s.id == "p[2]")
        .expect("p[2] in the trace");
    assert_eq!(p2.status, "retrying");
    assert_eq!(p2.attempts, 2);
    assert_eq!(p2.error.as_ref().unwrap()["message"], "p[2] failed");
    let p0 = d
        .steps
        .iter()
        .find(|s| s.id == "p[0]")
        .expect("p[0] in the trace");
    assert_eq!((p0.status.as_str(), p0.attempts), ("completed", 2));
}

async fn wait_for_paid(store: &Arc<dyn Store>, order: u64, until_ms: i64) -> ClaimedRun {
    let c = running(store, "r1", json!({"order": order})).await;
    store
        .suspend(
            &c.lease,
            Suspension::Wait {
                step: pending("paid"),
                event: "shop/paid".into(),
                expr: Some("event.data.order == async.data.order".into()),
                until_ms,
                since_ms: None,
                seen: Vec::new(),
            },
            T,
        )
        .await
        .unwrap();
    c
}

pub async fn a_matching_event_resolves_a_wait_in_the_same_ingest(store: Arc<dyn Store>) {
    wait_for_paid(&store, 7, T + 10_000).await;
    let other = ingest(
        &store,
        vec![event("p8", "shop/paid", json!({"order": 8}), &[])],
    )
    .await;
    assert!(other.resolved.is_empty(), "the expression does not match");
    let name = ingest(
        &store,
        vec![event("x7", "shop/other", json!({"order": 7}), &[])],
    )
    .await;
    assert!(name.resolved.is_empty(), "another event name");
    assert!(claim(&store, T).await.is_empty());
    let r = ingest(
        &store,
        vec![event("p7", "shop/paid", json!({"order": 7}), &[])],
    )
    .await;
    assert_eq!(r.resolved, [("r1".to_string(), "paid".to_string())]);
    let c = claim(&store, T).await.remove(0);
    match c.journal.get(&StepId::from("paid")) {
        Some(Outcome::Data { data }) => assert_eq!(data["id"], "p7"),
        other => panic!("the wait's outcome is the event: {other:?}"),
    }
}

pub async fn a_wait_that_looks_back_takes_the_first_match_in_its_window(store: Arc<dyn Store>) {
    for (id, order, at) in [
        ("old7", 7, T - 20_000),
        ("p8", 8, T - 5_000),
        ("p7a", 7, T - 3_000),
        ("p7b", 7, T - 1_000),
    ] {
        store
            .ingest(IngestBatch {
                now_ms: at,
                events: vec![event(id, "shop/paid", json!({"order": order}), &[])],
            })
            .await
            .expect("ingest");
    }
    let wait_seen = |since_ms, seen: &[&str]| Suspension::Wait {
        step: pending("paid"),
        event: "shop/paid".into(),
        expr: Some("event.data.order == async.data.order".into()),
        until_ms: T + 10_000,
        since_ms,
        seen: seen.iter().map(|s| s.to_string()).collect(),
    };
    let wait = |since_ms| wait_seen(since_ms, &[]);
    // Without a lookback, events before the wait do not count.
    let c = running(&store, "r0", json!({"order": 7})).await;
    store.suspend(&c.lease, wait(None), T).await.unwrap();
    assert!(claim(&store, T).await.is_empty(), "r0 waits");
    // With one, the earliest match in the window resolves it at once.
    let c = running(&store, "r1", json!({"order": 7})).await;
    store
        .suspend(&c.lease, wait(Some(T - 10_000)), T)
        .await
        .unwrap();
    let c = claim(&store, T).await;
    assert_eq!(c.len(), 1, "r1 is due at once");
    match c[0].journal.get(&StepId::from("paid")) {
        Some(Outcome::Data { data }) => assert_eq!(data["id"], "p7a"),
        other => panic!("the wait's outcome is the first match: {other:?}"),
    }
    assert_eq!(status(&store, "r0").await, RunStatus::Sleeping);
    // An event the run took before is not taken again.
    let c = running(&store, "r3", json!({"order": 7})).await;
    store
        .suspend(&c.lease, wait_seen(Some(T - 10_000), &["p7a"]), T)
        .await
        .unwrap();
    let c = claim(&store, T)
        .await
        .into_iter()
        .find(|c| c.run.id == "r3")
        .expect("r3 is due at once");
    match c.journal.get(&StepId::from("paid")) {
        Some(Outcome::Data { data }) => assert_eq!(data["id"], "p7b"),
        other => panic!("the next match: {other:?}"),
    }
    // The run's own trigger is not an event it waits for.
    ingest(
        &store,
        vec![event(
            "self9",
            "shop/paid",
            json!({"order": 9}),
            &[("r2", "f")],
        )],
    )
    .await;
    let c = claim(&store, T).await.remove(0);
    store
        .suspend(&c.lease, wait(Some(T - 10_000)), T)
        .await
        .unwrap();
    assert!(claim(&store, T).await.is_empty(), "r2 waits");
    let r = ingest(
        &store,
        vec![event("p9", "shop/paid", json!({"order": 9}), &[])],
    )
    .await;
    assert_eq!(r.resolved, [("r2".to_string(), "paid".to_string())]);
}

pub async fn a_wait_times_out_with_null_and_later_events_do_not_count(store: Arc<dyn Store>) {
    wait_for_paid(&store, 7, T + 100).await;
    let c = claim(&store, T + 100).await.remove(0);
    assert_eq!(c.journal.get(&StepId::from("paid")), Some(&Outcome::null()));
    let r = ingest(
        &store,
        vec![event("p7", "shop/paid", json!({"order": 7}), &[])],
    )
    .await;
    assert!(r.resolved.is_empty(), "a timed-out wait takes no event");
}

pub async fn retention_deletes_what_ended_long_ago_and_keeps_what_may_be_needed(
    store: Arc<dyn Store>,
) {
    const DAY: i64 = 86_400_000;
    // A parent waiting on its invoke; its child ends, and is kept while
    // the parent is active.
    invoke(&store, T + 100_000).await;
    let child = claim(&store, T).await.remove(0);
    store
        .finish(&child.lease, Finish::Completed { output: json!(42) }, T + 5)
        .await
        .unwrap();
    // A run that ended long ago, and a recent one.
    for (run, ended) in [("old", T + 1), ("new", T + 20_000)] {
        let c = running(&store, run, json!({})).await;
        store
            .finish(&c.lease, Finish::Completed { output: json!(1) }, ended)
            .await
            .unwrap();
    }
    // An event that started nothing, and a queued run holding an
    // idempotency key for a day.
    ingest(&store, vec![event("lonely", "t/x", json!({}), &[])]).await;
    let key = flow::RunFlow {
        idempotency: Some("k".into()),
        ..Default::default()
    };
    flowing(&store, "e-idem", "queued", key, T).await;

    let p = store.purge(T + 10_000, 100).await.unwrap();
    assert_eq!(
        (p.runs, p.events, p.keys),
        (1, 2, 0),
        "the old run, its event and the lonely one: {p:?}"
    );
    assert!(store.run_record("old").await.unwrap().is_none());
    assert!(store.run("old").await.unwrap().is_none());
    assert!(store.journal("old").await.unwrap().is_none());
    for kept in ["parent", "child", "new", "queued"] {
        assert!(
            store.run_record(kept).await.unwrap().is_some(),
            "{kept} is kept"
        );
    }
    let p = store.purge(T + 10_000, 100).await.unwrap();
    assert_eq!(
        (p.runs, p.events, p.keys),
        (0, 0, 0),
        "nothing more ended before then"
    );
    let again = store
        .ingest(IngestBatch {
            now_ms: T + 20_000,
            events: vec![event("lonely", "t/x", json!({}), &[])],
        })
        .await
        .unwrap();
    assert!(again.events[0].new, "the lonely event was deleted");

    // The parent ends: in batches of one, everything that ended goes,
    // with the expired key; the queued run stays.
    let parent = claim(&store, T + 5)
        .await
        .into_iter()
        .find(|c| c.run.id == "parent")
        .expect("the parent is due");
    store
        .finish(&parent.lease, Finish::Completed { output: json!(2) }, T + 6)
        .await
        .unwrap();
    let mut total = Purged::default();
    loop {
        let p = store.purge(T + 2 * DAY, 1).await.unwrap();
        assert!(p.runs <= 1 && p.events <= 1 && p.keys <= 1, "{p:?}");
        total.runs += p.runs;
        total.events += p.events;
        total.keys += p.keys;
        if !p.full(1) {
            break;
        }
    }
    assert_eq!((total.runs, total.keys), (3, 1), "{total:?}");
    assert!(store.run_record("child").await.unwrap().is_none());
    assert!(store.run_record("queued").await.unwrap().is_some());
    let runs = store.list_runs(RunFilter::default()).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
}

async fn invoke(store: &Arc<dyn Store>, until_ms: i64) -> ClaimedRun {
    let parent = running(store, "parent", json!({})).await;
    let mut child = event(
        "inv-1",
        "inngest/function.invoked",
        json!({"n": 1}),
        &[("child", "g")],
    );
    child.runs[0].parent = Some(Parent {
        run_id: "parent".into(),
        step: "call".into(),
    });
    store
        .suspend(
            &parent.lease,
            Suspension::Invoke {
                step: pending("call"),
                until_ms,
                timeout_error: crate::error::ErrorInfo::new("Timeout", "too slow"),
                child,
            },
            T,
        )
        .await
        .unwrap();
    parent
}

pub async fn an_invoked_runs_end_resolves_its_parent(store: Arc<dyn Store>) {
    invoke(&store, T + 100_000).await;
    assert_eq!(
        status(&store, "child").await,
        RunStatus::Queued,
        "the child starts with the suspension"
    );
    let child = claim(&store, T).await.remove(0);
    assert_eq!(child.run.id, "child");
    assert_eq!(child.event["data"]["n"], 1);
    let finished = store
        .finish(&child.lease, Finish::Completed { output: json!(42) }, T + 5)
        .await
        .unwrap();
    assert_eq!(
        finished.woke,
        ["parent"],
        "the finish says the parent resumed"
    );
    let parent = claim(&store, T + 5).await.remove(0);
    assert_eq!(parent.run.id, "parent", "the parent is due at once");
    assert_eq!(
        parent.journal.get(&StepId::from("call")),
        Some(&Outcome::data(json!(42)))
    );

    // A failed child hands over its error; a cancelled one says so.
    let store2 = store;
    ingest(
        &store2,
        vec![event("e-p2", "t/start", json!({}), &[("p2", "f")])],
    )
    .await;
    let p2 = claim(&store2, T).await.remove(0);
    let mut child = event(
        "inv-2",
        "inngest/function.invoked",
        json!({}),
        &[("child2", "g")],
    );
    child.runs[0].parent = Some(Parent {
        run_id: "p2".into(),
        step: "call".into(),
    });
    store2
        .suspend(
            &p2.lease,
            Suspension::Invoke {
                step: pending("call"),
                until_ms: T + 100_000,
                timeout_error: crate::error::ErrorInfo::new("Timeout", "too slow"),
                child,
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(
        store2.cancel("child2", T + 1).await.unwrap(),
        Some(RunStatus::Queued)
    );
    let p2 = claim(&store2, T + 1).await.remove(0);
    match p2.journal.get(&StepId::from("call")) {
        Some(Outcome::Error { error }) => {
            assert_eq!(error.name, INVOKE_CANCELLED);
            assert!(error.message.contains("cancelled"), "{}", error.message);
        }
        other => panic!("a cancelled child resolves the invoke with an error: {other:?}"),
    }
}

pub async fn an_invoke_times_out_with_its_timeout_error(store: Arc<dyn Store>) {
    invoke(&store, T + 100).await;
    let mut due = claim(&store, T + 100).await;
    due.sort_by(|a, b| a.run.id.cmp(&b.run.id));
    let parent = due
        .iter()
        .find(|c| c.run.id == "parent")
        .expect("the parent wakes");
    match parent.journal.get(&StepId::from("call")) {
        Some(Outcome::Error { error }) => assert_eq!(error.name, "Timeout"),
        other => panic!("{other:?}"),
    }
    // The child ending later changes nothing for the parent.
    let child = due
        .iter()
        .find(|c| c.run.id == "child")
        .expect("the child runs");
    store
        .finish(
            &child.lease,
            Finish::Completed { output: json!(1) },
            T + 200,
        )
        .await
        .unwrap();
    let d = store.run("parent").await.unwrap().unwrap();
    assert_eq!(d.steps.len(), 1);
    assert_eq!(d.steps[0].status, "failed");
}

pub async fn cancel_ends_a_run_and_fences_its_lease(store: Arc<dyn Store>) {
    let c = running(&store, "r1", json!({})).await;
    assert_eq!(
        store.cancel("r1", T + 1).await.unwrap(),
        Some(RunStatus::Running)
    );
    lost(
        store
            .commit_step(&c.lease, commit("s", Outcome::null()))
            .await,
        "a commit after a cancel",
    );
    lost(
        store.heartbeat(&c.lease, T + 60_000).await,
        "a heartbeat after a cancel",
    );
    let r = store.run_record("r1").await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    assert_eq!(r.ended_ms, Some(T + 1));
    assert_eq!(
        store.cancel("r1", T + 2).await.unwrap(),
        Some(RunStatus::Cancelled),
        "cancelling again changes nothing"
    );
    assert_eq!(store.cancel("nope", T).await.unwrap(), None);

    // A sleeping run cancels at once and never wakes.
    ingest(&store, vec![event("e2", "t/a", json!({}), &[("r2", "f")])]).await;
    let c = claim(&store, T).await.remove(0);
    store
        .suspend(
            &c.lease,
            Suspension::Sleep {
                step: pending("nap"),
                until_ms: T + 10,
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(
        store.cancel("r2", T + 1).await.unwrap(),
        Some(RunStatus::Sleeping)
    );
    assert!(claim(&store, T + 1_000_000).await.is_empty());
    assert_eq!(store.next_wake(functions(), 60_000).await.unwrap(), None);
}

pub async fn cancel_rules_fire_in_the_ingest(store: Arc<dyn Store>) {
    ingest(
        &store,
        vec![
            event("e1", "t/a", json!({"k": 1}), &[("r1", "f")]),
            event("e2", "t/a", json!({"k": 2}), &[("r2", "f")]),
            event("e3", "t/a", json!({"k": 1}), &[("r3", "g")]),
        ],
    )
    .await;
    let mut stop = event("s1", "t/stop", json!({"k": 1}), &[("r4", "f")]);
    stop.cancels = vec![CancelRule {
        fn_id: "f".into(),
        expr: Some("event.data.k == async.data.k".into()),
    }];
    let r = ingest(&store, vec![stop]).await;
    assert_eq!(r.cancelled, ["r1"]);
    assert_eq!(status(&store, "r1").await, RunStatus::Cancelled);
    assert_eq!(
        status(&store, "r2").await,
        RunStatus::Queued,
        "the expression does not match"
    );
    assert_eq!(
        status(&store, "r3").await,
        RunStatus::Queued,
        "another function"
    );
    assert_eq!(
        status(&store, "r4").await,
        RunStatus::Queued,
        "the event's own new run is not cancelled by it"
    );
    assert!(
        store.run("r1").await.unwrap().unwrap().ops.is_empty(),
        "a rule's cancel is not a person's operation"
    );
}

pub async fn a_failed_run_announces_its_failure_in_the_same_write(store: Arc<dyn Store>) {
    let c = running(&store, "r1", json!({})).await;
    let error = crate::error::ErrorInfo::new("E", "boom");
    let failed = event(
        "failed-r1",
        "inngest/function.failed",
        json!({"run_id": "r1"}),
        &[("h1", "handler")],
    );
    let finished = store
        .finish(
            &c.lease,
            Finish::Failed {
                error: error.clone(),
                event: Some(failed),
            },
            T + 1,
        )
        .await
        .unwrap();
    assert_eq!(finished.woke, ["h1"], "the finish says the handler started");
    let r = store.run_record("r1").await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.error.as_ref().unwrap()["message"], "boom");
    assert_eq!(
        status(&store, "h1").await,
        RunStatus::Queued,
        "the handler starts with the failure"
    );

    // A finish refused for a lost lease announces nothing.
    ingest(&store, vec![event("e2", "t/a", json!({}), &[("r2", "f")])]).await;
    let old = claim_as(&store, "a", T, 10).await.remove(0);
    claim_as(&store, "b", T + 11, 10).await;
    let failed = event(
        "failed-r2",
        "inngest/function.failed",
        json!({}),
        &[("h2", "handler")],
    );
    lost(
        store
            .finish(
                &old.lease,
                Finish::Failed {
                    error,
                    event: Some(failed),
                },
                T + 12,
            )
            .await,
        "a finish",
    );
    assert!(store.run_record("h2").await.unwrap().is_none());
}

pub async fn listing_filters_and_orders_newest_first(store: Arc<dyn Store>) {
    for (i, f) in ["f", "g", "f"].iter().enumerate() {
        store
            .ingest(IngestBatch {
                now_ms: T + i as i64,
                events: vec![event(
                    &format!("e{i}"),
                    "t/a",
                    json!({}),
                    &[(&format!("r{i}"), f)],
                )],
            })
            .await
            .unwrap();
    }
    let all = store.list_runs(RunFilter::default()).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r2", "r1", "r0"], "newest first");
    let page = store
        .list_runs(RunFilter {
            limit: Some(2),
            after: Some((all[0].created_ms, all[0].id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = page.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r1", "r0"], "the page after a cursor");
    let f = store
        .list_runs(RunFilter {
            function: Some("f".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(f.len(), 2);
    let c = claim(&store, T + 10).await;
    assert_eq!(c.len(), 3);
    let running = store
        .list_runs(RunFilter {
            status: Some(RunStatus::Running),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 2, "the limit holds");
    let queued = store
        .list_runs(RunFilter {
            status: Some(RunStatus::Queued),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(queued.is_empty());
}

pub async fn app_registrations_are_kept(store: Arc<dyn Store>) {
    let app = |id: &str, url: &str| AppRecord {
        id: id.into(),
        url: url.into(),
        body: json!({"appName": id, "url": url, "functions": []}),
        updated_ms: T,
    };
    store.put_app(app("a", "http://one")).await.unwrap();
    store.put_app(app("b", "http://two")).await.unwrap();
    store.put_app(app("a", "http://three")).await.unwrap();
    let mut apps = store.apps().await.unwrap();
    apps.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(apps, [app("a", "http://three"), app("b", "http://two")]);
}

pub async fn released_leases_are_claimed_at_once(store: Arc<dyn Store>) {
    ingest(&store, vec![event("e1", "t/a", json!({}), &[("r1", "f")])]).await;
    let old = claim(&store, T).await.remove(0);
    store.release_leases().await.unwrap();
    let again = claim_as(&store, "b", T, 60_000).await;
    assert_eq!(again.len(), 1);
    assert!(again[0].lease.generation > old.lease.generation);
    lost(
        store
            .commit_step(&old.lease, commit("s", Outcome::null()))
            .await,
        "the released lease",
    );
}

pub async fn a_delay_requeues_without_spending_an_attempt(store: Arc<dyn Store>) {
    let c = running(&store, "r1", json!({})).await;
    store
        .suspend(&c.lease, Suspension::Delay { wake_at: T + 50 }, T)
        .await
        .unwrap();
    let r = store.run_record("r1").await.unwrap().unwrap();
    assert_eq!(
        (r.status, r.fn_attempt, r.wake_at),
        (RunStatus::Queued, 0, Some(T + 50))
    );
    assert!(claim(&store, T + 49).await.is_empty());
    let c = claim(&store, T + 50).await.remove(0);
    assert!(c.attempts.is_empty());
}

pub async fn a_claim_takes_runs_of_other_functions_only_once_overdue(store: Arc<dyn Store>) {
    ingest(
        &store,
        vec![event(
            "e1",
            "t/a",
            json!({}),
            &[("mine", "f"), ("theirs", "other")],
        )],
    )
    .await;
    let claim = |functions: Vec<String>, unknown_before_ms: i64| {
        let store = store.clone();
        async move {
            let mut ids: Vec<String> = store
                .claim(ClaimRequest {
                    owner: "a".into(),
                    now_ms: T + 10,
                    lease_now_ms: T + 10,
                    lease_ms: 60_000,
                    limit: 100,
                    functions,
                    unknown_before_ms,
                })
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.run.id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        claim(vec!["f".into()], T - 1).await,
        ["mine"],
        "only known functions"
    );
    assert!(claim(vec!["f".into()], T - 1).await.is_empty());
    assert_eq!(
        store.next_wake(vec!["f".into()], 5_000).await.unwrap(),
        Some(T + 5_000),
        "the run of an unknown function is due for this claimant once overdue"
    );
    assert_eq!(
        claim(vec!["f".into()], T).await,
        ["theirs"],
        "a run of an unknown function once it is overdue"
    );
}

/// An event starting one run of `f` with flow control, at `now`.
async fn flowing(
    store: &Arc<dyn Store>,
    id: &str,
    run: &str,
    flow: flow::RunFlow,
    now: i64,
) -> IngestReceipt {
    flowing_with(store, id, run, flow, now, json!({})).await
}

async fn flowing_with(
    store: &Arc<dyn Store>,
    id: &str,
    run: &str,
    flow: flow::RunFlow,
    now: i64,
    data: Value,
) -> IngestReceipt {
    let mut e = event(id, "t/flow", data, &[(run, "f")]);
    e.runs[0].flow = flow;
    store
        .ingest(IngestBatch {
            now_ms: now,
            events: vec![e],
        })
        .await
        .expect("ingest")
}

/// The run's status and, when skipped, the name of its reason.
async fn skipped_why(store: &Arc<dyn Store>, run: &str) -> (RunStatus, Option<String>) {
    let r = store
        .run_record(run)
        .await
        .unwrap()
        .expect("the run is stored");
    let why = r
        .error
        .as_ref()
        .and_then(|e| e.get("name"))
        .and_then(Value::as_str)
        .map(String::from);
    (r.status, why)
}

pub async fn an_idempotency_key_starts_one_run_per_day(store: Arc<dyn Store>) {
    let key = |k: &str| flow::RunFlow {
        idempotency: Some(k.into()),
        ..Default::default()
    };
    let r = flowing(&store, "e1", "r1", key("order-1"), T).await;
    assert_eq!(r.events[0].runs, ["r1"]);
    // The same key, in one batch with another key: skipped, the other runs.
    let mut a = event("e2", "t/flow", json!({}), &[("r2", "f")]);
    a.runs[0].flow = key("order-1");
    let mut b = event("e3", "t/flow", json!({}), &[("r3", "f")]);
    b.runs[0].flow = key("order-2");
    let mut c = event("e4", "t/flow", json!({}), &[("r4", "f")]);
    c.runs[0].flow = key("order-2");
    let r = store
        .ingest(IngestBatch {
            now_ms: T + 1000,
            events: vec![a, b, c],
        })
        .await
        .unwrap();
    assert!(r.events[0].runs.is_empty());
    assert_eq!(r.events[0].skipped, ["r2"]);
    assert_eq!(r.events[1].runs, ["r3"]);
    assert_eq!(
        r.events[2].skipped,
        ["r4"],
        "the batch's own earlier run holds the key"
    );
    assert_eq!(
        skipped_why(&store, "r2").await,
        (RunStatus::Skipped, Some("Idempotent".into()))
    );
    // Another function's key is its own.
    let mut other = event("e5", "t/flow", json!({}), &[("r5", "g")]);
    other.runs[0].flow = key("order-1");
    let r = ingest(&store, vec![other]).await;
    assert_eq!(r.events[0].runs, ["r5"]);
    // Skipped runs are never claimed.
    let claimed: Vec<String> = claim(&store, T + 2000)
        .await
        .into_iter()
        .map(|c| c.run.id)
        .collect();
    assert_eq!(claimed.len(), 3, "{claimed:?}");
    // A day later the key is free again.
    let r = flowing(&store, "e6", "r6", key("order-1"), T + flow::IDEMPOTENCY_MS).await;
    assert_eq!(r.events[0].runs, ["r6"]);
}

pub async fn a_rate_limit_skips_events_over_it_per_key(store: Arc<dyn Store>) {
    let limited = |k: &str| flow::RunFlow {
        rate_limit: Some(flow::RateLimit {
            key: k.into(),
            limit: 2,
            period_ms: 60_000,
        }),
        ..Default::default()
    };
    let mut started = Vec::new();
    for i in 0..4 {
        let r = flowing(
            &store,
            &format!("a{i}"),
            &format!("ra{i}"),
            limited("a"),
            T + i,
        )
        .await;
        started.extend(r.events[0].runs.clone());
    }
    assert_eq!(started, ["ra0", "ra1"], "two per minute");
    assert_eq!(
        skipped_why(&store, "ra2").await,
        (RunStatus::Skipped, Some("RateLimited".into()))
    );
    // Another key has its own limit.
    let r = flowing(&store, "b0", "rb0", limited("b"), T + 10).await;
    assert_eq!(r.events[0].runs, ["rb0"]);
    // Half a period on, one more fits (the limit refills smoothly).
    let r = flowing(&store, "a4", "ra4", limited("a"), T + 30_000).await;
    assert_eq!(r.events[0].runs, ["ra4"]);
    let r = flowing(&store, "a5", "ra5", limited("a"), T + 30_001).await;
    assert_eq!(r.events[0].skipped, ["ra5"]);
}

pub async fn a_singleton_skips_or_cancels_per_key(store: Arc<dyn Store>) {
    let single = |k: &str, mode| flow::RunFlow {
        singleton: Some(flow::Singleton {
            key: k.into(),
            mode,
        }),
        ..Default::default()
    };
    let skip = flow::SingletonMode::Skip;
    flowing(&store, "s1", "s1", single("u1", skip), T).await;
    // While s1 is queued, then running, the same key is skipped.
    let r = flowing(&store, "s2", "s2", single("u1", skip), T).await;
    assert_eq!(r.events[0].skipped, ["s2"]);
    let c = claim(&store, T).await;
    assert_eq!(c.len(), 1);
    let r = flowing(&store, "s3", "s3", single("u1", skip), T + 1).await;
    assert_eq!(r.events[0].skipped, ["s3"]);
    assert_eq!(
        skipped_why(&store, "s3").await,
        (RunStatus::Skipped, Some("Singleton".into()))
    );
    // Another key runs alongside.
    let r = flowing(&store, "s4", "s4", single("u2", skip), T + 1).await;
    assert_eq!(r.events[0].runs, ["s4"]);
    // Once s1 ended, the key is free.
    store
        .finish(&c[0].lease, Finish::Completed { output: json!(1) }, T + 2)
        .await
        .unwrap();
    let r = flowing(&store, "s5", "s5", single("u1", skip), T + 3).await;
    assert_eq!(r.events[0].runs, ["s5"]);
    // Mode cancel: the active run is cancelled (its lease fenced) and the
    // new one starts, in the same ingest.
    let cancel = flow::SingletonMode::Cancel;
    let c = claim(&store, T + 3).await;
    let s5 = c.iter().find(|c| c.run.id == "s5").expect("s5 claimed");
    let r = flowing(&store, "s6", "s6", single("u1", cancel), T + 4).await;
    assert_eq!(r.events[0].runs, ["s6"]);
    assert_eq!(r.cancelled, ["s5"]);
    assert_eq!(
        store.run_record("s5").await.unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    let lost = store
        .commit_step(
            &s5.lease,
            StepCommit {
                step: "a".into(),
                name: None,
                outcome: Outcome::data(json!(1)),
                attempts: 1,
                started_ms: T + 4,
                ended_ms: T + 4,
                reset_fn_attempt: false,
            },
        )
        .await;
    assert!(
        matches!(lost, Err(StoreError::LeaseLost { .. })),
        "{lost:?}"
    );
    assert_eq!(
        store.run_record("s4").await.unwrap().unwrap().status,
        RunStatus::Running,
        "another key's run is untouched"
    );
}

pub async fn concurrency_limits_how_many_runs_of_a_key_run_at_once(store: Arc<dyn Store>) {
    let limited = |limits: &[(&str, u32)]| flow::RunFlow {
        concurrency: limits
            .iter()
            .map(|(k, l)| flow::Concurrency {
                key: k.to_string(),
                limit: *l,
            })
            .collect(),
        ..Default::default()
    };
    let mut events = Vec::new();
    for i in 0..5 {
        let mut e = event(
            &format!("k{i}"),
            "t/c",
            json!({}),
            &[(&format!("k{i}"), "f")],
        );
        e.runs[0].flow = limited(&[("fn:f:k", 2)]);
        events.push(e);
    }
    let mut other = event("o", "t/c", json!({}), &[("o", "f")]);
    other.runs[0].flow = limited(&[("fn:f:other", 2)]);
    events.push(other);
    events.push(event("free", "t/c", json!({}), &[("free", "f")]));
    // Two limits: the shared `env:a` (limit 1) binds before `fn:g:b`.
    for (id, f) in [("g1", "g"), ("g2", "g")] {
        let mut e = event(id, "t/c", json!({}), &[(id, f)]);
        e.runs[0].flow = limited(&[("env:a", 1), ("fn:g:b", 5)]);
        events.push(e);
    }
    ingest(&store, events).await;
    let ids = |c: &[ClaimedRun]| {
        let mut v: Vec<String> = c.iter().map(|c| c.run.id.clone()).collect();
        v.sort();
        v
    };
    let first = claim(&store, T).await;
    assert_eq!(ids(&first), ["free", "g1", "k0", "k1", "o"]);
    assert!(claim(&store, T).await.is_empty(), "every key is full");
    // A sleeping run does not count: its slot goes to the next run.
    let k0 = first.iter().find(|c| c.run.id == "k0").unwrap();
    store
        .suspend(
            &k0.lease,
            Suspension::Sleep {
                step: PendingStep {
                    step: "nap".into(),
                    name: None,
                },
                until_ms: T + 3_600_000,
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(ids(&claim(&store, T).await), ["k2"]);
    // An ended run frees its slot, in another function's key too.
    let g1 = first.iter().find(|c| c.run.id == "g1").unwrap();
    store
        .finish(&g1.lease, Finish::Completed { output: json!(1) }, T)
        .await
        .unwrap();
    assert_eq!(ids(&claim(&store, T).await), ["g2"]);
    // Runs whose lease ran out count no more (the lease lasts 60 s in these
    // cases): the queued runs of the key take its slots first, the others
    // are claimed again.
    let later = claim(&store, T + 61_000).await;
    assert_eq!(ids(&later), ["free", "g2", "k3", "k4", "o"]);
}

pub async fn a_throttle_queues_runs_and_priority_reorders_them(store: Arc<dyn Store>) {
    let throttled = |k: &str| flow::RunFlow {
        throttle: Some(flow::Throttle {
            key: k.into(),
            limit: 2,
            period_ms: 60_000,
            burst: 1,
        }),
        ..Default::default()
    };
    // Three at once: one now, then one every 30 s; none is dropped.
    let mut started = Vec::new();
    for i in 0..3 {
        let r = flowing(
            &store,
            &format!("t{i}"),
            &format!("t{i}"),
            throttled("a"),
            T,
        )
        .await;
        started.extend(r.events[0].runs.clone());
    }
    assert_eq!(started, ["t0", "t1", "t2"]);
    let wake = |id: &'static str| {
        let store = store.clone();
        async move { store.run_record(id).await.unwrap().unwrap().wake_at }
    };
    assert_eq!(wake("t1").await, Some(T + 30_000));
    assert_eq!(wake("t2").await, Some(T + 60_000));
    // Another key is not held back.
    flowing(&store, "u0", "u0", throttled("b"), T).await;
    let ids = |c: Vec<ClaimedRun>| c.into_iter().map(|c| c.run.id).collect::<Vec<_>>();
    // Leases that outlast the case: only the queue's order matters here.
    let hold = 100_000_000;
    let mut now = ids(claim_as(&store, "a", T, hold).await);
    now.sort();
    assert_eq!(now, ["t0", "u0"]);
    assert!(claim_as(&store, "a", T + 29_999, hold).await.is_empty());
    assert_eq!(ids(claim_as(&store, "a", T + 30_000, hold).await), ["t1"]);

    // Priority: a run 120 s ahead is claimed before runs queued up to
    // 120 s before it; a negative one waits.
    let at = T + 1_000_000;
    let with_priority = |ms: i64| flow::RunFlow {
        priority_ms: ms,
        ..Default::default()
    };
    flowing(&store, "p-plain", "p-plain", with_priority(0), at).await;
    flowing(&store, "p-late", "p-late", with_priority(-60_000), at).await;
    flowing(
        &store,
        "p-first",
        "p-first",
        with_priority(120_000),
        at + 1_000,
    )
    .await;
    let order: Vec<String> = claim_limit(&store, at + 1_000, 1)
        .await
        .into_iter()
        .chain(claim_limit(&store, at + 1_000, 1).await)
        .map(|c| c.run.id)
        .collect();
    assert_eq!(order, ["t2", "p-first"], "t2 was due before both");
    assert_eq!(
        ids(claim_as(&store, "a", at + 1_000, hold).await),
        ["p-plain"]
    );
    assert!(
        claim_as(&store, "a", at + 59_999, hold).await.is_empty(),
        "p-late waits a minute"
    );
    assert_eq!(
        ids(claim_as(&store, "a", at + 60_000, hold).await),
        ["p-late"]
    );
}

async fn claim_limit(store: &Arc<dyn Store>, now: i64, limit: usize) -> Vec<ClaimedRun> {
    store
        .claim(ClaimRequest {
            owner: "a".into(),
            now_ms: now,
            lease_now_ms: now,
            lease_ms: 100_000_000,
            limit,
            functions: functions(),
            unknown_before_ms: i64::MIN,
        })
        .await
        .expect("claim")
}

pub async fn timeouts_cancel_runs_that_start_or_finish_too_late(store: Arc<dyn Store>) {
    let timed = |start: Option<i64>, finish: Option<i64>| flow::RunFlow {
        timeouts: flow::Timeouts {
            start_ms: start,
            finish_ms: finish,
        },
        ..Default::default()
    };
    let hold = 100_000_000;
    let why = |id: &'static str| {
        let store = store.clone();
        async move {
            let r = store.run_record(id).await.unwrap().unwrap();
            (
                r.status,
                r.error.and_then(|e| e["name"].as_str().map(String::from)),
            )
        }
    };
    flowing(&store, "slow", "slow", timed(Some(10_000), Some(60_000)), T).await;
    flowing(&store, "late", "late", timed(Some(10_000), None), T + 1).await;
    // `slow` starts in time (its start timeout no longer applies); `late`
    // waits in the queue past its start timeout and is cancelled.
    let slow = claim_limit(&store, T + 5_000, 1).await.remove(0);
    assert_eq!(slow.run.id, "slow");
    assert!(claim_as(&store, "a", T + 10_001, hold).await.is_empty());
    assert_eq!(
        why("late").await,
        (RunStatus::Cancelled, Some(flow::START_TIMEOUT.into()))
    );
    // The finish timeout counts from the first claim (T + 5 s), sleeping
    // or not.
    store
        .suspend(
            &slow.lease,
            Suspension::Sleep {
                step: PendingStep {
                    step: "nap".into(),
                    name: None,
                },
                until_ms: T + 3_600_000,
            },
            T + 6_000,
        )
        .await
        .unwrap();
    assert!(claim_as(&store, "a", T + 64_999, hold).await.is_empty());
    assert_eq!(why("slow").await.0, RunStatus::Sleeping);
    assert!(claim_as(&store, "a", T + 65_000, hold).await.is_empty());
    assert_eq!(
        why("slow").await,
        (RunStatus::Cancelled, Some(flow::FINISH_TIMEOUT.into()))
    );
    // A running run past its finish timeout is cancelled, and its lease
    // fenced.
    flowing(
        &store,
        "busy",
        "busy",
        timed(None, Some(1_000)),
        T + 100_000,
    )
    .await;
    let busy = claim_as(&store, "a", T + 100_000, hold).await.remove(0);
    assert_eq!(busy.run.id, "busy");
    claim_as(&store, "a", T + 101_000, hold).await;
    assert_eq!(
        why("busy").await,
        (RunStatus::Cancelled, Some(flow::FINISH_TIMEOUT.into()))
    );
    let lost = store.heartbeat(&busy.lease, T + 200_000).await;
    assert!(
        matches!(lost, Err(StoreError::LeaseLost { .. })),
        "{lost:?}"
    );
}

pub async fn a_debounce_runs_once_per_burst_with_its_last_event(store: Arc<dyn Store>) {
    let debounced = |k: &str| flow::RunFlow {
        debounce: Some(flow::Debounce {
            key: k.into(),
            period_ms: 5_000,
            timeout_ms: Some(12_000),
        }),
        ..Default::default()
    };
    let hold = 100_000_000;
    let wake = |id: &'static str| {
        let store = store.clone();
        async move { store.run_record(id).await.unwrap().unwrap().wake_at }
    };
    let r = flowing_with(&store, "e1", "d1", debounced("u"), T, json!({"n": 1})).await;
    assert_eq!(r.events[0].runs, ["d1"]);
    assert_eq!(
        wake("d1").await,
        Some(T + 5_000),
        "queued a period after its event"
    );
    // Later events of the burst join it and push it back.
    let r = flowing_with(
        &store,
        "e2",
        "d2",
        debounced("u"),
        T + 3_000,
        json!({"n": 2}),
    )
    .await;
    assert!(r.events[0].runs.is_empty());
    assert_eq!(r.events[0].debounced, ["d1"]);
    assert!(
        store.run_record("d2").await.unwrap().is_none(),
        "no second run"
    );
    assert_eq!(wake("d1").await, Some(T + 8_000));
    // Another key has its own burst.
    let r = flowing_with(
        &store,
        "e3",
        "v1",
        debounced("v"),
        T + 3_000,
        json!({"n": 9}),
    )
    .await;
    assert_eq!(r.events[0].runs, ["v1"]);
    // The timeout bounds how far a burst delays its run: 12 s after the
    // first event.
    flowing_with(
        &store,
        "e4",
        "d3",
        debounced("u"),
        T + 10_000,
        json!({"n": 3}),
    )
    .await;
    assert_eq!(wake("d1").await, Some(T + 12_000));
    assert!(claim_as(&store, "a", T + 11_999, hold)
        .await
        .iter()
        .all(|c| c.run.id != "d1"));
    let c = claim_as(&store, "a", T + 12_000, hold).await;
    let d1 = c.iter().find(|c| c.run.id == "d1").expect("d1 runs");
    assert_eq!(d1.event["data"]["n"], 3, "with the burst's last event");
    // Once it started, the next event starts a new burst.
    let r = flowing_with(
        &store,
        "e5",
        "d4",
        debounced("u"),
        T + 13_000,
        json!({"n": 4}),
    )
    .await;
    assert_eq!(r.events[0].runs, ["d4"]);
}

pub async fn a_batch_gathers_events_until_full_or_timed_out(store: Arc<dyn Store>) {
    let batched = |k: &str| flow::RunFlow {
        batch: Some(flow::Batch {
            key: k.into(),
            max_size: 3,
            timeout_ms: 5_000,
        }),
        ..Default::default()
    };
    let hold = 100_000_000;
    let ns = |c: &ClaimedRun| -> Vec<i64> {
        c.events
            .iter()
            .map(|e| e["data"]["n"].as_i64().unwrap_or(-1))
            .collect()
    };
    let r = flowing_with(&store, "e1", "b1", batched("u"), T, json!({"n": 1})).await;
    assert_eq!(r.events[0].runs, ["b1"], "the first event opens a batch");
    assert_eq!(
        store.run_record("b1").await.unwrap().unwrap().wake_at,
        Some(T + 5_000),
        "due when its timeout ends"
    );
    let r = flowing_with(&store, "e2", "b2", batched("u"), T + 1, json!({"n": 2})).await;
    assert!(r.events[0].runs.is_empty());
    assert_eq!(r.events[0].batched, ["b1"]);
    assert!(store.run_record("b2").await.unwrap().is_none(), "no run");
    // Another key has its own batch.
    let r = flowing_with(&store, "e3", "v1", batched("v"), T + 2, json!({"n": 9})).await;
    assert_eq!(r.events[0].runs, ["v1"]);
    assert!(
        claim_as(&store, "a", T + 2, hold).await.is_empty(),
        "none full"
    );
    // The third event fills the batch: due at once, with its events in
    // order.
    let r = flowing_with(&store, "e4", "b3", batched("u"), T + 3, json!({"n": 3})).await;
    assert_eq!(r.events[0].batched, ["b1"]);
    let c = claim_as(&store, "a", T + 3, hold).await;
    assert_eq!(c.len(), 1, "only the full batch is due");
    assert_eq!(c[0].run.id, "b1");
    assert_eq!(ns(&c[0]), [1, 2, 3]);
    assert_eq!(c[0].event["data"]["n"], 1, "the trigger is the first event");
    let detail = store.run("b1").await.unwrap().expect("stored");
    assert_eq!(detail.events.len(), 3, "the run shows its batch");
    // A full batch takes no more: the next event opens another; two
    // events in one ingest share it.
    let mut e5 = event("e5", "t/flow", json!({"n": 5}), &[("b4", "f")]);
    e5.runs[0].flow = batched("u");
    let mut e6 = event("e6", "t/flow", json!({"n": 6}), &[("b5", "f")]);
    e6.runs[0].flow = batched("u");
    let r = store
        .ingest(IngestBatch {
            now_ms: T + 10,
            events: vec![e5, e6],
        })
        .await
        .expect("ingest");
    assert_eq!(r.events[0].runs, ["b4"]);
    assert_eq!(r.events[1].batched, ["b4"]);
    // At its timeout the batch runs with what it has, and takes no more.
    let r = flowing_with(&store, "e7", "b6", batched("u"), T + 5_010, json!({"n": 7})).await;
    assert_eq!(r.events[0].runs, ["b6"], "the timed-out batch is closed");
    let c = claim_as(&store, "a", T + 5_010, hold).await;
    let mut ids: Vec<&str> = c.iter().map(|c| c.run.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["b4", "v1"], "both timed out; b6 waits for its own");
    let b4 = c.iter().find(|c| c.run.id == "b4").expect("claimed");
    assert_eq!(ns(b4), [5, 6]);
    let v1 = c.iter().find(|c| c.run.id == "v1").expect("claimed");
    assert_eq!(ns(v1), [9], "a batch of one event");
    // A batch of one runs at once; a run without batching has no batch.
    let single = flow::RunFlow {
        batch: Some(flow::Batch {
            key: "s".into(),
            max_size: 1,
            timeout_ms: 5_000,
        }),
        ..Default::default()
    };
    flowing_with(&store, "e8", "s1", single, T + 5_020, json!({"n": 8})).await;
    flowing_with(
        &store,
        "e9",
        "p1",
        Default::default(),
        T + 5_020,
        json!({"n": 0}),
    )
    .await;
    let c = claim_as(&store, "a", T + 5_020, hold).await;
    let s1 = c.iter().find(|c| c.run.id == "s1").expect("due at once");
    assert_eq!(ns(s1), [8]);
    let p1 = c.iter().find(|c| c.run.id == "p1").expect("due at once");
    assert!(p1.events.is_empty());
}

fn restart(from: &str, id: &str, kind: &str, journal: Vec<StepCommit>, now: i64) -> Restart {
    Restart {
        run: NewRun {
            id: id.into(),
            fn_id: "f".into(),
            parent: None,
            flow: Default::default(),
            version: Some("v2".into()),
        },
        origin: Origin {
            run_id: from.into(),
            kind: kind.into(),
            from_step: (kind == "replay").then(|| "b".to_string()),
            edited_step: None,
        },
        journal,
        now_ms: now,
    }
}

pub async fn a_restart_makes_a_run_from_another_with_its_journal_and_records_it(
    store: Arc<dyn Store>,
) {
    // A run that failed on its third step.
    let c = running(&store, "r1", json!({"page": 5})).await;
    for (step, outcome) in [
        ("a", Outcome::data(json!(1))),
        ("nap", Outcome::null()),
        ("b", Outcome::data(json!("bad"))),
    ] {
        store
            .commit_step(&c.lease, commit(step, outcome))
            .await
            .unwrap();
    }
    store
        .finish(
            &c.lease,
            Finish::Failed {
                error: ErrorInfo::new("Error", "boom"),
                event: None,
            },
            T + 1,
        )
        .await
        .unwrap();
    // A replay keeping the first two steps, one of them edited.
    let mut edited = commit("a", Outcome::data(json!(2)));
    edited.attempts = 3;
    let kept = vec![edited, commit("nap", Outcome::null())];
    assert!(store
        .restart(restart("r1", "r2", "replay", kept, T + 10))
        .await
        .unwrap());
    let rec = store.run_record("r2").await.unwrap().expect("made");
    assert_eq!(rec.status, RunStatus::Queued);
    assert_eq!(rec.event_id, "e-r1", "the same event");
    assert_eq!(rec.version.as_deref(), Some("v2"));
    let origin = rec.origin.expect("its origin");
    assert_eq!(
        (origin.run_id.as_str(), origin.kind.as_str()),
        ("r1", "replay")
    );
    assert_eq!(origin.from_step.as_deref(), Some("b"));
    // Due now, with the kept journal and the event.
    let c2 = claim(&store, T + 10).await;
    assert_eq!(c2.len(), 1);
    assert_eq!(c2[0].run.id, "r2");
    assert_eq!(c2[0].event["data"]["page"], 5);
    let ids: Vec<String> = c2[0]
        .journal
        .order()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(ids, ["a", "nap"]);
    assert_eq!(
        c2[0].journal.get(&StepId::from("a")),
        Some(&Outcome::data(json!(2)))
    );
    let detail = store.run("r2").await.unwrap().unwrap();
    assert_eq!(detail.steps.len(), 2);
    assert_eq!(detail.steps[0].attempts, 3);
    assert!(detail.ops.is_empty());
    // The operation is recorded on the run it was made from, which is
    // otherwise unchanged.
    let old = store.run("r1").await.unwrap().unwrap();
    assert_eq!(old.run.status, RunStatus::Failed);
    assert_eq!(old.steps.len(), 3);
    assert_eq!(
        old.ops,
        [RunOp {
            at_ms: T + 10,
            op: "replay".into(),
            made: Some("r2".into()),
            from_step: Some("b".into()),
            edited_step: None,
        }]
    );
    // A rerun starts from nothing; then a cancel is recorded too.
    assert!(store
        .restart(restart("r1", "r3", "rerun", Vec::new(), T + 20))
        .await
        .unwrap());
    assert!(store.journal("r3").await.unwrap().unwrap().is_empty());
    assert_eq!(
        store.cancel("r3", T + 21).await.unwrap(),
        Some(RunStatus::Queued)
    );
    let r3 = store.run("r3").await.unwrap().unwrap();
    assert_eq!(r3.ops.len(), 1);
    assert_eq!((r3.ops[0].op.as_str(), r3.ops[0].at_ms), ("cancel", T + 21));
    let old = store.run("r1").await.unwrap().unwrap();
    let ops: Vec<(&str, Option<&str>)> = old
        .ops
        .iter()
        .map(|o| (o.op.as_str(), o.made.as_deref()))
        .collect();
    assert_eq!(ops, [("replay", Some("r2")), ("rerun", Some("r3"))]);
    // A run made from a batch run has the batch.
    let mut e = event("eb", "t/flow", json!({"n": 1}), &[("b1", "f")]);
    e.runs[0].flow.batch = Some(flow::Batch {
        key: "k".into(),
        max_size: 1,
        timeout_ms: 1_000,
    });
    ingest(&store, vec![e]).await;
    claim(&store, T + 30).await;
    assert!(store
        .restart(restart("b1", "b2", "rerun", Vec::new(), T + 30))
        .await
        .unwrap());
    let c = claim(&store, T + 30).await;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].events.len(), 1, "the batch comes along");
    // Nothing is made from a run that does not exist, nor twice.
    assert!(!store
        .restart(restart("nope", "x1", "rerun", Vec::new(), T))
        .await
        .unwrap());
    assert!(store.run_record("x1").await.unwrap().is_none());
    assert!(matches!(
        store
            .restart(restart("r1", "r2", "rerun", Vec::new(), T))
            .await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn events_are_listed_newest_first_page_by_page(store: Arc<dyn Store>) {
    for (i, at) in [(1, T), (2, T + 5), (3, T + 5), (4, T + 9)] {
        store
            .ingest(IngestBatch {
                now_ms: at,
                events: vec![event(&format!("e{i}"), "t/listed", json!({"i": i}), &[])],
            })
            .await
            .unwrap();
    }
    let page = store.list_events(3, None).await.unwrap();
    let ids: Vec<&str> = page.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e4", "e3", "e2"], "newest first, then by ID");
    assert_eq!(page[0].received_ms, T + 9);
    assert_eq!(page[0].name, "t/listed");
    assert_eq!(page[0].event["data"]["i"], 4);
    let last = page.last().unwrap();
    let rest = store
        .list_events(3, Some((last.received_ms, last.id.clone())))
        .await
        .unwrap();
    let ids: Vec<&str> = rest.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e1"]);
}
