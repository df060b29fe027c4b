//! Several engine processes on one PostgreSQL database, killed with SIGKILL
//! one at a time and restarted, finish every run: no journaled step runs
//! again, every repeated step execution belongs to a process killed with
//! that step in flight, and never do two live processes run the same step
//! of a run at the same time.
//!
//! The engines are this test binary, started with `DURAFN_PG_CHILD` set,
//! running the `pg_child` test below. They log the start and end of every
//! step body to one file (`S`/`E`, process, run, step, time).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use durafn::prelude::*;
use durafn::store::{PgOptions, RunFilter};
use durafn::{Backoff, Engine};
use serde_json::json;

const RUNS: usize = 500;
const STEPS: u32 = 20;
const PROCESSES: usize = 3;
const KILLS: usize = 10;

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn log_line(path: &str, line: String) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the step log");
    // One write per line, so concurrent appends do not interleave.
    f.write_all(line.as_bytes()).expect("a log line");
}

#[durable_fn(id = "pg-crashy", event = "test/pg-crashy")]
async fn pg_crashy(ctx: Ctx, event: Event) -> Result<u64> {
    let log = event.data["log"].as_str().unwrap_or_default().to_string();
    let mut sum = 0u64;
    for i in 0..STEPS {
        sum += step!("work", {
            let (pid, run) = (std::process::id(), ctx.run_id().to_string());
            log_line(&log, format!("S {pid} {run} {i} {}\n", now_us()));
            tokio::time::sleep(Duration::from_millis(3)).await;
            log_line(&log, format!("E {pid} {run} {i} {}\n", now_us()));
            u64::from(i)
        })?;
    }
    Ok(sum)
}

