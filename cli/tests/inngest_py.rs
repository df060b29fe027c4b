//! A function written with the official Inngest Python SDK (`inngest` on
//! PyPI), served by its Flask handler and pointed at `durafn dev` with
//! `INNGEST_DEV`, syncs and runs: a `step.run` loop (each page once) and a
//! `step.sleep` that the SDK sends as "sleep until <date>".
//!
//! The test makes a virtualenv and installs `requirements.txt` itself.
//! Without Python 3 it is skipped loudly, except under CI, where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, run_list, start_dev, Proc};

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

    let sent = Command::new(env!("CARGO_BIN_EXE_durafn"))
        .args(["send", "py/loop"])
        .env("DURAFN_URL", &url)
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let run = loop {
        let list = run_list(&url, 50)["data"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(r) = list
            .iter()
            .find(|r| r["status"] == "completed" || r["status"] == "failed")
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish:\ndev:\n{}\napp:\n{}",
            dev.output(),
            app.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        run["status"],
        "completed",
        "{run}\ndev:\n{}\napp:\n{}",
        dev.output(),
        app.output()
    );
    assert_eq!(run["fn_id"], "py-app-loop");
    assert_eq!(run["output"], 6);
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
