//! Helpers shared by the tests that run `durafn` and apps as processes.

#![allow(dead_code)] // not every test binary uses every helper

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process whose output lines are collected; killed on drop.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn start(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the process");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Proc { child, lines }
    }

    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Lines that are exactly `line` (trimmed).
    pub fn count_lines(&self, line: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.trim() == line)
            .count()
    }

    /// Lines that contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Proc {
    /// Kill the process with SIGKILL and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM and wait up to `timeout` for the process to exit: its
    /// exit status, or `None` if it is still running.
    #[allow(dead_code)]
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The engine's run API (`GET /v1/runs`), as JSON; `Null` while unreachable.
/// Wait until a run of `fn_id` sleeps (a sleep, a wait), or panic with
/// `context()` (the processes' output) after a minute.
#[allow(dead_code)]
pub fn wait_sleeping(url: &str, fn_id: &str, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run_list(url, 50)["data"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["fn_id"] == fn_id && r["status"] == "sleeping")
    {
        assert!(
            Instant::now() < deadline,
            "no run of {fn_id} slept:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until there are `n` runs and every one ended; answers them, or
/// panics with `context()` after a minute.
#[allow(dead_code)]
pub fn wait_ended(url: &str, n: usize, context: impl Fn() -> String) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = run_list(url, 50)["data"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if list.len() == n
            && list.iter().all(|r| {
                ["completed", "failed", "cancelled", "skipped"]
                    .contains(&r["status"].as_str().unwrap_or_default())
            })
        {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "the runs did not finish: {list:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run_list(url: &str, limit: usize) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match reqwest::get(format!("{url}/v1/runs?limit={limit}")).await {
            Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    })
}

/// `durafn dev` on `port` with a fresh database, syncing `app_url`.
pub fn start_dev(port: u16, db: &std::path::Path, app_url: &str) -> Proc {
    Proc::start(
        Command::new(env!("CARGO_BIN_EXE_durafn"))
            .args(["dev", "--port", &port.to_string(), "--db"])
            .arg(db.join("dev.db"))
            .args(["-u", app_url])
            .env_remove("INNGEST_SIGNING_KEY"),
    )
}

/// The `serve_app` example (built beside the binaries by `cargo test`) on
/// `port`, pointed at the executor `dev_url`, once it serves.
pub fn start_seed_app(port: u16, dev_url: &str) -> Proc {
    let mut exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_durafn"));
    exe.pop();
    let exe = exe
        .join("examples")
        .join(format!("serve_app{}", std::env::consts::EXE_SUFFIX));
    assert!(exe.exists(), "build the example first: {}", exe.display());
    let app = Proc::start(
        Command::new(exe)
            .args(["--port", &port.to_string()])
            .env("INNGEST_DEV", dev_url)
            .env_remove("INNGEST_SIGNING_KEY"),
    );
    assert!(
        app.wait_for("serving", Duration::from_secs(30)),
        "{}",
        app.output()
    );
    app
}
