//! Replay: how a site resolves against the journal, and what happens to a
//! new outcome. A run that reaches a new step while journaled ones were
//! never reached took another path than the one that wrote the journal,
//! except for the branches of one parallel group, which replay as a set.

use std::collections::HashSet;

use serde_json::Value;

use super::{Ctx, Mode, StepMeta};
use crate::error::{ErrorInfo, Retry};
use crate::function::StepSite;
use crate::journal::Outcome;
use crate::step_id::StepId;
use crate::transition::Transition;

/// The branches of one `parallel!`: they replay as a set, in whatever
/// order they completed before.
pub(super) struct Group {
    /// Hashes of the branches' journal keys.
    pub keys: HashSet<u64>,
    /// Journaled branches not reached yet in this call.
    pub unreached: usize,
}

pub(super) enum Begin<T> {
    Memo(T),
    Run { attempt: u32 },
    Stop,
}

impl Ctx {
    /// Decide what a site does: return its memoized outcome, run now, or
    /// stop the run (a transition is already recorded).
    pub(super) fn begin<T>(
        &self,
        id: &StepId,
        plannable: bool,
        memo: impl FnOnce(&Outcome) -> Result<T, String>,
    ) -> Begin<T> {
        let mut st = self.state();
        if st.transition.is_some() || st.abandoned.is_some() {
            return Begin::Stop;
        }
        if !st.seen.insert(hash_of(id)) {
            let msg = format!(
                "durafn: step `{id}` was reached twice in one run of `{}`; step IDs must be unique per run (steps in loops get the loop index automatically, so this comes from a loop or recursion the macro cannot see)",
                self.inner.fn_id
            );
            st.transition = Some(failed_for_good("DuplicateStep", msg));
            return Begin::Stop;
        }
        let key = st.journal.key_of(id);
        let key_hash = hash_of(&key);
        if let Some(outcome) = st.journal.get(&key) {
            match memo(outcome) {
                Ok(v) => {
                    st.reached += 1;
                    set_last(&mut st.last, id);
                    st.hit.insert(key_hash);
                    if let Some(g) = &mut st.group {
                        if g.keys.contains(&key_hash) {
                            g.unreached -= 1;
                        }
                    }
                    return Begin::Memo(v);
                }
                Err(why) => {
                    let msg = format!(
                        "durafn: the journaled outcome of step `{id}` does not fit the step's type: {why}; the journal was written by a different version of the function"
                    );
                    st.transition = Some(failed_for_good("JournalMismatch", msg));
                    return Begin::Stop;
                }
            }
        }
        // A new step while journaled ones were never reached: the code took
        // another path than the one that wrote the journal. Branches of one
        // parallel group are the exception: they replay as a set, so a
        // branch that failed (or was cut off) may come before siblings that
        // completed after it.
        let unreached = st.loaded - st.reached;
        let in_group = st
            .group
            .as_ref()
            .is_some_and(|g| g.keys.contains(&key_hash) && g.unreached == unreached);
        if unreached > 0 && !in_group {
            let expected = st
                .journal
                .order()
                .iter()
                .find(|j| !st.hit.contains(&hash_of(j)))
                .map(|j| match st.journal.is_hashed() {
                    true => readable_of(j.as_str(), self.inner.sites, st.loaded),
                    false => format!("`{j}`"),
                })
                .unwrap_or_default();
            let msg = format!(
                "durafn: non-determinism in `{}`: the journal expects step {expected} next, but the run reached new step `{id}`; code outside steps must take the same path on every replay",
                self.inner.fn_id
            );
            st.transition = Some(failed_for_good("NonDeterminism", msg));
            return Begin::Stop;
        }
        if self.inner.mode == Mode::ReEntry && plannable {
            let plan = &self.inner.plan;
            match &plan.target {
                Some(target) if *target == id.hashed() => {}
                Some(target) => {
                    let msg = format!(
                        "durafn: the executor asked for step {target}, but the next new step of `{}` is `{id}` ({})",
                        self.inner.fn_id,
                        id.hashed()
                    );
                    st.transition = Some(Transition::Failed {
                        error: ErrorInfo::new("StepNotFound", msg),
                        retry: Retry::Backoff,
                    });
                    return Begin::Stop;
                }
                None if plan.disable_immediate => {
                    st.transition = Some(Transition::StepPlanned { id: id.clone() });
                    return Begin::Stop;
                }
                None => {}
            }
        }
        if self.inner.mode == Mode::ReEntry && st.in_flight > 0 {
            // Re-entry runs one new step per call; a parallel sibling waits
            // for a later call.
            return Begin::Stop;
        }
        let attempt = match st.attempts.by_step.get(key.as_str()) {
            Some(&n) => n,
            None => std::mem::take(&mut st.attempts.next_new),
        };
        set_last(&mut st.last, id);
        Begin::Run { attempt }
    }

