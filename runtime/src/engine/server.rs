//! Serving the HTTP API so that careless and hostile clients cannot take
//! it down: a cap on open connections (so the process never runs out of
//! file descriptors), a deadline for each request's headers that also
//! closes idle keep-alive connections (so idle or slow clients give their
//! slot back), and a graceful stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How the server treats connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connections open at once; more wait in the listen backlog until
    /// one closes (default 512: well under the usual limit of 1,024 file
    /// descriptors, with room for the store and the calls to apps).
    pub max_connections: usize,
    /// How long a client has to send a request's headers, and how long a
    /// keep-alive connection may stay idle (default 5 s, Node's keep-alive
    /// timeout).
    pub header_timeout: Duration,
    /// How long a stop waits for requests in flight (default 10 s).
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 512,
            header_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serve `router` on `listener` until `stop` resolves, then let the
/// requests in flight finish (up to the drain timeout).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    options: ServeOptions,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was
                    // accepted: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the drain timeout were cut");
    }
}
