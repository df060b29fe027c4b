//! `durafn`: run the engine and talk to it.
//!
//! ```text
//! durafn dev [-u http://127.0.0.1:3000/api/durafn]   # engine on SQLite + 127.0.0.1:8288
//! durafn start                                       # the production server (keys from the environment)
//! durafn send shop/order.created --data '{"id": 1}'
//! durafn runs [--function ID] [--status failed] [--since 1h]
//! durafn run <run-id> [--watch]                      # the step trace, with timings
//! durafn cancel <run-id>                             # or --function/--status/--since: a bulk job
//! durafn rerun <run-id>                              # or a selection, as cancel
//! durafn replay <run-id> --from <step> [--edit <step> --output <json>]
//! ```

mod dashboard;

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
    /// The run API's token, for a server started with `durafn start`.
    #[arg(long, global = true, env = "DURAFN_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine on an embedded SQLite file: the event API (`POST /e/{key}`),
    /// app syncs (`POST /fn/register`) and the run API, on 127.0.0.1.
    Dev(DevArgs),
    /// Run the production server: the same engine and API as `dev`, but
    /// every request carries a key (events, syncs, the run API), every
    /// request to an app is signed, and SIGTERM drains the runs in flight.
    Start(Box<StartArgs>),
    /// Send an event.
    Send {
        name: String,
        /// The event's data, as JSON.
        #[arg(long, default_value = "{}")]
        data: String,
        /// An idempotency key.
        #[arg(long)]
        id: Option<String>,
        /// The event key (`durafn start` requires one of its keys).
        #[arg(long, env = "DURAFN_EVENT_KEY", hide_env_values = true)]
        event_key: Option<String>,
    },
    /// List runs, newest first.
    Runs {
        #[arg(long)]
        function: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// Only runs created within this long (`1h`, `30m`).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one run and its step trace.
    Run {
        id: String,
        /// Follow the run until it ends, redrawing its trace as it goes.
        #[arg(long)]
        watch: bool,
    },
    /// Cancel a run, or every run a selection matches (a bulk job, with
    /// its progress).
    Cancel {
        /// The run to cancel.
        #[arg(required_unless_present_any = ["function", "status", "since"])]
        id: Option<String>,
        #[command(flatten)]
        select: Select,
    },
    /// Start a new run from a run's event (or every run a selection
    /// matches): the function runs again from the start.
    Rerun {
        #[arg(required_unless_present_any = ["function", "status", "since"])]
        id: Option<String>,
        #[command(flatten)]
        select: Select,
    },
    /// Start a new run whose journal is a run's up to a step: the steps
    /// before it are not run again. With `--edit STEP --output JSON`, one
    /// kept step's output is replaced.
    Replay {
        id: String,
        /// The first step to run again (its ID, or the name an app gave it).
        #[arg(long, required_unless_present = "edit")]
        from: Option<String>,
        /// A kept step whose output to replace (replays from the step after
        /// it unless `--from` says otherwise).
        #[arg(long, requires = "output")]
        edit: Option<String>,
        /// The edited step's new output, as JSON.
        #[arg(long, requires = "edit")]
        output: Option<String>,
    },
    /// Print a run (function, version, event, journal) as JSON, to replay
    /// it in a test with `durafn::testing::replay(f, "run.json")`.
    Export { id: String },
}

/// Which runs a bulk operation touches.
#[derive(clap::Args, Debug, Clone, Default)]
struct Select {
    /// Runs of this function.
    #[arg(long, conflicts_with = "id")]
    function: Option<String>,
    /// Runs with this status (`failed`, `sleeping`, ...).
    #[arg(long, conflicts_with = "id")]
    status: Option<String>,
    /// Runs created within this long (`1h`, `2d`).
    #[arg(long, conflicts_with = "id", value_parser = parse_duration)]
    since: Option<Duration>,
}

