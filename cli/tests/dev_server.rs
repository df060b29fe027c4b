//! `durafn dev` and the `serve_app` example as two real processes: the app
//! syncs, an event starts the seed's import loop, and the run completes
//! with one call request per step, each page fetched once. The client
//! subcommands are exercised against the same server.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{free_port, start_seed_app, Proc};

fn durafn() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_durafn"))
}

fn client(url: &str, args: &[&str]) -> Output {
    Command::new(durafn())
        .args(args)
        .env("DURAFN_URL", url)
        .output()
        .expect("run the client")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn durafn_dev_drives_the_served_seed_app_one_request_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let (dev_port, app_port) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{dev_port}");
    let app_url = format!("http://127.0.0.1:{app_port}/api/durafn");

    let app = start_seed_app(app_port, &url);
    let dev = Proc::start(
        Command::new(durafn())
            .args(["dev", "--port", &dev_port.to_string(), "--db"])
            .arg(dir.path().join("dev.db"))
            .args(["-u", &app_url])
            .env_remove("INNGEST_SIGNING_KEY"),
    );
    assert!(
        dev.wait_for(&format!("synced {app_url}"), Duration::from_secs(30)),
        "{}",
        dev.output()
    );

    // Send the seed's event with the client.
    let sent = client(
        &url,
        &[
            "send",
            "shopify/import.requested",
            "--data",
            r#"{"store_id": "s1"}"#,
        ],
    );
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    // The run completes.
    let mut run_id = String::new();
    let done = wait_until(Duration::from_secs(30), || {
        let runs = stdout(&client(
            &url,
            &["runs", "--function", "seed-app-shopify-product-import"],
        ));
        match runs.lines().nth(1) {
            Some(line) if line.contains("completed") => {
                run_id = line.split_whitespace().next().unwrap().to_string();
                true
            }
            _ => false,
        }
    });
    assert!(done, "dev:\n{}\napp:\n{}", dev.output(), app.output());

    // Its trace: seven pages, by readable name.
    let shown = stdout(&client(&url, &["run", &run_id]));
    assert!(shown.contains("output    320"), "{shown}");
    for page in 0..7 {
        assert!(
            shown.contains(&format!("fetch-products[{page}]")),
            "{shown}"
        );
    }
    // One call request per step: each page fetched exactly once although the
    // function was re-entered from the top for every step.
    assert_eq!(app.count("shop: fetch #"), 7, "{}", app.output());
    assert_eq!(
        app.count("imported 320 products"),
        1,
        "ctx.log prints once: {}",
        app.output()
    );

    // The simple function: `hello` once, then a, b, c once each.
    client(&url, &["send", "demo/simple"]);
    assert!(app.wait_for("c", Duration::from_secs(10)));
    assert!(wait_until(Duration::from_secs(10), || stdout(&client(
        &url,
        &[
            "runs",
            "--function",
            "seed-app-simple-function",
            "--status",
            "completed"
        ]
    ))
    .lines()
    .count()
        == 2));
    for line in ["hello", "a", "b", "c"] {
        assert_eq!(app.count_lines(line), 1, "`{line}` once:\n{}", app.output());
    }

    // Client errors are clear.
    let missing = client(&url, &["run", "no-such-run"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run `no-such-run`"));
    let bad = client(&url, &["send", "x", "--data", "{oops"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--data is not valid JSON"));
    let cancel = client(&url, &["cancel", &run_id]);
    assert!(String::from_utf8_lossy(&cancel.stderr).contains("already ended"));

    // Replay the import from its sixth page: pages 0 to 4 come from the
    // journal, 5 and 6 are fetched again. `run --watch` follows it to its end.
    let replayed = client(&url, &["replay", &run_id, "--from", "fetch-products[5]"]);
    let said = stdout(&replayed);
    assert!(
        said.starts_with(&format!("replay of {run_id}: ")),
        "{said}{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let new_run = said.trim().rsplit(' ').next().unwrap().to_string();
    let watched = stdout(&client(&url, &["run", &new_run, "--watch"]));
    assert!(watched.contains("output    320"), "{watched}");
    assert!(
        watched.contains(&format!("made by a replay of {run_id} from ")),
        "{watched}"
    );
    assert_eq!(app.count("shop: fetch #"), 9, "{}", app.output());
    let old = stdout(&client(&url, &["run", &run_id]));
    assert!(old.contains(&format!("replay: made {new_run}")), "{old}");
    // A step the run does not have.
    let bad = client(&url, &["replay", &run_id, "--from", "fetch-products[9]"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no journaled step `fetch-products[9]`"));
    // A rerun fetches every page again.
    let rerun = stdout(&client(&url, &["rerun", &run_id]));
    let rerun_id = rerun.trim().rsplit(' ').next().unwrap().to_string();
    let watched = stdout(&client(&url, &["run", &rerun_id, "--watch"]));
    assert!(watched.contains("output    320"), "{watched}");
    assert_eq!(app.count("shop: fetch #"), 16, "{}", app.output());
    // Bulk: the import's runs have all ended, so a bulk cancel skips each.
    let bulk = stdout(&client(
        &url,
        &[
            "cancel",
            "--function",
            "seed-app-shopify-product-import",
            "--since",
            "1h",
        ],
    ));
    assert!(
        bulk.contains("cancel: 0 done, 3 skipped, 3 matched"),
        "{bulk}"
    );
}
