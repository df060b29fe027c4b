//! Crash safety with a real process: an engine child process runs many
//! multi-step runs on SQLite; the test kills it with SIGKILL at random
//! moments, restarts it, and checks that every run finishes and that no
//! journaled step ran again.
//!
//! The child is this same test binary, started with `DURAFN_CRASH_CHILD`
//! set, running the `child` test below.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use durafn::prelude::*;
use durafn::store::{RunFilter, RunStatus};
use durafn::{Backoff, Engine};
use serde_json::json;

const RUNS: usize = 40;
const STEPS: u32 = 12;

#[durable_fn(id = "crashy", event = "test/crashy")]
async fn crashy(_ctx: Ctx, event: Event) -> Result<u64> {
    let side = event.data["side"].as_str().unwrap_or_default().to_string();
    let mut sum = 0u64;
    for i in 0..STEPS {
        sum += step!("work", {
            // The side effect: one line per execution of the step body.
            let generation = std::env::var("DURAFN_CRASH_GEN").unwrap_or_default();
            let key = format!("{generation} {} {i}", _ctx.run_id());
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&side)?;
            // One write call per line, so concurrent appends do not interleave.
            f.write_all(format!("{key}\n").as_bytes())?;
            tokio::time::sleep(Duration::from_millis(4)).await;
            u64::from(i)
        })?;
    }
    Ok(sum)
}

/// The child: open the engine, send the events (idempotent IDs, so a
/// restart sends nothing new), report when every run is done.
#[test]
fn child() {
    let Ok(dir) = std::env::var("DURAFN_CRASH_CHILD") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let dir = std::path::PathBuf::from(dir);
        let engine = Engine::builder()
            .sqlite(dir.join("durafn.db"))
            .register(crashy)
            .concurrency(8)
            .backoff(Backoff {
                base: Duration::from_millis(5),
                max: Duration::from_millis(20),
            })
            .build()
            .await
            .expect("engine");
        let side = dir.join("side.log");
        for i in 0..RUNS {
            let e = Event::new("test/crashy", json!({"side": side})).with_id(format!("event-{i}"));
            engine.send(e).await.expect("send");
        }
        println!("ready");
        loop {
            let runs = engine
                .runs(RunFilter {
                    limit: Some(10_000),
                    ..Default::default()
                })
                .await
                .unwrap();
            if runs.len() == RUNS && runs.iter().all(|r| r.status.is_final()) {
                println!("all-done");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

fn spawn_child(dir: &std::path::Path, generation: usize) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("DURAFN_CRASH_CHILD", dir)
        .env("DURAFN_CRASH_GEN", generation.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_for(rx: &mpsc::Receiver<String>, what: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.trim().ends_with(what) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn runs_survive_repeated_kill_9() {
    if std::env::var("DURAFN_CRASH_CHILD").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kills = 6;
    let total = RUNS as i64 * i64::from(STEPS);
    let mut mid_work_kills = 0;
    for k in 0..kills {
        let (mut child, rx) = spawn_child(dir.path(), k);
        assert!(
            wait_for(&rx, "ready", Duration::from_secs(60)),
            "child {k} did not start"
        );
        // Let it work for a random while, then SIGKILL (no cleanup runs).
        std::thread::sleep(Duration::from_millis(rand::random_range(20..90)));
        child.kill().expect("kill -9");
        child.wait().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("durafn.db")).unwrap();
        let journaled: i64 = conn
            .query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))
            .unwrap();
        eprintln!("kill {k}: {journaled}/{total} steps journaled");
        if journaled < total {
            mid_work_kills += 1;
        }
    }
    assert!(
        mid_work_kills >= 3,
        "most kills must hit runs in progress ({mid_work_kills} did)"
    );
    let (mut child, rx) = spawn_child(dir.path(), kills);
    let done = wait_for(&rx, "all-done", Duration::from_secs(120));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(done, "the runs did not all finish after the restarts");

    // Every run completed with the right output and a full journal.
    let conn = rusqlite::Connection::open(dir.path().join("durafn.db")).unwrap();
    let mut st = conn.prepare("SELECT id, status, output FROM runs").unwrap();
    let runs: Vec<(String, String, Option<String>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(runs.len(), RUNS);
    let expected: u64 = (0..STEPS as u64).sum();
    for (id, status, output) in &runs {
        assert_eq!(status, RunStatus::Completed.as_str(), "run {id}");
        assert_eq!(
            output.as_deref(),
            Some(expected.to_string().as_str()),
            "run {id}"
        );
        let journaled: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM journal WHERE run_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(journaled, i64::from(STEPS), "run {id}");
    }

    // Each step body ran once, except where a kill hit between its side
    // effect and its journal write. Lines are `generation run step`.
    let side = std::fs::read_to_string(dir.path().join("side.log")).unwrap();
    let lines: Vec<(usize, &str, u32)> = side
        .lines()
        .map(|l| {
            let mut it = l.split(' ');
            (
                it.next().unwrap().parse().unwrap(),
                it.next().unwrap(),
                it.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let mut executions: HashMap<(&str, u32), Vec<usize>> = HashMap::new();
    for (generation, run, step) in &lines {
        executions
            .entry((*run, *step))
            .or_default()
            .push(*generation);
    }
    assert_eq!(executions.len(), RUNS * STEPS as usize, "every step ran");
    let mut repeated = 0;
    for ((run, step), gens) in &executions {
        // A repeat must come from a process that was killed while the step
        // was in flight: that process never got past this step of the run.
        for g in &gens[..gens.len() - 1] {
            repeated += 1;
            assert!(*g < kills, "the last process repeated {run} step {step}");
            let went_on = lines
                .iter()
                .any(|(g2, r2, s2)| g2 == g && r2 == run && s2 > step);
            assert!(
                !went_on,
                "run {run} step {step} ran again although process {g} had journaled it and gone on"
            );
        }
        let mut distinct = gens.clone();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            gens.len(),
            "{run} step {step} ran twice in one process: {gens:?}"
        );
    }
    eprintln!(
        "kill -9 x{kills}: {} step executions for {} journaled steps; {repeated} repeated, each cut off by a kill between its effect and its journal write",
        lines.len(),
        RUNS * STEPS as usize
    );
    assert!(
        repeated <= kills * 8,
        "at most one step per run in flight (concurrency 8) per kill"
    );
}
