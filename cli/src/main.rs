//! `durafn`: run the engine and talk to it.
//!
//! ```text
//! durafn dev [-u http://127.0.0.1:3000/api/durafn]   # engine on SQLite + 127.0.0.1:8288
//! durafn send shop/order.created --data '{"id": 1}'
//! durafn runs [--function ID] [--status failed]
//! durafn run <run-id>                                # the step trace, with timings
//! durafn cancel <run-id>
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "durafn",
    version,
    about = "Durable functions for Rust: the engine and its client"
)]
struct Cli {
    /// The engine's URL (for the client commands).
    #[arg(
        long,
        global = true,
        env = "DURAFN_URL",
        default_value = "http://127.0.0.1:8288"
    )]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine on an embedded SQLite file: the event API (`POST /e/{key}`),
    /// app syncs (`POST /fn/register`) and the run API, on 127.0.0.1.
    Dev {
        /// Port to listen on (the Inngest dev server's).
        #[arg(short, long, default_value_t = 8288)]
        port: u16,
        /// Where runs are kept: a SQLite file, or a PostgreSQL URL
        /// (`postgres://user@host/db`) that several engine processes may share.
        #[arg(long, env = "DATABASE_URL", default_value = ".durafn/dev.db")]
        db: String,
        /// An app endpoint to sync at start (repeatable).
        #[arg(short = 'u', long = "sdk-url")]
        urls: Vec<String>,
        /// Sign requests to apps with this key (`signkey-<env>-<hex>`).
        #[arg(long, env = "INNGEST_SIGNING_KEY")]
        signing_key: Option<String>,
        /// How long a run of a function no app has registered (yet) waits
        /// for one before it fails (`90s`, `5m`).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        unknown_function_timeout: Duration,
    },
    /// Send an event.
    Send {
        name: String,
        /// The event's data, as JSON.
        #[arg(long, default_value = "{}")]
        data: String,
        /// An idempotency key.
        #[arg(long)]
        id: Option<String>,
    },
    /// List runs, newest first.
    Runs {
        #[arg(long)]
        function: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one run and its step trace.
    Run { id: String },
    /// Cancel a run.
    Cancel { id: String },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev {
            port,
            db,
            urls,
            signing_key,
            unknown_function_timeout,
        } => dev(port, db, urls, signing_key, unknown_function_timeout).await,
        Command::Send { name, data, id } => send(&cli.url, &name, &data, id).await,
        Command::Runs {
            function,
            status,
            limit,
        } => runs(&cli.url, function, status, limit).await,
        Command::Run { id } => show_run(&cli.url, &id).await,
        Command::Cancel { id } => cancel(&cli.url, &id).await,
    };
    if let Err(e) = result {
        eprintln!("durafn: {e}");
        std::process::exit(1);
    }
}

type Res = Result<(), String>;

fn parse_duration(s: &str) -> Result<Duration, String> {
    durafn::serve::wire::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration like `90s` or `5m`"))
}

