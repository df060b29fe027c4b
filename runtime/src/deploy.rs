//! Checking a deploy before it happens: replay the journal of every run
//! not yet finished against the new build's functions, in memory, running
//! no step body (only journaled results count; the first new step ends a
//! replay), and list the runs that would break.
//!
//! Run it from the new build, against the database the old build writes:
//!
//! ```no_run
//! # use durafn_runtime as durafn;
//! # async fn demo(new_build: Vec<std::sync::Arc<dyn durafn::DurableFn>>) {
//! let store = durafn::store::SqliteStore::open("prod.db", durafn::store::SqliteSync::Full).unwrap();
//! let report = durafn::deploy::check(&store, &new_build).await.unwrap();
//! print!("{report}");
//! std::process::exit(if report.ok() { 0 } else { 1 });
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::driver::{input_of, reenter, Invocation};
use crate::function::DurableFn;
use crate::journal::Outcome;
use crate::step_id::StepId;
use crate::store::{RunFilter, RunStatus, Store, StoreError};
use crate::transition::Transition;

/// The failures a replay can end with that mean the new code does not fit
/// the run's journal or its event.
const BREAKS: &[&str] = &[
    "NonDeterminism",
    "JournalMismatch",
    "DuplicateStep",
    "EventMismatch",
    "Panic",
];

/// A run the new build would fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaking {
    pub run_id: String,
    pub fn_id: String,
    /// The version the run started on.
    pub version: Option<String>,
    /// Why: the error the replay ended with, naming the journaled step
    /// expected and the one the new code reached.
    pub name: String,
    pub message: String,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployReport {
    /// Runs not finished, of functions in the new build, replayed.
    pub checked: usize,
    pub breaking: Vec<Breaking>,
    /// Per function: (runs checked, runs breaking).
    pub per_function: BTreeMap<String, (usize, usize)>,
    /// Runs of functions the new build does not have: (run, function).
    pub missing: Vec<(String, String)>,
}

impl DeployReport {
    /// Whether the deploy breaks no run (and drops no function with runs
    /// in flight).
    pub fn ok(&self) -> bool {
        self.breaking.is_empty() && self.missing.is_empty()
    }
}

impl fmt::Display for DeployReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} runs in flight: {} would break, {} belong to functions this build does not have",
            self.checked,
            self.breaking.len(),
            self.missing.len()
        )?;
        for (fn_id, (checked, broken)) in &self.per_function {
            writeln!(f, "  {fn_id}: {broken} of {checked} would break")?;
        }
        for b in &self.breaking {
            writeln!(
                f,
                "  run {} of `{}` (version {}): {}: {}",
                b.run_id,
                b.fn_id,
                b.version.as_deref().unwrap_or("-"),
                b.name,
                b.message
            )?;
        }
        for (run, fn_id) in &self.missing {
            writeln!(f, "  run {run}: no function `{fn_id}` in this build")?;
        }
        Ok(())
    }
}

/// Replay every queued, running or sleeping run in `store` against `fns`
/// (the new build) and report those that would fail. Reads only: no lease
/// is taken, nothing is written, no step body runs.
pub async fn check(
    store: &dyn Store,
    fns: &[Arc<dyn DurableFn>],
) -> Result<DeployReport, StoreError> {
    let mut report = DeployReport::default();
    for status in [RunStatus::Queued, RunStatus::Running, RunStatus::Sleeping] {
        let mut after = None;
        loop {
            let page = store
                .list_runs(RunFilter {
                    status: Some(status),
                    limit: Some(500),
                    after: after.clone(),
                    ..RunFilter::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some((last.created_ms, last.id.clone()));
            for run in page {
                let Some(f) = fns.iter().find(|f| f.id() == run.fn_id) else {
                    report.missing.push((run.id, run.fn_id));
                    continue;
                };
                let (Some(detail), Some(journal)) =
                    (store.run(&run.id).await?, store.journal(&run.id).await?)
                else {
                    continue; // ended and removed meanwhile
                };
                // A run suspended in a sleep, a wait or an invoke journals
                // that step's outcome first when it resumes: replay as it
                // will be then. Any outcome of the right shape does (a
                // sleep's `null`, a wait that timed out, an invoke that
                // failed), since no code past it runs here.
                let mut journal = journal;
                if let Some(pending) = &run.pending_step {
                    let status = detail
                        .steps
                        .iter()
                        .find(|st| &st.id == pending)
                        .map(|st| st.status.as_str());
                    let outcome = match status {
                        Some("invoking") => Outcome::error(crate::ErrorInfo::new(
                            "DeployCheck",
                            "a stand-in for the invoked run's result",
                        )),
                        _ => Outcome::null(),
                    };
                    journal.insert(StepId::from_readable(pending.clone()), outcome);
                }
                let mut inv =
                    Invocation::new(run.id.clone(), input_of(&**f, detail.event, detail.events))
                        .with_journal(journal);
                inv.plan.disable_immediate = true;
                let res = reenter(&**f, inv).await;
                report.checked += 1;
                let counts = report.per_function.entry(run.fn_id.clone()).or_default();
                counts.0 += 1;
                let broken = match res.transition {
                    Transition::Failed { error, .. } if BREAKS.contains(&error.name.as_str()) => {
                        Some((error.name, error.message))
                    }
                    _ => None,
                };
                if let Some((name, message)) = broken {
                    counts.1 += 1;
                    report.breaking.push(Breaking {
                        run_id: run.id,
                        fn_id: run.fn_id,
                        version: run.version,
                        name,
                        message,
                    });
                }
            }
        }
    }
    Ok(report)
}
