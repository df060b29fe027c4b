//! `durafn dev --db postgres://..` drives the served seed app with its runs
//! in PostgreSQL; a second `durafn dev` on the same database (another
//! port) shares the work and sees the same runs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, run_list, start_seed_app, Proc};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A fresh database on the test server, dropped with the guard; `None`
/// when the server is not reachable (a loud line; under CI a failure).
struct Database {
    admin_url: String,
    name: String,
}

impl Database {
    fn create() -> Option<Database> {
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("durafn_cli_{}_{:08x}", std::process::id(), rand_u32());
        let created = block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
        });
        match created {
            Ok(()) => Some(Database { admin_url, name }),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("PostgreSQL at {admin_url} is not usable ({e}), and CI must run this test")
            }
            Err(e) => {
                eprintln!("\n*** SKIPPED: PostgreSQL at {admin_url} is not usable ({e}) ***\n");
                None
            }
        }
    }

    fn url(&self) -> String {
        match self.admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{}", self.name),
            None => self.admin_url.clone(),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
        });
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ std::process::id().rotate_left(16)
}

#[test]
fn durafn_dev_on_postgres_drives_the_seed_app_and_shares_runs_with_a_second_process() {
    let Some(db) = Database::create() else {
        return;
    };
    let (dev_port, other_port, app_port) = (free_port(), free_port(), free_port());
    let url = format!("http://127.0.0.1:{dev_port}");
    let app_url = format!("http://127.0.0.1:{app_port}/api/durafn");
    let _app = start_seed_app(app_port, &url);
    let dev = |port: u16, sync: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_durafn"));
        cmd.args(["dev", "--port", &port.to_string()])
            .env("DATABASE_URL", db.url())
            .env_remove("INNGEST_SIGNING_KEY");
        if sync {
            cmd.args(["-u", &app_url]);
        }
        Proc::start(&mut cmd)
    };
    let first = dev(dev_port, true);
    assert!(
        first.wait_for(&format!("synced {app_url}"), Duration::from_secs(30)),
        "{}",
        first.output()
    );
    assert!(
        first.output().contains("engine on postgres://"),
        "{}",
        first.output()
    );
    let second = dev(other_port, false);
    assert!(
        second.wait_for("durafn dev:", Duration::from_secs(30)),
        "{}",
        second.output()
    );

    let events: Vec<serde_json::Value> = (0..20)
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
    // The second process knows the app from the database and sees the runs.
    let other = format!("http://127.0.0.1:{other_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = run_list(&other, 100);
        let runs = list["data"].as_array().cloned().unwrap_or_default();
        if runs.len() == 20 && runs.iter().all(|r| r["status"] == "completed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all runs completed: {runs:?}\n{}\n{}",
            first.output(),
            second.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let run_id = run_list(&url, 1)["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = Command::new(env!("CARGO_BIN_EXE_durafn"))
        .args(["run", &run_id])
        .env("DURAFN_URL", &other)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("output    320"), "{shown}");
    assert!(shown.contains("fetch-products[6]"), "{shown}");
    drop(first);
    drop(second);
}
