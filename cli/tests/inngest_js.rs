//! Functions written with the official Inngest TypeScript SDK (`inngest` 4.x
//! from npm), served by its Node handler and pointed at `durafn dev` with
//! `INNGEST_DEV`, sync and run to completion: a `step.run` loop,
//! `step.sleep`, parallel `Promise.all` steps, a retried failure,
//! `step.waitForEvent` resumed by a matching event, `step.invoke`, and a
//! function with `concurrency: { limit: 2 }` that never has three steps
//! running at once, one with `debounce` that runs once for a burst of ten
//! events, with the last one, and one with `batchEvents` whose runs
//! receive their batches.
//!
//! Needs Node.js and npm; the test installs the package itself. Without
//! Node it is skipped with a loud message, except under CI (`CI` set),
//! where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, start_dev, wait_ended, wait_sleeping, Proc};
use serde_json::{json, Value};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("inngest-js")
}

#[test]
fn official_inngest_js_functions_run_under_durafn_dev() {
    if !have("node") || !have("npm") {
        let msg = "SKIPPED: the Inngest JS interop test needs Node.js and npm (apt-get install nodejs npm)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI must run it");
        }
        eprintln!("\n*** {msg} ***\n");
        return;
    }
    let dir = app_dir();
    if !dir.join("node_modules").join("inngest").exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("run npm install");
        assert!(status.success(), "npm install failed in {}", dir.display());
    }

    let db = tempfile::tempdir().unwrap();
    let (dev_port, app_port) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{dev_port}");
    let app_url = format!("http://127.0.0.1:{app_port}/api/inngest");
    let app = Proc::start(
        Command::new("node")
            .arg("app.mjs")
            .current_dir(&dir)
            .env("PORT", app_port.to_string())
            .env("INNGEST_DEV", &url)
            .env_remove("INNGEST_SIGNING_KEY"),
    );
    assert!(
        app.wait_for("js: serving", Duration::from_secs(60)),
        "{}",
        app.output()
    );
    let dev = start_dev(dev_port, db.path(), &app_url);
    assert!(
        dev.wait_for(&format!("synced {app_url}"), Duration::from_secs(60)),
        "dev:\n{}\napp:\n{}",
        dev.output(),
        app.output()
    );

    let send = |name: &str, data: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_durafn"))
            .args(["send", name, "--data", data])
            .env("DURAFN_URL", &url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for name in [
        "js/loop",
        "js/sleep",
        "js/parallel",
        "js/retry",
        "js/parent",
    ] {
        send(name, "{}");
    }
    for _ in 0..6 {
        send("js/limited", "{}");
    }
    for n in 0..10 {
        send("js/debounced", &format!(r#"{{"n": {n}}}"#));
    }
    for n in 0..7 {
        send("js/batched", &format!(r#"{{"n": {n}}}"#));
    }
    send("js/approval.requested", r#"{"request_id": "r1"}"#);
    // The approval waits; a grant for another request does not match, this one does.
    let context = || format!("dev:\n{}\napp:\n{}", dev.output(), app.output());
    wait_sleeping(&url, "js-app-approval", context);
    send(
        "js/approval.granted",
        r#"{"request_id": "other", "by": "bob"}"#,
    );
    send(
        "js/approval.granted",
        r#"{"request_id": "r1", "by": "ann"}"#,
    );

    let runs = wait_ended(&url, 16, context);
    let by_fn = |id: &str| {
        runs.iter()
            .find(|r| r["fn_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no run of {id}: {runs:?}"))
    };
    eprintln!(
        "runs under durafn dev: {}",
        serde_json::to_string_pretty(&runs).unwrap()
    );
    for r in &runs {
        assert_eq!(
            r["status"],
            "completed",
            "{r}\ndev:\n{}\napp:\n{}",
            dev.output(),
            app.output()
        );
    }
    assert_eq!(by_fn("js-app-loop")["output"], 10);
    for i in 0..4 {
        assert_eq!(
            app.count_lines(&format!("js: page {i}")),
            1,
            "page {i} ran once:\n{}",
            app.output()
        );
    }
    assert!(
        by_fn("js-app-sleeper")["output"].as_i64().unwrap() >= 1000,
        "the sleep lasted a second"
    );
    assert_eq!(by_fn("js-app-parallel")["output"], 6);
    assert_eq!(by_fn("js-app-retried")["output"], "recovered");
    assert_eq!(
        by_fn("js-app-debounced")["output"],
        9,
        "the burst's last event"
    );
    let mut batches: Vec<Value> = runs
        .iter()
        .filter(|r| r["fn_id"] == "js-app-batched")
        .map(|r| r["output"].clone())
        .collect();
    batches.sort_by_key(|b| b.as_array().map_or(0, Vec::len));
    assert_eq!(
        batches,
        [json!([5, 6]), json!([0, 1, 2, 3, 4])],
        "a full batch of five, then the rest at the timeout"
    );
    let most = (1..=6)
        .filter(|n| app.count_lines(&format!("js: limited in flight {n}")) > 0)
        .max();
    assert_eq!(
        most,
        Some(2),
        "concurrency 2: at most two steps at once, and two did run together:\n{}",
        app.output()
    );
    assert_eq!(
        app.count_lines("js: flaky call 2"),
        1,
        "retried once:\n{}",
        app.output()
    );
}