#[derive(clap::Args)]
struct DevArgs {
    /// Port to listen on (the Inngest dev server's; 0: any free port).
    #[arg(short, long, default_value_t = 8288)]
    port: u16,
    /// Address to listen on. The dev server has no keys: it answers
    /// requests addressed to an IP address or `localhost` only, and
    /// refuses browser requests from other origins, wherever it listens.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
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
    /// A PEM certificate to trust for apps served over HTTPS (a private
    /// CA or a self-signed certificate), besides the public roots.
    #[arg(long, env = "DURAFN_APP_CA")]
    app_ca: Option<PathBuf>,
    /// Delete runs that ended, and events, older than this (`7d`, `12h`),
    /// in the background; `off` keeps everything.
    #[arg(long, env = "DURAFN_RETENTION", default_value = "7d", value_parser = parse_retention)]
    retention: Retention,
    /// The largest event accepted (`3MiB`, `512KiB`, or bytes): Inngest's
    /// largest by default, so that what any Inngest plan accepts runs here.
    #[arg(long, env = "DURAFN_MAX_EVENT_SIZE", default_value = "3MiB", value_parser = parse_size)]
    max_event_size: usize,
}

/// How long finished runs and events are kept (`None`: forever).
#[derive(Clone, Copy)]
struct Retention(Option<Duration>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    match s.trim() {
        "off" | "forever" => Ok(Retention(None)),
        _ => match parse_duration(s)? {
            d if d.is_zero() => Err(
                "a retention of 0 would delete runs as they end; write `off` to keep everything"
                    .into(),
            ),
            d => Ok(Retention(Some(d))),
        },
    }
}

fn retain(builder: durafn::EngineBuilder, r: Retention) -> durafn::EngineBuilder {
    match r.0 {
        Some(keep) => builder.retention(keep),
        None => builder,
    }
}

#[derive(clap::Args)]
struct StartArgs {
    /// Address to listen on.
    #[arg(long, env = "DURAFN_HOST", default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on (0: any free port).
    #[arg(short, long, env = "DURAFN_PORT", default_value_t = 8288)]
    port: u16,
    /// Where runs are kept: a SQLite file, or a PostgreSQL URL.
    #[arg(long, env = "DURAFN_DB", default_value = ".durafn/durafn.db")]
    db: String,
    /// A key accepted on `POST /e/{key}`; repeatable, or comma-separated
    /// in DURAFN_EVENT_KEYS (INNGEST_EVENT_KEY is read too).
    #[arg(
        long = "event-key",
        env = "DURAFN_EVENT_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    event_keys: Vec<String>,
    /// The signing key (`signkey-<env>-<hex>`): requests to apps are signed
    /// with it, and syncs must carry its hash (also INNGEST_SIGNING_KEY).
    #[arg(long, env = "DURAFN_SIGNING_KEY", hide_env_values = true)]
    signing_key: Option<String>,
    /// A second signing key accepted while keys rotate (also
    /// INNGEST_SIGNING_KEY_FALLBACK).
    #[arg(long, env = "DURAFN_SIGNING_KEY_FALLBACK", hide_env_values = true)]
    signing_key_fallback: Option<String>,
    /// The bearer token of the run API (`/v1/...`).
    #[arg(long, env = "DURAFN_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// An app endpoint to sync at start (repeatable).
    #[arg(short = 'u', long = "sdk-url")]
    urls: Vec<String>,
    /// Accept app URLs only on these hosts (`name` or `name:port`;
    /// repeatable, or comma-separated in DURAFN_APP_HOSTS).
    #[arg(long = "app-host", env = "DURAFN_APP_HOSTS", value_delimiter = ',')]
    app_hosts: Vec<String>,
    /// How long SIGTERM waits for the runs in flight before exiting (their
    /// leases then let the next engine take them over).
    #[arg(long, env = "DURAFN_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
    /// How long a run of a function no app has registered waits for one.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    unknown_function_timeout: Duration,
    /// A PEM certificate to trust for apps served over HTTPS (a private CA
    /// or a self-signed certificate), besides the public roots.
    #[arg(long, env = "DURAFN_APP_CA")]
    app_ca: Option<PathBuf>,
    /// Delete runs that ended, and events, older than this (`30d`), in the
    /// background; `off` keeps everything.
    #[arg(long, env = "DURAFN_RETENTION", default_value = "7d", value_parser = parse_retention)]
    retention: Retention,
    /// The largest event accepted (`512KiB`, `3MiB`, or bytes; at most
    /// 3MiB, Inngest's largest).
    #[arg(long, env = "DURAFN_MAX_EVENT_SIZE", default_value = "512KiB", value_parser = parse_size)]
    max_event_size: usize,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let api = Api {
        url: cli.url.clone(),
        token: cli.token.clone(),
    };
    let result = match cli.command {
        Command::Dev(args) => dev(args).await,
        Command::Start(args) => start(*args).await,
        Command::Send {
            name,
            data,
            id,
            event_key,
        } => {
            let key = event_key
                .or_else(|| env_var("INNGEST_EVENT_KEY"))
                .unwrap_or_else(|| "cli".into());
            send(&cli.url, &key, &name, &data, id).await
        }
        Command::Runs {
            function,
            status,
            since,
            limit,
        } => runs(&api, function, status, since, limit).await,
        Command::Run { id, watch: false } => show_run(&api, &id).await.map(drop),
        Command::Run { id, watch: true } => watch_run(&api, &id).await,
        Command::Cancel { id: Some(id), .. } => cancel(&api, &id).await,
        Command::Cancel { id: None, select } => bulk(&api, "cancel", select).await,
        Command::Rerun { id: Some(id), .. } => rerun(&api, &id).await,
        Command::Rerun { id: None, select } => bulk(&api, "rerun", select).await,
        Command::Replay {
            id,
            from,
            edit,
            output,
        } => replay(&api, &id, from, edit, output).await,
        Command::Export { id } => export(&api, &id).await,
    };
    if let Err(e) = result {
        eprintln!("durafn: {e}");
        std::process::exit(1);
    }
}

