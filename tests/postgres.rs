//! What the PostgreSQL store adds to the conformance suite: errors a user
//! can act on, a schema from a newer durafn refused, and, with two engines
//! on one database, timers that fire once and cron ticks that run once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use durafn::prelude::*;
use durafn::store::{PgOptions, PgStore, RunFilter, RunStatus, Store};
use durafn::Engine;
use serde_json::json;

async fn connect_err(url: &str, options: PgOptions) -> String {
    match PgStore::connect_with(url, options).await {
        Ok(_) => panic!("connecting to {url} succeeded"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn connection_errors_say_what_to_do() {
    let Some(url) = common::pg_url().await else {
        return;
    };
    let quick = || PgOptions {
        connect_timeout: Duration::from_millis(600),
        ..PgOptions::default()
    };
    // A database that does not exist.
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    let missing = connect_err(&format!("{base}/durafn_no_such_database"), quick()).await;
    assert!(missing.contains("does not exist"), "{missing}");
    assert!(missing.contains("create the database"), "{missing}");
    // A role that does not exist.
    let nobody = connect_err(
        "postgres://durafn_no_such_role@127.0.0.1:5432/test",
        quick(),
    )
    .await;
    assert!(nobody.contains("durafn_no_such_role"), "{nobody}");
    // No server at all: retried until the timeout, then a clear error.
    let t = std::time::Instant::now();
    let down = connect_err("postgres://postgres@127.0.0.1:9/test", quick()).await;
    assert!(t.elapsed() >= Duration::from_millis(500), "it was retried");
    assert!(down.contains("postgres"), "{down}");
    // Not a URL.
    let bad = connect_err("mysql://x", quick()).await;
    assert!(bad.contains("is not a PostgreSQL URL"), "{bad}");
    // TLS required: refused at once with what to do, not retried as if the
    // server were down.
    let t = std::time::Instant::now();
    let sep = if url.contains('?') { '&' } else { '?' };
    let tls = connect_err(&format!("{url}{sep}sslmode=require"), quick()).await;
    assert!(tls.contains("sslmode=require"), "{tls}");
    assert!(tls.contains("sslmode=disable"), "{tls}");
    assert!(t.elapsed() < Duration::from_millis(500), "not retried");
}

#[tokio::test]
async fn a_schema_from_a_newer_durafn_is_refused() {
    let Some((_store, guard)) = common::pg_store("newer").await else {
        return;
    };
    let (client, conn) = tokio_postgres::connect(&guard.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "UPDATE \"{}\".schema_version SET version = 99",
            guard.schema
        ))
        .await
        .unwrap();
    let options = PgOptions {
        schema: guard.schema.clone(),
        ..PgOptions::default()
    };
    let err = connect_err(&guard.url, options).await;
    assert!(err.contains("schema version 99"), "{err}");
    assert!(err.contains("upgrade durafn"), "{err}");
}

#[durable_fn(id = "nap-then-work", event = "test/nap-then-work")]
async fn nap_then_work(_ctx: Ctx, _event: Event) -> Result<u32> {
    sleep!("nap", Duration::from_millis(300))?;
    let v = step!("work", { 1u32 })?;
    Ok(v)
}

#[durable_fn(id = "pg-every-second", cron = "* * * * * *")]
async fn pg_every_second(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

/// Two engines (two processes, to the database) on one schema.
async fn two_engines(test: &str) -> Option<(Engine, Engine, common::DropSchema)> {
    let url = common::pg_url().await?;
    let schema = common::fresh_schema(test);
    let guard = common::DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let engine = || async {
        let store = PgStore::connect_with(
            &url,
            PgOptions {
                schema: schema.clone(),
                ..PgOptions::default()
            },
        )
        .await
        .unwrap();
        Engine::builder()
            .store(Arc::new(store) as Arc<dyn Store>)
            .register(nap_then_work)
            .register(pg_every_second)
            .build()
            .await
            .unwrap()
    };
    Some((engine().await, engine().await, guard))
}

#[tokio::test(flavor = "multi_thread")]
async fn timers_fire_once_and_cron_ticks_run_once_across_engines() {
    let Some((first, second, _guard)) = two_engines("timers").await else {
        return;
    };
    let events: Vec<serde_json::Value> = (0..40)
        .map(|_| json!({"name": "test/nap-then-work"}))
        .collect();
    let sent = first.send_values(events).await.unwrap();
    for id in &sent.runs {
        let run = second
            .wait_for_run(id, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(run.run.status, RunStatus::Completed);
        let ids: Vec<&str> = run.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["nap", "work"], "the sleep's end journaled once");
    }
    // Both engines schedule the cron; each tick runs once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ticks = first
        .runs(RunFilter {
            function: Some("pg-every-second".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(ticks.len() >= 2, "{} ticks", ticks.len());
    let mut events: Vec<&str> = ticks.iter().map(|r| r.event_id.as_str()).collect();
    events.sort_unstable();
    let n = events.len();
    events.dedup();
    assert_eq!(events.len(), n, "a tick started two runs: {ticks:?}");
    first.close().await;
    second.close().await;
}

/// A wait that looks back and the event it waits for, stored at the same
/// moment by two connections: whichever commits first, the wait takes the
/// event (without the lock between them, each could miss the other's row).
#[tokio::test(flavor = "multi_thread")]
async fn a_wait_that_looks_back_and_its_event_never_miss_each_other() {
    use durafn::store::{ClaimRequest, IngestBatch, NewEvent, NewRun, PendingStep, Suspension};
    let Some((store, _guard)) = common::pg_store("pg_lookback_race").await else {
        return;
    };
    const T: i64 = 1_700_000_000_000;
    let event = |id: &str, name: &str, i: usize, runs: Vec<NewRun>| NewEvent {
        id: id.into(),
        name: name.into(),
        ts: T,
        payload: json!({"id": id, "name": name, "ts": T, "data": {"i": i}}),
        runs,
        cancels: Vec::new(),
    };
    let claim = |store: Arc<dyn Store>| async move {
        store
            .claim(ClaimRequest {
                owner: "test".into(),
                now_ms: T,
                lease_now_ms: T,
                lease_ms: 60_000,
                limit: 10,
                functions: vec!["f".into()],
                unknown_before_ms: 0,
            })
            .await
            .unwrap()
    };
    for i in 0..40 {
        let run = format!("r{i}");
        let start = event(
            &format!("start{i}"),
            "t/start",
            i,
            vec![NewRun {
                id: run.clone(),
                fn_id: "f".into(),
                parent: None,
                flow: Default::default(),
                version: None,
            }],
        );
        store
            .ingest(IngestBatch {
                now_ms: T,
                events: vec![start],
            })
            .await
            .unwrap();
        let c = claim(store.clone()).await.remove(0);
        let wait = Suspension::Wait {
            step: PendingStep {
                step: "paid".into(),
                name: None,
            },
            event: "t/paid".into(),
            expr: Some("event.data.i == async.data.i".into()),
            until_ms: T + 3_600_000,
            since_ms: Some(T - 60_000),
            seen: Vec::new(),
        };
        let paid = IngestBatch {
            now_ms: T,
            events: vec![event(&format!("paid{i}"), "t/paid", i, Vec::new())],
        };
        let (a, b) = tokio::join!(store.suspend(&c.lease, wait, T), store.ingest(paid));
        a.unwrap();
        b.unwrap();
        let due = claim(store.clone()).await;
        assert_eq!(
            due.iter().map(|c| c.run.id.as_str()).collect::<Vec<_>>(),
            [run.as_str()],
            "round {i}: the wait took its event"
        );
        store
            .finish(
                &due[0].lease,
                durafn::store::Finish::Completed { output: json!(i) },
                T,
            )
            .await
            .unwrap();
    }
}
