//! Crash safety with a real process: an engine child process runs many
//! multi-step runs on SQLite; the test kills it with SIGKILL at random
//! moments, restarts it, and checks that every run finishes and that no
//! journaled step ran again.
//!
//! The child is this same test binary, started with `DURAFN_CRASH_CHILD`
//! set, running the `child` test below.
//!
//! Two more children check atomicity the same way: a request of 10,000
//! events killed mid-way stores all of them or none, and a `send_event!`
//! whose step is cut off by a kill before it was journaled sends nothing
//! twice.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
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

// ---------------------------------------------------------------------
// One request of events is one transaction.

#[durable_fn(id = "batch-target", event = "test/batch")]
async fn batch_target(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

/// The child: the event API on SQLite, storing runs but driving none.
#[test]
fn batch_child() {
    let Ok(dir) = std::env::var("DURAFN_BATCH_CHILD") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let engine = Engine::builder()
            .sqlite(std::path::Path::new(&dir).join("durafn.db"))
            .register(batch_target)
            .without_workers()
            .build()
            .await
            .expect("engine");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        axum::serve(listener, engine.router()).await.unwrap();
    });
}

fn spawn(env: &str, dir: &std::path::Path, test: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env, dir)
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

/// POST `body` to `/e/key` over a plain socket; the status code, or `None`
/// when no full answer came back.
fn post(addr: &str, body: &[u8]) -> Option<u16> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let head = format!(
        "POST /e/key HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_request_of_events_killed_mid_way_stores_all_of_them_or_none() {
    if std::env::var("DURAFN_BATCH_CHILD").is_ok() {
        return;
    }
    const EVENTS: i64 = 10_000;
    let events: Vec<serde_json::Value> = (0..EVENTS)
        .map(|i| json!({"name": "test/batch", "data": {"i": i}}))
        .collect();
    let body = serde_json::to_vec(&events).unwrap();
    let start = |dir: &std::path::Path| {
        let (child, rx) = spawn("DURAFN_BATCH_CHILD", dir, "batch_child");
        let addr = (0..600)
            .find_map(|_| match rx.recv_timeout(Duration::from_millis(100)) {
                // The harness prints `test batch_child ... ` first.
                Ok(l) => l.split("listening ").nth(1).map(str::to_string),
                Err(_) => None,
            })
            .expect("the child listens");
        (child, addr)
    };
    // How long one request takes here, unkilled: the kills spread over it.
    let full = {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, addr) = start(dir.path());
        let t = Instant::now();
        assert_eq!(post(&addr, &body), Some(200));
        let took = t.elapsed();
        child.kill().unwrap();
        child.wait().unwrap();
        took
    };
    eprintln!("one request of {EVENTS} events takes {full:?}");
    let (mut cut_off, mut whole) = (0, 0);
    for k in 0..16 {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, addr) = start(dir.path());
        let answered = {
            let body = body.clone();
            std::thread::spawn(move || post(&addr, &body))
        };
        let at = full.mul_f64(rand::random_range(0.02..1.0));
        std::thread::sleep(at);
        child.kill().expect("kill -9");
        child.wait().unwrap();
        let status = answered.join().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("durafn.db")).unwrap();
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        let (stored, runs) = (count("events"), count("runs"));
        eprintln!(
            "kill {k} after {at:?}: answer {status:?}, {stored} events and {runs} runs stored"
        );
        assert!(
            stored == 0 || stored == EVENTS,
            "a request is stored whole or not at all: {stored} of {EVENTS} events"
        );
        assert_eq!(
            runs, stored,
            "every stored event has its run, and only those"
        );
        if status == Some(200) {
            assert_eq!(stored, EVENTS, "an acknowledged request is stored");
        } else {
            cut_off += 1;
            if stored == EVENTS {
                whole += 1;
            }
        }
    }
    eprintln!("{cut_off} kills before the answer, {whole} of them after the commit");
    assert!(
        cut_off >= 3,
        "most kills must land mid-request ({cut_off} did)"
    );
}

// ---------------------------------------------------------------------
// A `send_event!` cut off before its step was journaled sends once.

#[durable_fn(id = "announce-once", event = "test/announce")]
async fn announce_once(_ctx: Ctx, _event: Event) -> Result<usize> {
    let ids = send_event!("notify", Event::new("test/announced", json!({"n": 1})))?;
    Ok(ids.len())
}

#[durable_fn(id = "on-announced", event = "test/announced")]
async fn on_announced(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

/// The child: the first generation kills itself with SIGKILL right after
/// the step `notify` sent its event and before the step is journaled; the
/// second runs the same run to its end.
#[test]
fn send_child() {
    let Ok(dir) = std::env::var("DURAFN_SEND_CHILD") else {
        return;
    };
    let first = std::env::var("DURAFN_SEND_GEN").as_deref() == Ok("0");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let sqlite = durafn::store::SqliteStore::open(
            std::path::Path::new(&dir).join("durafn.db"),
            durafn::store::SqliteSync::Full,
        )
        .expect("store");
        let mut faults = common::Faults::default();
        if first {
            faults.before_commit = Some(Box::new(|c| {
                if c.step == "notify" {
                    let pid = std::process::id().to_string();
                    let _ = Command::new("kill").args(["-9", &pid]).status();
                    std::thread::sleep(Duration::from_secs(10));
                }
            }));
        }
        let store = common::Faulty::wrap(Arc::new(sqlite), Arc::new(faults));
        // The only engine on this file: a killed predecessor's leases are free.
        store.release_leases().await.unwrap();
        let engine = Engine::builder()
            .store(store)
            .register(announce_once)
            .register(on_announced)
            .build()
            .await
            .expect("engine");
        engine
            .send(Event::new("test/announce", json!({})).with_id("announce-1"))
            .await
            .expect("send");
        loop {
            let runs = engine.runs(RunFilter::default()).await.unwrap();
            if runs.len() >= 2 && runs.iter().all(|r| r.status.is_final()) {
                println!("all-done");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn a_send_cut_off_by_kill_9_before_its_step_was_journaled_sends_once() {
    if std::env::var("DURAFN_SEND_CHILD").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gen = |g: &str| {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "send_child", "--nocapture", "--test-threads=1"])
            .env("DURAFN_SEND_CHILD", dir.path())
            .env("DURAFN_SEND_GEN", g)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the child");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (child, rx)
    };
    let (mut first, _out) = gen("0");
    let status = first.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the first generation was killed with SIGKILL"
    );
    let db = dir.path().join("durafn.db");
    let count = |sql: &str| -> i64 {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    };
    let downstream = "SELECT COUNT(*) FROM runs WHERE fn_id = 'on-announced'";
    assert_eq!(
        count(downstream),
        1,
        "the kill came after the send and before the journal write"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM journal WHERE step_id = 'notify'"),
        0
    );

    let (mut second, out) = gen("1");
    let done = wait_for(&out, "all-done", Duration::from_secs(60));
    second.kill().unwrap();
    second.wait().unwrap();
    assert!(done, "the run did not finish after the restart");
    assert_eq!(
        count(downstream),
        1,
        "the step ran again, but its event was deduplicated"
    );
    assert_eq!(
        count("SELECT CAST(output AS INTEGER) FROM runs WHERE fn_id = 'announce-once'"),
        1
    );
}
