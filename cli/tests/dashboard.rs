//! The dashboard of `durafn dev`, driven in a real browser: Debian's
//! Chromium, headless, through ChromeDriver (WebDriver). `durafn dev` and
//! the `serve_app` example run as processes; the test sends events from
//! the dashboard's form, watches a run appear and complete in the live
//! list, finds the seven `fetch-products[i]` steps on its timeline, cancels
//! a sleeping run and replays a failed run from its failed step. The
//! screenshots are saved in `dashboard-shots/` under the test's output
//! folder (`target/tmp`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, start_seed_app, Proc};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

fn found(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Wait until the element at `css` holds `needle`, reading it again as the
/// page changes (it reloads itself, or updates in place).
async fn wait_text(c: &Client, css: &str, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if t.contains(needle) {
                    return t;
                }
                last = t;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("`{css}` never showed `{needle}`; last: {last:?}");
}

async fn click(c: &Client, at: Locator<'_>) {
    c.find(at).await.unwrap().click().await.unwrap();
}

async fn shot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("save the screenshot");
}

/// Fill the event form and send it; answers the page it lands on.
async fn send_from_form(c: &Client, url: &str, name: &str, data: &str) -> String {
    c.goto(&format!("{url}/events")).await.unwrap();
    c.find(Locator::Css("#event-name"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    let area = c.find(Locator::Css("#event-data")).await.unwrap();
    area.clear().await.unwrap();
    area.send_keys(data).await.unwrap();
    click(c, Locator::Css("#send-event")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let at = c.current_url().await.unwrap().to_string();
        if at.contains("/runs/") || Instant::now() > deadline {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn run_id_of(page: &str) -> String {
    page.rsplit('/').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let (Some(chromium), Some(driver)) = (
        found(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]),
        found(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]),
    ) else {
        let msg = "SKIPPED: the dashboard test needs Chromium and ChromeDriver (apt-get install chromium chromium-driver)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI must run it");
        }
        eprintln!("\n*** {msg} ***\n");
        return;
    };
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-shots");
    std::fs::create_dir_all(&out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (dev_port, app_port, wd_port) = (free_port(), free_port(), free_port());
    let url = format!("http://127.0.0.1:{dev_port}");
    let app_url = format!("http://127.0.0.1:{app_port}/api/durafn");
    let app = start_seed_app(app_port, &url);
    let dev = Proc::start(
        Command::new(env!("CARGO_BIN_EXE_durafn"))
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
    let wd = Proc::start(Command::new(driver).arg(format!("--port={wd_port}")));
    assert!(
        wd.wait_for("started successfully", Duration::from_secs(30)),
        "{}",
        wd.output()
    );
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{wd_port}"))
        .await
        .expect("a browser session");
    let t = Duration::from_secs(30);

    // Functions: the seed's import and its loop.
    c.goto(&format!("{url}/functions/seed-app-shopify-product-import"))
        .await
        .unwrap();
    wait_text(&c, "main", "fetch-products[i]", t).await;
    wait_text(&c, "main", "loop: one step per iteration", t).await;
    shot(&c, &out, "1-function").await;

    // Send the import's event from the form; watch it appear and complete
    // in the live list (no reload: the list updates itself).
    let landed = send_from_form(
        &c,
        &url,
        "shopify/import.requested",
        r#"{"store_id": "s1"}"#,
    )
    .await;
    let import = run_id_of(&landed);
    c.goto(&format!("{url}/runs")).await.unwrap();
    let listed = wait_text(&c, "#runs", &import, t).await;
    assert!(
        listed.contains("seed-app-shopify-product-import"),
        "{listed}"
    );
    let deadline = Instant::now() + t;
    loop {
        let text = c
            .find(Locator::Css("#runs"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = text
            .lines()
            .find(|l| l.contains(&import))
            .unwrap_or("")
            .to_string();
        if line.contains("completed") {
            break;
        }
        assert!(Instant::now() < deadline, "the run never completed: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shot(&c, &out, "2-runs").await;

    // Its timeline: seven pages, each a step.
    click(&c, Locator::LinkText(&import)).await;
    wait_text(&c, "h1", "completed", t).await;
    let steps = c.find_all(Locator::Css("tr.step")).await.unwrap();
    let mut names = Vec::new();
    for s in &steps {
        names.push(s.attr("data-step").await.unwrap().unwrap_or_default());
    }
    let pages: Vec<String> = (0..7).map(|i| format!("fetch-products[{i}]")).collect();
    assert_eq!(names, pages);
    assert!(wait_text(&c, "#output", "320", t).await.contains("320"));
    shot(&c, &out, "3-timeline").await;

    // A sleeping run, cancelled from its page.
    let landed = send_from_form(&c, &url, "demo/remind", r#"{"who": "ann"}"#).await;
    let reminder = run_id_of(&landed);
    wait_text(&c, "h1", "sleeping", t).await;
    wait_text(&c, "main", "Waiting on", t).await;
    shot(&c, &out, "4-sleeping").await;
    click(&c, Locator::Css("button.danger")).await;
    wait_text(&c, "h1", "cancelled", t).await;
    wait_text(&c, "main", "cancel", t).await;

    // A failed checkout, replayed from its failed step.
    let landed = send_from_form(&c, &url, "shop/checkout", r#"{"amount": 30}"#).await;
    let failed = run_id_of(&landed);
    wait_text(&c, "h1", "failed", t).await;
    wait_text(&c, "#timeline", "card declined", t).await;
    shot(&c, &out, "5-failed").await;
    click(&c, Locator::Css("tr.step[data-step='charge'] button")).await;
    wait_text(&c, "h1", "completed", t).await;
    let replayed = run_id_of(c.current_url().await.unwrap().as_ref());
    assert_ne!(replayed, failed);
    wait_text(&c, "main", &format!("a replay of {failed}, from charge"), t).await;
    assert!(wait_text(&c, "#output", "30", t).await.contains("30"));
    assert_eq!(
        app.count("shop: reserved stock"),
        1,
        "the kept step did not run again: {}",
        app.output()
    );
    shot(&c, &out, "6-replayed").await;

    // An invoke links to the run it started.
    send_from_form(&c, &url, "demo/area", r#"{"side": 7}"#).await;
    wait_text(&c, "h1", "completed", t).await;
    wait_text(&c, "#output", "49", t).await;
    click(&c, Locator::LinkText("seed-app-square")).await;
    wait_text(&c, "main", "multiply", t).await;
    wait_text(&c, "#output", "49", t).await;

    // The operations are recorded on the runs they touched.
    c.goto(&format!("{url}/runs/{failed}")).await.unwrap();
    wait_text(&c, "main", ": made ", t).await;
    wait_text(&c, "main", &replayed, t).await;
    c.goto(&format!("{url}/events")).await.unwrap();
    for id in [&import, &reminder, &failed] {
        wait_text(&c, "main", id, t).await;
    }
    shot(&c, &out, "7-events").await;
    c.close().await.unwrap();
    drop(wd);
}
