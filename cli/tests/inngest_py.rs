//! Functions written with the official Inngest Python SDK (`inngest` on
//! PyPI), served by its Flask handler and pointed at `durafn dev` with
//! `INNGEST_DEV`, sync and run: a `step.run` loop (each page once), a
//! `step.sleep` that the SDK sends as "sleep until <date>",
//! `step.wait_for_event` resumed by the matching event only, `step.invoke`
//! of another function, parallel steps (`ctx.group.parallel`), each run
//! once, a `RetryAfterError` retried no sooner than it asked, and the
//! options the SDK syncs: `on_failure`, `cancel`, `singleton` (skip) and
//! `debounce`.
//!
//! The test makes a virtualenv and installs `requirements.txt` itself.
//! Without Python 3 it is skipped loudly, except under CI, where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, start_dev, wait_ended, wait_sleeping, Proc};

fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("inngest-py")
}

#[test]
fn official_inngest_python_functions_run_under_durafn_dev() {
    let python_ok = Command::new("python3")
        .args(["-m", "venv", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        let msg = "SKIPPED: the Inngest Python interop test needs python3 with venv";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI must run it");
        }
        eprintln!("\n*** {msg} ***\n");
        return;
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inngest-py-venv");
    let python = venv.join("bin").join("python");
    if !python.exists()
        || Command::new(&python)
            .args(["-c", "import inngest, flask"])
            .status()
            .map_or(true, |s| !s.success())
    {
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .expect("python3 -m venv")
            .success();
        assert!(ok, "could not make a virtualenv at {}", venv.display());
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(app_dir().join("requirements.txt"))
            .status()
            .expect("pip install")
            .success();
        assert!(ok, "pip install failed");
    }

    let db = tempfile::tempdir().unwrap();
    let (dev_port, app_port) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{dev_port}");
    let app_url = format!("http://127.0.0.1:{app_port}/api/inngest");
    let app = Proc::start(
        Command::new(&python)
            .arg("app.py")
            .current_dir(app_dir())
            .env("PORT", app_port.to_string())
            .env("INNGEST_DEV", &url)
            .env_remove("INNGEST_SIGNING_KEY"),
    );
    assert!(
        app.wait_for("py: serving", Duration::from_secs(60)),
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
        let sent = Command::new(env!("CARGO_BIN_EXE_durafn"))
            .args(["send", name, "--data", data])
            .env("DURAFN_URL", &url)
            .output()
            .unwrap();
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
    };
    let started = Instant::now();
    for name in [
        "py/loop",
        "py/parent",
        "py/fanout",
        "py/patient",
        "py/race",
        "py/gather",
    ] {
        send(name, "{}");
    }
    send("py/approval.requested", r#"{"request_id": "r1"}"#);
    // The approval waits; a grant for another request does not match.
    let context = || format!("dev:\n{}\napp:\n{}", dev.output(), app.output());
    wait_sleeping(&url, "py-app-approval", context);
    send(
        "py/approval.granted",
        r#"{"request_id": "other", "by": "bob"}"#,
    );
    send(
        "py/approval.granted",
        r#"{"request_id": "r1", "by": "ann"}"#,
    );
    // Options synced by the SDK.
    send("py/doomed", "{}");
    send("py/cancellable", r#"{"id": 1}"#);
    send("py/only-one", r#"{"account": "a", "n": 1}"#);
    send("py/only-one", r#"{"account": "a", "n": 2}"#);
    for n in 1..=3 {
        send("py/settled", &format!(r#"{{"n": {n}}}"#));
    }
    wait_sleeping(&url, "py-app-cancellable", context);
    send("py/stop", r#"{"id": 2}"#);
    send("py/stop", r#"{"id": 1}"#);
    // loop, approval, parent, its child, fanout, patient, race, gather,
    // its child; doomed, its failure handler, cancellable, only-one twice,
    // settled once.
    let runs = wait_ended(&url, 15, context);
    let status_of = |id: &str| -> Vec<String> {
        runs.iter()
            .filter(|r| r["fn_id"] == id)
            .map(|r| r["status"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(status_of("py-app-doomed"), ["failed"], "{runs:?}");
    assert_eq!(status_of("py-app-cancellable"), ["cancelled"], "{runs:?}");
    let mut only_one = status_of("py-app-only-one");
    only_one.sort();
    assert_eq!(only_one, ["completed", "skipped"], "{runs:?}");
    assert_eq!(
        app.count_lines("py: on_failure saw ValueError: out of stock"),
        1,
        "{}",
        app.output()
    );
    let runs: Vec<_> = runs
        .into_iter()
        .filter(|r| {
            !["py-app-doomed", "py-app-cancellable"]
                .contains(&r["fn_id"].as_str().unwrap_or_default())
                && r["status"] != "skipped"
        })
        .collect();
    for r in &runs {
        assert_eq!(
            r["status"],
            "completed",
            "{r}\ndev:\n{}\napp:\n{}",
            dev.output(),
            app.output()
        );
    }
    let by_fn = |id: &str| {
        runs.iter()
            .find(|r| r["fn_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no run of {id}: {runs:?}"))
    };
    assert_eq!(by_fn("py-app-loop")["output"], 6);
    assert_eq!(by_fn("py-app-approval")["output"], "approved by ann");
    let mut children: Vec<i64> = runs
        .iter()
        .filter(|r| r["fn_id"] == "py-app-child")
        .filter_map(|r| r["output"].as_i64())
        .collect();
    children.sort();
    assert_eq!(children, [9, 49], "parent's and gather's children");
    assert_eq!(by_fn("py-app-parent")["output"], 50);
    assert_eq!(by_fn("py-app-fanout")["output"], 60);
    assert_eq!(by_fn("py-app-patient")["output"], "done");
    assert_eq!(by_fn("py-app-gather")["output"], 12);
    // Planned steps run side by side: in race mode the fast branch's
    // second step does not wait for the slow branch's first.
    let out = app.output();
    let order: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("py: race "))
        .collect();
    assert_eq!(order, ["a.1", "a.2", "b.1", "b.2"], "{out}");
    // The group with an invoke: the plan, two steps, then (once the child
    // ended) the step after it, then the return: five calls, as Inngest's
    // executor makes them.
    assert_eq!(app.count_lines("py: gather called"), 5, "{out}");
    assert_eq!(by_fn("py-app-only-one")["output"], "ran for 1");
    assert_eq!(
        by_fn("py-app-settled")["output"],
        3,
        "the last of the burst"
    );
    let at = |attempt: u32| -> f64 {
        let out = app.output();
        let line = out
            .lines()
            .find(|l| {
                l.trim()
                    .starts_with(&format!("py: patient attempt {attempt} at "))
            })
            .unwrap_or_else(|| panic!("no attempt {attempt}:\n{out}"));
        line.trim().rsplit(' ').next().unwrap().parse().unwrap()
    };
    let gap = at(1) - at(0);
    assert!(
        (3.5..30.0).contains(&gap),
        "the retry came {gap:.2} s after the RetryAfterError of 4 s"
    );
    for i in 1..=3 {
        assert_eq!(
            app.count_lines(&format!("py: part {i}")),
            1,
            "part {i} ran once:\n{}",
            app.output()
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the sleep lasted about a second"
    );
    for i in 0..3 {
        assert_eq!(
            app.count_lines(&format!("py: page {i}")),
            1,
            "page {i} ran once:\n{}",
            app.output()
        );
    }
}
