//! The PostgreSQL table: fanout and seq100 with 1, 2 and 4 engine
//! processes on one database (each process a child of this binary), with
//! the commits and WAL flushes per step from `pg_stat_database` and
//! `pg_stat_wal`.
//!
//! The server is `DATABASE_URL`, else the local one; every measurement
//! uses a fresh schema, dropped after.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use durafn::prelude::*;
use durafn::store::{PgOptions, RunFilter, RunStatus};
use durafn::Engine;
use serde_json::json;

use crate::workloads::{chain, chain_limited};

fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn sql(url: &str) -> Option<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(client)
}

/// A child: one engine on the schema, until killed.
pub async fn engine_child(url: &str, schema: &str) {
    let engine = Engine::builder()
        .postgres_with(
            url,
            PgOptions {
                schema: schema.into(),
                ..PgOptions::default()
            },
        )
        .register(chain)
        .register(chain_limited)
        .build()
        .await
        .expect("engine");
    println!("ready");
    let _keep = engine;
    std::future::pending::<()>().await;
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_engines(n: usize, url: &str, schema: &str) -> Children {
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for _ in 0..n {
        let mut child = Command::new(&exe)
            .args(["--pg-engine", url, schema])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start an engine");
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "an engine did not start");
        children.push(child);
    }
    Children(children)
}

/// (commits, WAL syncs) so far, server-wide.
async fn counters(c: &tokio_postgres::Client) -> (i64, i64) {
    let commits: i64 = c
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let syncs: i64 = c
        .query_one("SELECT wal_sync FROM pg_stat_wal", &[])
        .await
        .unwrap()
        .get(0);
    (commits, syncs)
}

async fn completed(engine: &Engine) -> usize {
    engine
        .runs(RunFilter {
            status: Some(RunStatus::Completed),
            limit: Some(100_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

/// Print the table (or why it is skipped).
pub async fn table(smoke: bool) {
    let url = url();
    println!("## PostgreSQL (engine processes on one database; synchronous_commit as the server has it)\n");
    let Some(admin) = sql(&url).await else {
        println!("skipped: PostgreSQL at {url} is not reachable (set DATABASE_URL)\n");
        return;
    };
    let sync: String = admin
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    println!("synchronous_commit = {sync}\n");
    println!(
        "| processes | fanout: 200 runs × 10 steps | commits / step | WAL syncs / step | seq100 | 2,000 runs over 100 keys | the same, 10 per key |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let (runs, steps) = if smoke { (20, 3) } else { (200, 10) };
    for n in [1usize, 2, 4] {
        let schema = format!("durafn_bench_{}_{n}", std::process::id());
        let engines = spawn_engines(n, &url, &schema);
        let client = Engine::builder()
            .postgres_with(
                &url,
                PgOptions {
                    schema: schema.clone(),
                    pool_size: 4,
                    ..PgOptions::default()
                },
            )
            .register(chain)
            .register(chain_limited)
            .without_workers()
            .build()
            .await
            .expect("the client engine");
        // Fanout.
        let before = counters(&admin).await;
        let t = Instant::now();
        let events: Vec<serde_json::Value> = (0..runs)
            .map(|_| json!({"name": "bench/chain", "data": {"n": steps}}))
            .collect();
        client.send_values(events).await.unwrap();
        while completed(&client).await < runs {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        // Backends report their counters within about ten seconds of going
        // idle (PostgreSQL's cumulative statistics).
        if !smoke {
            tokio::time::sleep(Duration::from_secs(11)).await;
        }
        let after = counters(&admin).await;
        let total = (runs * steps) as f64;
        // seq100: the best of a few runs.
        let n_seq = if smoke { 10 } else { 100 };
        let mut best = Duration::MAX;
        for _ in 0..if smoke { 1 } else { 3 } {
            let t = Instant::now();
            let sent = client
                .send(Event::new("bench/chain", json!({"n": n_seq})))
                .await
                .unwrap();
            client
                .wait_for_end(&sent.runs[0], Duration::from_secs(120))
                .await
                .unwrap();
            best = best.min(t.elapsed());
        }
        // Fanout over keys, without and with a concurrency limit per key.
        let per_key = if smoke { 2 } else { 20 };
        let mut keyed = Vec::new();
        for name in ["bench/chain", "bench/chain-limited"] {
            let events: Vec<serde_json::Value> = (0..100 * per_key)
                .map(
                    |i| json!({"name": name, "data": {"n": steps, "key": format!("k{}", i % 100)}}),
                )
                .collect();
            let t = Instant::now();
            let done = completed(&client).await;
            client.send_values(events).await.unwrap();
            while completed(&client).await < done + 100 * per_key {
                // Listing thousands of runs is not free: look less often.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            keyed.push((100 * per_key * steps) as f64 / t.elapsed().as_secs_f64());
        }
        println!(
            "| {n} | {:.0} steps/s | {:.2} | {:.2} | {:.3} ms/step | {:.0} steps/s | {:.0} steps/s |",
            total / secs,
            (after.0 - before.0) as f64 / total,
            (after.1 - before.1) as f64 / total,
            best.as_secs_f64() * 1e3 / n_seq as f64,
            keyed[0],
            keyed[1]
        );
        drop(engines);
        client.close().await;
        let _ = admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
    println!();
}