/// A child: one engine process on the shared schema. Every child sends
/// the same events (fixed IDs: the database keeps one of each).
#[test]
fn pg_child() {
    let Ok(url) = std::env::var("DURAFN_PG_CHILD") else {
        return;
    };
    let schema = std::env::var("DURAFN_PG_SCHEMA").unwrap();
    let log = std::env::var("DURAFN_PG_LOG").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let engine = Engine::builder()
            .postgres_with(
                url,
                PgOptions {
                    schema,
                    ..PgOptions::default()
                },
            )
            .register(pg_crashy)
            .lease(Duration::from_secs(3))
            .backoff(Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
            })
            .build()
            .await
            .expect("engine");
        let events: Vec<serde_json::Value> = (0..RUNS)
            .map(|i| json!({"name": "test/pg-crashy", "id": format!("pg-event-{i}"), "data": {"log": log}}))
            .collect();
        engine.send_values(events).await.expect("send");
        println!("ready");
        loop {
            let runs = engine
                .runs(RunFilter {
                    limit: Some(RUNS + 1),
                    ..Default::default()
                })
                .await
                .unwrap();
            if runs.len() == RUNS && runs.iter().all(|r| r.status.is_final()) {
                println!("all-done");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

struct Engines {
    url: String,
    schema: String,
    log: String,
    children: Vec<(Child, mpsc::Receiver<String>)>,
}

impl Engines {
    fn spawn(&self) -> (Child, mpsc::Receiver<String>) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "pg_child", "--nocapture", "--test-threads=1"])
            .env("DURAFN_PG_CHILD", &self.url)
            .env("DURAFN_PG_SCHEMA", &self.schema)
            .env("DURAFN_PG_LOG", &self.log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start an engine");
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
}

impl Drop for Engines {
    fn drop(&mut self) {
        for (c, _) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One execution of a step body: its process, start, and end if it ended.
#[derive(Debug, Clone)]
struct Execution {
    pid: u32,
    start: u128,
    end: Option<u128>,
}

#[tokio::test(flavor = "multi_thread")]
async fn three_engine_processes_share_runs_and_survive_repeated_kill_9() {
    if std::env::var("DURAFN_PG_CHILD").is_ok() {
        return;
    }
    let Some(url) = common::pg_url().await else {
        return;
    };
    let schema = common::fresh_schema("multiprocess");
    let _drop = common::DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("steps.log").display().to_string();
    let mut engines = Engines {
        url: url.clone(),
        schema: schema.clone(),
        log: log.clone(),
        children: Vec::new(),
    };
    for _ in 0..PROCESSES {
        let child = engines.spawn();
        engines.children.push(child);
    }
    for (_, rx) in &engines.children {
        assert!(
            wait_for(rx, "ready", Duration::from_secs(60)),
            "an engine did not start"
        );
    }
    // Kill one process about every half second, and start another.
    let mut killed: HashMap<u32, u128> = HashMap::new();
    for k in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rand::random_range(300..700)));
        let i = k % PROCESSES;
        let (mut child, _) = engines.children.remove(i);
        let pid = child.id();
        child.kill().expect("kill -9");
        killed.insert(pid, now_us());
        child.wait().unwrap();
        let fresh = engines.spawn();
        engines.children.insert(i, fresh);
    }
    let done = {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut done = false;
        while !done && Instant::now() < deadline {
            done = engines
                .children
                .iter()
                .any(|(_, rx)| rx.try_iter().any(|l| l.trim().ends_with("all-done")));
            std::thread::sleep(Duration::from_millis(100));
        }
        done
    };
    assert!(done, "the runs did not all finish");
    drop(engines);

    // Every run completed with a full journal, each step once.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let q = |sql: &str| sql.replace("$S", &format!("\"{schema}\""));
    let completed: i64 = client
        .query_one(
            &q("SELECT COUNT(*) FROM $S.runs WHERE status = 'completed'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(completed, RUNS as i64);
    let events: i64 = client
        .query_one(&q("SELECT COUNT(*) FROM $S.events"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        events, RUNS as i64,
        "every process sent the events; each was kept once"
    );
    let rows = client
        .query(
            &q("SELECT run_id, COUNT(*), COUNT(DISTINCT step_id) FROM $S.journal GROUP BY run_id"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), RUNS);
    for r in &rows {
        let (run, n, distinct): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(
            (n, distinct),
            (i64::from(STEPS), i64::from(STEPS)),
            "run {run}"
        );
    }

    // The step log: executions by (run, step).
    let text = std::fs::read_to_string(&log).unwrap();
    let mut executions: HashMap<(String, u32), Vec<Execution>> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (pid, run, step, t): (u32, String, u32, u128) = (
            f[1].parse().unwrap(),
            f[2].into(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
        );
        let list = executions.entry((run, step)).or_default();
        match f[0] {
            "S" => list.push(Execution {
                pid,
                start: t,
                end: None,
            }),
            _ => {
                let e = list
                    .iter_mut()
                    .rev()
                    .find(|e| e.pid == pid && e.end.is_none())
                    .expect("an end after a start");
                e.end = Some(t);
            }
        }
    }
    assert_eq!(executions.len(), RUNS * STEPS as usize, "every step ran");
    let mut repeated = 0;
    for ((run, step), list) in &executions {
        assert!(
            list.iter().any(|e| e.end.is_some()),
            "{run} step {step} never finished"
        );
        // All but the last execution were cut off: by a kill of their
        // process, before their result was journaled.
        for e in &list[..list.len() - 1] {
            repeated += 1;
            assert!(
                killed.contains_key(&e.pid),
                "{run} step {step} ran again although process {} was not killed: {list:?}",
                e.pid
            );
            let went_on = executions
                .get(&(run.clone(), step + 1))
                .is_some_and(|next| next.iter().any(|n| n.pid == e.pid));
            assert!(
                !went_on,
                "process {} journaled {run} step {step} and went on, yet it ran again",
                e.pid
            );
        }
        // No two processes in the same step of a run at the same time:
        // an execution lasts until its end, or its process's kill.
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if a.pid == b.pid {
                    continue;
                }
                let until =
                    |e: &Execution| e.end.or(killed.get(&e.pid).copied()).unwrap_or(u128::MAX);
                let overlap = a.start < until(b) && b.start < until(a);
                assert!(
                    !overlap,
                    "{run} step {step} ran on two live processes at once: {a:?} {b:?}"
                );
            }
        }
    }
    eprintln!(
        "{PROCESSES} processes, {KILLS} kills: {} executions for {} steps; {repeated} repeated, each cut off by a kill",
        executions.values().map(Vec::len).sum::<usize>(),
        RUNS * STEPS as usize
    );
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