async fn dev(
    port: u16,
    db: String,
    urls: Vec<String>,
    signing_key: Option<String>,
    unknown_function_timeout: Duration,
) -> Res {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,durafn=info".into()),
        )
        .with_target(false)
        .init();
    let postgres = db.starts_with("postgres://") || db.starts_with("postgresql://");
    let builder = if postgres {
        durafn::Engine::builder().postgres(&db)
    } else {
        let path = PathBuf::from(&db);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        durafn::Engine::builder().sqlite(path)
    };
    let mut builder = builder.unknown_function_timeout(unknown_function_timeout);
    if let Some(key) = signing_key {
        builder = builder.signing_key(key);
    }
    let engine = builder.build().await.map_err(|e| e.to_string())?;
    let addr = format!("127.0.0.1:{port}");
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let shown = if postgres { redact(&db) } else { db.clone() };
    println!("durafn dev: engine on {shown} and http://{addr}");
    println!("  events: POST http://{addr}/e/<key>   syncs: POST http://{addr}/fn/register   runs: GET http://{addr}/v1/runs");
    for url in urls {
        let engine = engine.clone();
        tokio::spawn(async move {
            for attempt in 1..=30 {
                match engine.sync_app(&url).await {
                    Ok(()) => {
                        println!("synced {url}");
                        return;
                    }
                    Err(e) if attempt == 30 => eprintln!("durafn: giving up syncing {url}: {e}"),
                    Err(e) => {
                        if attempt == 1 {
                            eprintln!("waiting for {url} ({e})");
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }
    axum::serve(listener, engine.router())
        .await
        .map_err(|e| e.to_string())
}

/// A database URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn request(r: reqwest::RequestBuilder) -> Result<Value, String> {
    let r = r
        .send()
        .await
        .map_err(|e| format!("cannot reach the engine: {e} (is `durafn dev` running?)"))?;
    let status = r.status();
    let body: Value = r
        .json()
        .await
        .map_err(|e| format!("the engine answered {status} with a body that is not JSON: {e}"))?;
    if !status.is_success() {
        return Err(body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string()));
    }
    Ok(body)
}

async fn send(url: &str, name: &str, data: &str, id: Option<String>) -> Res {
    let data: Value =
        serde_json::from_str(data).map_err(|e| format!("--data is not valid JSON: {e}"))?;
    let mut event = json!({"name": name, "data": data});
    if let Some(id) = id {
        event["id"] = json!(id);
    }
    let body = request(
        reqwest::Client::new()
            .post(format!("{url}/e/cli"))
            .json(&event),
    )
    .await?;
    for id in body["ids"].as_array().into_iter().flatten() {
        println!("{}", id.as_str().unwrap_or_default());
    }
    Ok(())
}

fn ms(v: &Value) -> String {
    v.as_i64()
        .map(|t| format!("{t}"))
        .unwrap_or_else(|| "-".into())
}

async fn runs(url: &str, function: Option<String>, status: Option<String>, limit: usize) -> Res {
    let mut q = vec![("limit", limit.to_string())];
    q.extend(function.map(|f| ("function", f)));
    q.extend(status.map(|s| ("status", s)));
    let body = request(
        reqwest::Client::new()
            .get(format!("{url}/v1/runs"))
            .query(&q),
    )
    .await?;
    println!(
        "{:<34} {:<32} {:<10} {:>8}",
        "RUN", "FUNCTION", "STATUS", "MS"
    );
    for r in body["data"].as_array().into_iter().flatten() {
        let took = match (r["ended_ms"].as_i64(), r["created_ms"].as_i64()) {
            (Some(e), Some(c)) => (e - c).to_string(),
            _ => "-".into(),
        };
        println!(
            "{:<34} {:<32} {:<10} {:>8}",
            r["id"].as_str().unwrap_or_default(),
            r["fn_id"].as_str().unwrap_or_default(),
            r["status"].as_str().unwrap_or_default(),
            took
        );
    }
    Ok(())
}

async fn show_run(url: &str, id: &str) -> Res {
    let body = request(reqwest::Client::new().get(format!("{url}/v1/runs/{id}"))).await?;
    let r = &body["data"];
    println!("run       {}", r["id"].as_str().unwrap_or_default());
    println!("function  {}", r["fn_id"].as_str().unwrap_or_default());
    println!("status    {}", r["status"].as_str().unwrap_or_default());
    println!(
        "event     {}",
        r["event"]["name"].as_str().unwrap_or_default()
    );
    if !r["output"].is_null() {
        println!("output    {}", r["output"]);
    }
    if !r["error"].is_null() {
        println!(
            "error     {}",
            r["error"]["message"].as_str().unwrap_or_default()
        );
    }
    println!();
    println!(
        "{:<28} {:<10} {:>8} {:>8}  OUTPUT / ERROR",
        "STEP", "STATUS", "ATTEMPTS", "MS"
    );
    let start = r["created_ms"].as_i64().unwrap_or(0);
    for s in r["steps"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().or(s["id"].as_str()).unwrap_or_default();
        let name = match s["kind"].as_str() {
            Some(kind) if kind != "run" => format!("{name} ({kind})"),
            _ => name.to_string(),
        };
        let took = match (s["ended_ms"].as_i64(), s["started_ms"].as_i64()) {
            (Some(e), Some(b)) => (e - b).to_string(),
            _ => "-".into(),
        };
        let detail = if !s["error"].is_null() {
            format!(
                "error: {}",
                s["error"]["message"].as_str().unwrap_or_default()
            )
        } else {
            let out = s["output"].to_string();
            if out.len() > 60 {
                format!(
                    "{}…",
                    &out[..out.char_indices().nth(60).map_or(out.len(), |(i, _)| i)]
                )
            } else {
                out
            }
        };
        println!(
            "{:<28} {:<10} {:>8} {:>8}  {}   (+{} ms)",
            name,
            s["status"].as_str().unwrap_or_default(),
            s["attempts"].to_string(),
            took,
            detail,
            s["started_ms"]
                .as_i64()
                .map(|t| t - start)
                .map_or_else(|| ms(&Value::Null), |d| d.to_string())
        );
    }
    Ok(())
}

async fn cancel(url: &str, id: &str) -> Res {
    request(reqwest::Client::new().post(format!("{url}/v1/runs/{id}/cancel"))).await?;
    println!("cancelled {id}");
    Ok(())
}
