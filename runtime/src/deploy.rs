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

use serde_json::{json, Value};

use crate::driver::{check_replay, input_of};
use crate::function::DurableFn;
use crate::store::{RunDetail, RunFilter, RunStatus, Store, StoreError};

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
                let pending = run
                    .pending_step
                    .as_deref()
                    .map(|p| (p, pending_status(&detail)));
                let input = input_of(&**f, detail.event.clone(), detail.events.clone());
                let checked = check_replay(&**f, &run.id, input, journal, pending).await;
                report.checked += 1;
                let counts = report.per_function.entry(run.fn_id.clone()).or_default();
                counts.0 += 1;
                let broken = checked.err().map(|e| (e.name, e.message));
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

/// The trace status (`sleeping`, `waiting`, `invoking`) of the step a
/// suspended run waits in.
fn pending_status(detail: &RunDetail) -> Option<&str> {
    let pending = detail.run.pending_step.as_deref()?;
    detail
        .steps
        .iter()
        .find(|st| st.id == pending)
        .map(|st| st.status.as_str())
}

/// The version of the export format.
pub const EXPORT_FORMAT: u64 = 1;

/// A run as a JSON document (`durafn export <run-id>`, `GET
/// /v1/runs/{id}/export`): its function, version, event(s), journal in
/// order and pending step; [`crate::testing::replay`] replays it in a unit
/// test, so a run from production becomes a regression test.
pub async fn export(store: &dyn Store, run_id: &str) -> Result<Option<Value>, StoreError> {
    let (Some(detail), Some(journal)) = (store.run(run_id).await?, store.journal(run_id).await?)
    else {
        return Ok(None);
    };
    let pending_status = pending_status(&detail);
    let steps: Vec<Value> = journal
        .iter()
        .map(|(id, o)| json!({"step": id.as_str(), "outcome": o}))
        .collect();
    Ok(Some(json!({
        "durafn_export": EXPORT_FORMAT,
        "run_id": detail.run.id,
        "fn_id": detail.run.fn_id,
        "version": detail.run.version,
        "status": detail.run.status,
        "event": detail.event,
        "events": detail.events,
        "pending_step": detail.run.pending_step,
        "pending_status": pending_status,
        "journal": steps,
    })))
}

/// `check-deploy --db <sqlite file or postgres URL>` for the user's own
/// binary, which knows the new build's functions:
///
/// ```no_run
/// # use durafn_runtime as durafn;
/// # async fn demo(import_products: impl durafn::DurableFn) {
/// // in main(), when the first argument is `check-deploy`:
/// let code = durafn::deploy::cli(std::env::args().skip(1), vec![std::sync::Arc::new(import_products)]).await;
/// std::process::exit(code);
/// # }
/// ```
///
/// Prints the report; answers 0 when the deploy breaks nothing, 1 when it
/// would, 2 on a usage or store error.
pub async fn cli(args: impl IntoIterator<Item = String>, fns: Vec<Arc<dyn DurableFn>>) -> i32 {
    let args: Vec<String> = args.into_iter().collect();
    let usage = "usage: check-deploy --db <sqlite file or postgres://URL>";
    let db = match args.as_slice() {
        [cmd, flag, db] if cmd == "check-deploy" && flag == "--db" => db.clone(),
        _ => {
            eprintln!("{usage}");
            return 2;
        }
    };
    let store: Result<Arc<dyn Store>, StoreError> =
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            {
                crate::store::PgStore::connect(&db)
                    .await
                    .map(|s| Arc::new(s) as Arc<dyn Store>)
            }
            #[cfg(not(feature = "postgres"))]
            {
                Err(StoreError::backend(
                    "this build has no PostgreSQL support (feature `postgres`)",
                ))
            }
        } else {
            #[cfg(feature = "sqlite")]
            {
                if !std::path::Path::new(&db).exists() {
                    Err(StoreError::backend(format!("no database at {db}")))
                } else {
                    crate::store::SqliteStore::open(&db, crate::store::SqliteSync::Full)
                        .map(|s| Arc::new(s) as Arc<dyn Store>)
                }
            }
            #[cfg(not(feature = "sqlite"))]
            {
                Err(StoreError::backend(
                    "this build has no SQLite support (feature `sqlite`)",
                ))
            }
        };
    let report = match store {
        Ok(store) => check(&*store, &fns).await,
        Err(e) => Err(e),
    };
    match report {
        Ok(r) => {
            print!("{r}");
            if r.ok() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("check-deploy: {e}");
            2
        }
    }
}