type Res = Result<(), String>;

/// The run API's address and token.
struct Api {
    url: String,
    token: Option<String>,
}

impl Api {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.auth(reqwest::Client::new().get(format!("{}{path}", self.url)))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.auth(reqwest::Client::new().post(format!("{}{path}", self.url)))
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    durafn::serve::wire::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration like `90s` or `5m`"))
}

/// A size: bytes, or a number with `KiB`/`MiB` (`KB`, `MB`, `k`, `M`
/// alike: powers of 1024), from 1 KiB to 3 MiB.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size like `512KiB` or `3MiB`"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("`{s}` is not a size like `512KiB` or `3MiB`")),
    };
    match n.checked_mul(scale) {
        Some(b) if (1024..=3 * 1024 * 1024).contains(&b) => Ok(b),
        _ => Err(format!("`{s}` is outside 1KiB..3MiB")),
    }
}

fn logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,durafn=info".into()),
        )
        .with_target(false)
        // Colors only on a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

/// The engine builder on `db`: a PostgreSQL URL, else a SQLite file (its
/// directory created); and the store as printed (no password).
fn store(db: &str) -> Result<(durafn::EngineBuilder, String), String> {
    let postgres = db.starts_with("postgres://") || db.starts_with("postgresql://");
    if postgres {
        return Ok((durafn::Engine::builder().postgres(db), redact(db)));
    }
    let path = PathBuf::from(db);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    Ok((durafn::Engine::builder().sqlite(path), db.to_string()))
}

async fn listen(host: &str, port: u16) -> Result<(tokio::net::TcpListener, String), String> {
    let addr = match host.contains(':') && !host.starts_with('[') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    Ok((listener, bound.to_string()))
}

async fn dev(a: DevArgs) -> Res {
    logs();
    let (builder, shown) = store(&a.db)?;
    let mut builder = trust(
        retain(builder, a.retention)
            .unknown_function_timeout(a.unknown_function_timeout)
            .max_event_bytes(a.max_event_size),
        a.app_ca,
    )?;
    if let Some(key) = a.signing_key {
        builder = builder.signing_key(key);
    }
    let engine = builder.build().await.map_err(|e| e.to_string())?;
    let (listener, addr) = listen(&a.host, a.port).await?;
    println!("durafn dev: engine on {shown} and http://{addr}");
    println!("  dashboard: http://{addr}/");
    println!("  events: POST http://{addr}/e/<key>   syncs: POST http://{addr}/fn/register   runs: GET http://{addr}/v1/runs");
    sync_apps(&engine, a.urls);
    let router = engine.router_with_pages(durafn::engine::Access::Local, dashboard::pages());
    serve(listener, router, stop_signal()).await;
    engine.close().await;
    Ok(())
}

