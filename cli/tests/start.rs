//! `durafn start`, the production server, as an operator runs it: it
//! refuses to start without keys, lets no request in without one, drives
//! an app that verifies its signatures (the seed's functions served over
//! HTTP, outside dev mode), and stops cleanly on SIGTERM.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{free_port, Proc};

const SIGNING_KEY: &str =
    "signkey-prod-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// `durafn` with none of the keys' variables of the test's environment.
fn durafn() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_durafn"));
    for var in [
        "DURAFN_EVENT_KEYS",
        "DURAFN_EVENT_KEY",
        "DURAFN_SIGNING_KEY",
        "DURAFN_SIGNING_KEY_FALLBACK",
        "DURAFN_API_TOKEN",
        "DURAFN_HOST",
        "DURAFN_PORT",
        "DURAFN_DB",
        "DURAFN_APP_HOSTS",
        "INNGEST_EVENT_KEY",
        "INNGEST_SIGNING_KEY",
        "INNGEST_SIGNING_KEY_FALLBACK",
        "INNGEST_DEV",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn start_refuses_to_run_without_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = durafn()
        .args(["start", "--port", "0", "--db"])
        .arg(dir.path().join("d.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "INNGEST_EVENT_KEY",
        "INNGEST_SIGNING_KEY",
        "DURAFN_API_TOKEN",
    ] {
        assert!(err.contains(want), "{err}");
    }
    let out = durafn()
        .args([
            "start",
            "--port",
            "0",
            "--event-key",
            "ek",
            "--api-token",
            "t",
        ])
        .env("INNGEST_SIGNING_KEY", "not-a-key")
        .arg("--db")
        .arg(dir.path().join("d.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("signkey-<env>-<hex>"), "{err}");
}

#[test]
fn start_serves_only_keyed_requests_signs_its_calls_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let app_port = free_port();
    let app_url = format!("http://127.0.0.1:{app_port}/api/durafn");
    let mut server = Proc::start(
        durafn()
            .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--db")
            .arg(dir.path().join("prod.db"))
            .args(["-u", &app_url])
            .env("DURAFN_EVENT_KEYS", "ek-1,ek-2")
            .env("INNGEST_SIGNING_KEY", SIGNING_KEY)
            .env("DURAFN_API_TOKEN", "secret-token"),
    );
    assert!(
        server.wait_for("durafn start: engine on", Duration::from_secs(30)),
        "{}",
        server.output()
    );
    // The seed's app outside dev mode: it verifies the server's signatures
    // and syncs with the hashed signing key.
    let mut exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_durafn"));
    exe.pop();
    let exe = exe.join("examples").join("serve_app");
    let app = Proc::start(
        Command::new(exe)
            .args(["--port", &app_port.to_string()])
            .env_remove("INNGEST_DEV")
            .env("INNGEST_BASE_URL", &url)
            .env("INNGEST_SIGNING_KEY", SIGNING_KEY),
    );
    let context = || format!("server:\n{}\napp:\n{}", server.output(), app.output());
    assert!(
        server.wait_for(&format!("synced {app_url}"), Duration::from_secs(60)),
        "{}",
        context()
    );

    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = durafn();
        c.args(args).env("DURAFN_URL", &url);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let send = [
        "send",
        "shopify/import.requested",
        "--data",
        r#"{"store_id": "s1"}"#,
    ];
    let refused = cli(&send, &[]);
    assert!(!refused.status.success(), "no event key");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("event key"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let sent = cli(&send, &[("INNGEST_EVENT_KEY", "ek-2")]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let no_token = cli(&["runs"], &[]);
    assert!(!no_token.status.success());
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("DURAFN_API_TOKEN"),
        "{}",
        String::from_utf8_lossy(&no_token.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli(&["runs", "--token", "secret-token"], &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("completed") {
            break;
        }
        assert!(!text.contains("failed"), "{text}\n{}", context());
        assert!(
            std::time::Instant::now() < deadline,
            "{text}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        app.count("shop: fetch #") >= 7,
        "seven pages over signed calls:\n{}",
        context()
    );
    assert_eq!(
        app.count("signature"),
        0,
        "no signature was refused:\n{}",
        context()
    );

    // A user's string cannot forge a log line or reach the terminal raw.
    let forged = cli(
        &["send", "x/y", "--id", "e1\nERROR forged line \u{1b}[2J"],
        &[("DURAFN_EVENT_KEY", "ek-1")],
    );
    assert!(forged.status.success());
    assert!(
        server.wait_for("forged", Duration::from_secs(10)),
        "{}",
        context()
    );
    for line in server.output().lines() {
        assert!(!line.starts_with("ERROR forged"), "{line}");
        assert!(!line.contains('\u{1b}'), "{line:?}");
    }
    let status = server.terminate(Duration::from_secs(30));
    let out = format!("server:\n{}\napp:\n{}", server.output(), app.output());
    let status = status.unwrap_or_else(|| panic!("still running after SIGTERM:\n{out}"));
    assert!(status.success(), "{status}\n{out}");
    assert!(server.output().contains("durafn start: stopped"), "{out}");
}

#[test]
fn port_zero_prints_the_port_bound() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Proc::start(
        durafn()
            .args(["dev", "-p", "0", "--db"])
            .arg(dir.path().join("dev.db")),
    );
    assert!(
        dev.wait_for("durafn dev: engine on", Duration::from_secs(30)),
        "{}",
        dev.output()
    );
    let out = dev.output();
    let port: u16 = out
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {out}"));
    assert_ne!(port, 0);
    let health = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(health.is_ok(), "{out}");
}

#[test]
fn idle_connections_past_the_descriptor_limit_do_not_lock_clients_out() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A process allowed 256 descriptors, 1,000 idle connections to it.
    let dev = Proc::start(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 256 && exec {} dev --port {port} --db {}",
                env!("CARGO_BIN_EXE_durafn"),
                dir.path().join("dev.db").display()
            ))
            .env("DURAFN_MAX_CONNECTIONS", "128")
            .env("DURAFN_HEADER_TIMEOUT", "1s"),
    );
    assert!(
        dev.wait_for("durafn dev: engine on", Duration::from_secs(30)),
        "{}",
        dev.output()
    );
    let idle: Vec<std::net::TcpStream> = (0..1000)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(idle.len() > 300, "opened {}", idle.len());
    let started = std::time::Instant::now();
    let out = durafn()
        .args(["runs"])
        .env("DURAFN_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dev.output()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered after {:?}",
        started.elapsed()
    );
    drop(idle);
}