    /// Record a new outcome of `size` bytes. Re-entry: hand it to the driver and stop.
    /// Continuous: journal it durably and go on. Returns whether to go on.
    pub(super) async fn complete(
        &self,
        id: StepId,
        size: usize,
        outcome: Outcome,
        attempt: u32,
        started_ms: i64,
    ) -> bool {
        self.state().journaled += size;
        let t = match outcome {
            Outcome::Data { data } => Transition::StepRan { id, output: data },
            Outcome::Error { error } => Transition::StepFailed { id, error },
            Outcome::Null(()) => Transition::StepRan {
                id,
                output: Value::Null,
            },
        };
        if self.inner.mode == Mode::ReEntry {
            self.state().transition = Some(t);
            return false;
        }
        match &self.inner.sink {
            Some(sink) => {
                let meta = StepMeta {
                    attempts: attempt + 1,
                    started_ms,
                    ended_ms: self.inner.clock.now_ms(),
                };
                // With a sink the journal lives in the store: a long run
                // keeps no outcome in memory once it is committed.
                let _waiting = self.vouch();
                if let Err(why) = sink.record(t, meta).await {
                    self.state().abandoned = Some(why);
                    return false;
                }
            }
            None => {
                let (id, outcome) = match t {
                    Transition::StepRan { id, output } => (id, Outcome::data(output)),
                    Transition::StepFailed { id, error } => (id, Outcome::error(error)),
                    _ => unreachable!("a step outcome"),
                };
                self.state().journal.insert_sized(id, outcome, size);
            }
        }
        true
    }
}

/// The readable ID behind a hashed one, searched among the IDs the step
/// table can produce (for error messages).
fn readable_of(hash: &str, sites: &[StepSite], journaled: usize) -> String {
    let limit = (journaled as u32 + 1).clamp(1_000, 100_000);
    for s in sites {
        let found = match s.loop_depth {
            0 => [StepId::new(s.id, &[])]
                .into_iter()
                .find(|c| c.hashed() == hash),
            1 => (0..limit)
                .map(|i| StepId::new(s.id, &[i]))
                .find(|c| c.hashed() == hash),
            2 => (0..limit.min(300))
                .flat_map(|i| (0..limit.min(300)).map(move |j| (i, j)))
                .map(|(i, j)| StepId::new(s.id, &[i, j]))
                .find(|c| c.hashed() == hash),
            _ => None,
        };
        if let Some(id) = found {
            return format!("`{id}` (hash {hash})");
        }
    }
    format!("{hash} (a hashed ID that no site of this function produces)")
}

/// Remember `id` as the last site reached, reusing the allocation.
fn set_last(last: &mut Option<StepId>, id: &StepId) {
    match last {
        Some(l) => l.clone_from(id),
        None => *last = Some(id.clone()),
    }
}

pub(super) fn hash_of(id: &StepId) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id.as_str())
}

pub(super) fn failed_for_good(name: &str, message: String) -> Transition {
    tracing::error!("{message}");
    Transition::Failed {
        error: ErrorInfo::new(name, message),
        retry: Retry::Never,
    }
}
