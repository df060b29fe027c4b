//! `durafn dev` killed with SIGKILL while runs of an app are queued comes
//! back knowing the app: registrations are stored, so no run fails with
//! `UnknownFunction` while the app has not synced again.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, run_list, start_dev, start_seed_app, Proc};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn queued_runs_of_an_app_survive_a_kill_9_of_durafn_dev_before_the_app_syncs_again() {
    let dir = tempfile::tempdir().unwrap();
    let (dev_port, app_port) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{dev_port}");
    let app_url = format!("http://127.0.0.1:{app_port}/api/durafn");
    let _app = start_seed_app(app_port, &url);
    let mut dev = start_dev(dev_port, dir.path(), &app_url);
    assert!(
        dev.wait_for(&format!("synced {app_url}"), Duration::from_secs(30)),
        "{}",
        dev.output()
    );

    // 100 imports, and at once kill -9.
    let events: Vec<serde_json::Value> = (0..100)
        .map(|i| serde_json::json!({"name": "shopify/import.requested", "data": {"store_id": format!("s{i}")}}))
        .collect();
    let status = block_on(async {
        reqwest::Client::new()
            .post(format!("{url}/e/key"))
            .json(&events)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success());
    dev.kill();
    let db = dir.path().join("dev.db");
    let unfinished: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM runs WHERE status NOT IN ('completed', 'failed', 'cancelled')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(unfinished > 0, "the kill must leave runs to finish");

    // Back, without syncing the app; the app syncs again 3 s later.
    let dev = Proc::start(
        Command::new(env!("CARGO_BIN_EXE_durafn"))
            .args(["dev", "--port", &dev_port.to_string(), "--db"])
            .arg(&db)
            .env_remove("INNGEST_SIGNING_KEY"),
    );
    assert!(
        dev.wait_for("durafn dev:", Duration::from_secs(30)),
        "{}",
        dev.output()
    );
    std::thread::sleep(Duration::from_secs(3));
    let synced = block_on(async {
        reqwest::Client::new()
            .put(&app_url)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(synced.is_success(), "the app synced again");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = run_list(&url, 200);
        let runs = list["data"].as_array().cloned().unwrap_or_default();
        let failed: Vec<_> = runs.iter().filter(|r| r["status"] == "failed").collect();
        assert!(
            failed.is_empty(),
            "{} runs failed, the first with {}",
            failed.len(),
            failed[0]["error"]
        );
        if runs.len() == 100 && runs.iter().all(|r| r["status"] == "completed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all runs finished: {} of {}\n{}",
            runs.iter().filter(|r| r["status"] == "completed").count(),
            runs.len(),
            dev.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{unfinished} runs were unfinished at the kill; all 100 completed");
}