/// Serve with the connection cap and header deadline of
/// `DURAFN_MAX_CONNECTIONS` and `DURAFN_HEADER_TIMEOUT` (defaults 512 and
/// 5s) until `stop`.
async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut options = durafn::engine::server::ServeOptions::default();
    if let Some(n) = env_var("DURAFN_MAX_CONNECTIONS").and_then(|v| v.parse().ok()) {
        options.max_connections = n;
    }
    if let Some(t) = env_var("DURAFN_HEADER_TIMEOUT").and_then(|v| parse_duration(&v).ok()) {
        options.header_timeout = t;
    }
    durafn::engine::server::serve(listener, router, options, stop).await;
}

/// Ask each app to sync, retrying while it starts.
fn sync_apps(engine: &durafn::Engine, urls: Vec<String>) {
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
}

async fn start(a: StartArgs) -> Res {
    let mut event_keys: Vec<String> = a
        .event_keys
        .into_iter()
        .filter(|k| !k.trim().is_empty())
        .collect();
    event_keys.extend(env_var("INNGEST_EVENT_KEY"));
    let signing_key = a.signing_key.or_else(|| env_var("INNGEST_SIGNING_KEY"));
    let fallback = a
        .signing_key_fallback
        .or_else(|| env_var("INNGEST_SIGNING_KEY_FALLBACK"));
    let mut missing = Vec::new();
    if event_keys.is_empty() {
        missing.push("an event key (--event-key, DURAFN_EVENT_KEYS or INNGEST_EVENT_KEY)");
    }
    if signing_key.is_none() {
        missing.push("the signing key (--signing-key, DURAFN_SIGNING_KEY or INNGEST_SIGNING_KEY)");
    }
    if a.api_token.as_deref().is_none_or(|t| t.trim().is_empty()) {
        missing.push("the run API's token (--api-token or DURAFN_API_TOKEN)");
    }
    if !missing.is_empty() {
        return Err(format!(
            "durafn start lets no one in without keys; set {}",
            missing.join(", ")
        ));
    }
    let signing_key = signing_key.unwrap_or_default();
    for key in std::iter::once(&signing_key).chain(fallback.iter()) {
        check_signing_key(key)?;
    }
    logs();
    let (builder, shown) = store(&a.db)?;
    let mut builder = retain(builder, a.retention)
        .unknown_function_timeout(a.unknown_function_timeout)
        .max_event_bytes(a.max_event_size)
        .signing_key(signing_key.clone());
    if !a.app_hosts.is_empty() {
        builder = builder.allow_app_hosts(a.app_hosts);
    }
    let engine = trust(builder, a.app_ca)?
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let (listener, addr) = listen(&a.host, a.port).await?;
    println!("durafn start: engine on {shown} and http://{addr}");
    sync_apps(&engine, a.urls);
    let access = durafn::engine::Access::Keys(durafn::engine::Keys {
        event_keys,
        signing_keys: std::iter::once(signing_key).chain(fallback).collect(),
        api_token: a.api_token.unwrap_or_default(),
    });
    serve(listener, engine.router_with(access), stop_signal()).await;
    println!(
        "durafn start: stopping; waiting up to {:?} for the runs in flight",
        a.shutdown_timeout
    );
    match tokio::time::timeout(a.shutdown_timeout, engine.close()).await {
        Ok(()) => println!("durafn start: stopped"),
        Err(_) => println!("durafn start: runs still in flight after {:?}; their leases let the next engine take them over", a.shutdown_timeout),
    }
    Ok(())
}

