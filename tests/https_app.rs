//! An app served over HTTPS with a self-signed certificate: the engine
//! syncs it and drives its steps once the certificate is trusted through
//! configuration, and refuses to talk to it otherwise.

mod common;

use std::sync::Arc;

use durafn::prelude::*;
use durafn::serve::Handler;
use durafn::store::RunStatus;
use durafn::Engine;
use serde_json::json;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[durable_fn(id = "pages", event = "tls/pages")]
async fn pages(_ctx: Ctx, _event: Event) -> Result<u32> {
    let mut total = 0;
    for i in 0..3u32 {
        total += step!("page", { i + 1 })?;
    }
    Ok(total)
}

const CERT: &[u8] = include_bytes!("fixtures/tls/app.crt");
const KEY: &[u8] = include_bytes!("fixtures/tls/app.key");

/// TLS over a TCP listener, for `axum::serve`.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses the certificate ends its handshake.
            if let Ok(tls) = self.tls.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serve `router` over HTTPS on `tcp`.
fn listen_tls(tcp: tokio::net::TcpListener, router: axum::Router) {
    let certs = vec![CertificateDer::from_pem_slice(CERT).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let listener = TlsListener {
        tcp,
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move { axum::serve(listener, router).await });
}

#[tokio::test]
async fn an_https_app_runs_once_its_certificate_is_trusted() {
    let key = "signkey-test-00112233445566778899aabbccddeeff";
    let engine = Engine::builder()
        .memory()
        .signing_key(key)
        .trust_app_certificate(CERT)
        .build()
        .await
        .unwrap();
    let executor = common::listen(engine.router()).await;
    // The app names its public HTTPS URL (`INNGEST_SERVE_ORIGIN` for the
    // official SDKs): a server does not know it is behind TLS.
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!(
        "https://localhost:{}/api/durafn",
        tcp.local_addr().unwrap().port()
    );
    listen_tls(
        tcp,
        Handler::new("tls-app")
            .dev(false)
            .signing_key(key, None)
            .api_base(&executor)
            .serve_url(&app_url)
            .register(pages)
            .router_at("/api/durafn"),
    );
    engine.sync_app(&app_url).await.unwrap();
    assert_eq!(engine.remote_functions()[0].id, "tls-app-pages");
    let run = common::run_to_end(&engine, Event::new("tls/pages", json!({})), 10).await;
    assert_eq!(run.run.status, RunStatus::Completed, "{:?}", run.run.error);
    assert_eq!(run.run.output, Some(json!(6)));

    // Without the certificate trusted, the app is not reached.
    let untrusting = Engine::builder().memory().build().await.unwrap();
    let err = untrusting.sync_app(&app_url).await.unwrap_err();
    assert!(err.to_string().contains("cannot reach the app"), "{err}");
    // A certificate that is not PEM fails the build clearly.
    let bad = Engine::builder()
        .memory()
        .trust_app_certificate(b"not a certificate".to_vec())
        .build()
        .await
        .err()
        .expect("refused");
    assert!(bad.to_string().contains("not a PEM certificate"), "{bad}");
}