/// Trust the certificate in `file` for apps served over HTTPS.
fn trust(b: durafn::EngineBuilder, file: Option<PathBuf>) -> Result<durafn::EngineBuilder, String> {
    match file {
        None => Ok(b),
        Some(f) => {
            let pem = std::fs::read(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            Ok(b.trust_app_certificate(pem))
        }
    }
}

/// `signkey-<env>-<hex>`, as the official SDKs take it.
fn check_signing_key(key: &str) -> Res {
    let hex = key
        .strip_prefix("signkey-")
        .and_then(|rest| rest.split_once('-'))
        .map(|(_, hex)| hex);
    match hex {
        Some(h) if !h.is_empty() && h.len() % 2 == 0 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        _ => Err("the signing key must look like `signkey-<env>-<hex>` (for example `signkey-prod-` followed by 64 hex digits), as the official SDKs take it".into()),
    }
}

/// SIGTERM or Ctrl-C.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
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

async fn send(url: &str, key: &str, name: &str, data: &str, id: Option<String>) -> Res {
    let data: Value =
        serde_json::from_str(data).map_err(|e| format!("--data is not valid JSON: {e}"))?;
    let mut event = json!({"name": name, "data": data});
    if let Some(id) = id {
        event["id"] = json!(id);
    }
    let body = request(
        reqwest::Client::new()
            .post(format!("{url}/e/{key}"))
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

async fn runs(
    api: &Api,
    function: Option<String>,
    status: Option<String>,
    since: Option<Duration>,
    limit: usize,
) -> Res {
    let mut q = vec![("limit", limit.to_string())];
    q.extend(function.map(|f| ("function", f)));
    q.extend(status.map(|s| ("status", s)));
    let body = request(api.get("/v1/runs").query(&q)).await?;
    let after = since.map(|d| now_ms() - d.as_millis() as i64);
    println!(
        "{:<34} {:<32} {:<10} {:>8}",
        "RUN", "FUNCTION", "STATUS", "MS"
    );
    for r in body["data"].as_array().into_iter().flatten() {
        // Newest first: the rest are older still.
        if after.is_some_and(|a| r["created_ms"].as_i64().unwrap_or(0) < a) {
            break;
        }
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Print a run and its trace; answers its status.
async fn show_run(api: &Api, id: &str) -> Result<String, String> {
    let body = request(api.get(&format!("/v1/runs/{id}"))).await?;
    let r = &body["data"];
    println!("run       {}", r["id"].as_str().unwrap_or_default());
    println!("function  {}", r["fn_id"].as_str().unwrap_or_default());
    println!("status    {}", r["status"].as_str().unwrap_or_default());
    println!("version   {}", r["version"].as_str().unwrap_or("-"));
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
    if let Some(o) = r["origin"].as_object() {
        let from = o.get("from_step").and_then(Value::as_str);
        println!();
        println!(
            "made by a {} of {}{}",
            o.get("kind").and_then(Value::as_str).unwrap_or("?"),
            o.get("run_id").and_then(Value::as_str).unwrap_or("?"),
            from.map(|f| format!(" from {f}")).unwrap_or_default()
        );
    }
    for op in r["ops"].as_array().into_iter().flatten() {
        println!(
            "{}{}",
            op["op"].as_str().unwrap_or("?"),
            op["made"]
                .as_str()
                .map(|m| format!(": made {m}"))
                .unwrap_or_default()
        );
    }
    Ok(r["status"].as_str().unwrap_or_default().to_string())
}

/// Show a run again as it changes, until it ends.
async fn watch_run(api: &Api, id: &str) -> Res {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last = String::new();
    loop {
        let body = request(api.get(&format!("/v1/runs/{id}"))).await?;
        let seen = body["data"].to_string();
        if seen != last {
            if tty {
                // Clear the screen and go home.
                print!("\x1b[2J\x1b[H");
            } else if !last.is_empty() {
                println!("---");
            }
            let status = show_run(api, id).await?;
            if ["completed", "failed", "cancelled", "skipped"].contains(&status.as_str()) {
                return Ok(());
            }
            last = seen;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn rerun(api: &Api, id: &str) -> Res {
    let body = request(api.post(&format!("/v1/runs/{id}/rerun"))).await?;
    println!(
        "rerun of {id}: {}",
        body["data"]["id"].as_str().unwrap_or_default()
    );
    Ok(())
}

async fn replay(
    api: &Api,
    id: &str,
    from: Option<String>,
    edit: Option<String>,
    output: Option<String>,
) -> Res {
    let mut body = json!({});
    if let Some(f) = from {
        body["from"] = json!(f);
    }
    if let (Some(step), Some(out)) = (edit, output) {
        let out: Value =
            serde_json::from_str(&out).map_err(|e| format!("--output is not valid JSON: {e}"))?;
        body["edit"] = json!({"step": step, "output": out});
    }
    let answer = request(api.post(&format!("/v1/runs/{id}/replay")).json(&body)).await?;
    println!(
        "replay of {id}: {}",
        answer["data"]["id"].as_str().unwrap_or_default()
    );
    Ok(())
}

/// A bulk job over the runs `select` matches, with a progress line until
/// it finishes.
async fn bulk(api: &Api, op: &str, select: Select) -> Res {
    let mut body = json!({"op": op});
    if let Some(f) = select.function {
        body["function"] = json!(f);
    }
    if let Some(s) = select.status {
        body["status"] = json!(s);
    }
    if let Some(d) = select.since {
        body["since_ms"] = json!(now_ms() - d.as_millis() as i64);
    }
    let started = request(api.post("/v1/bulk").json(&body)).await?;
    let job = started["data"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let status = request(api.get(&format!("/v1/bulk/{job}"))).await?;
        let j = &status["data"];
        let (matched, done, skipped) = (
            j["matched"].as_u64().unwrap_or(0),
            j["done"].as_u64().unwrap_or(0),
            j["skipped"].as_u64().unwrap_or(0),
        );
        let finished = j["finished"] == true;
        let line = format!("{op}: {done} done, {skipped} skipped, {matched} matched");
        if tty {
            let width = 30;
            let filled = match matched {
                0 => usize::from(finished) * width,
                m => ((done + skipped) as usize * width) / m as usize,
            };
            eprint!(
                "\r[{}{}] {line}",
                "#".repeat(filled),
                ".".repeat(width - filled.min(width))
            );
        }
        if finished {
            if tty {
                eprintln!();
            }
            println!("{line}");
            for e in j["errors"].as_array().into_iter().flatten() {
                println!("  skipped {}", e.as_str().unwrap_or_default());
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn export(api: &Api, id: &str) -> Res {
    let body = request(api.get(&format!("/v1/runs/{id}/export"))).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&body).map_err(|e| e.to_string())?
    );
    Ok(())
}

async fn cancel(api: &Api, id: &str) -> Res {
    request(api.post(&format!("/v1/runs/{id}/cancel"))).await?;
    println!("cancelled {id}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_sizes_take_units_and_stay_within_inngests_bounds() {
        assert_eq!(parse_size("3MiB"), Ok(3 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("1 MB"), Ok(1 << 20));
        assert!(parse_size("4MiB").unwrap_err().contains("outside"));
        assert!(parse_size("12").unwrap_err().contains("outside"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("3GiB").unwrap_err().contains("not a size"));
    }

    #[test]
    fn retention_takes_a_duration_or_off() {
        let r = |s: &str| parse_retention(s).map(|r| r.0);
        assert_eq!(r("7d"), Ok(Some(Duration::from_secs(7 * 86_400))));
        assert_eq!(r("36h"), Ok(Some(Duration::from_secs(36 * 3600))));
        assert_eq!(r("off"), Ok(None));
        assert!(r("0s").unwrap_err().contains("`off`"));
        assert!(r("soon").is_err());
        let dev = Cli::try_parse_from(["durafn", "dev"]).unwrap();
        match dev.command {
            Command::Dev(a) => assert_eq!(a.retention.0, Some(Duration::from_secs(7 * 86_400))),
            _ => unreachable!(),
        }
    }
}
