//! Starting and stopping the service: keys, listener, TLS, routes, middleware, signals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tracing::{info, warn};

use super::api;
use super::committer::Committer;
use super::page;
use super::problem::ApiError;
use super::service::{Service, Shared, MAX_BODY};
use crate::issuer::config::IssuerConfig;
use crate::issuer::error::IssuerError;
use crate::issuer::keys::pool::KeyPool;
use crate::issuer::sign;

/// Runs the service until SIGINT or SIGTERM, then stops accepting and lets requests in flight
/// finish (up to 10 s). `ready` receives the address actually listened on.
/// The key must be unlocked ([`crate::issuer::KeyManager::unlock`]) first.
pub fn run(
    cfg: IssuerConfig,
    listen: Option<SocketAddr>,
    ready: impl FnOnce(&str),
) -> Result<(), IssuerError> {
    if cfg.serve.admins.is_empty() && cfg.serve.proxy.is_none() {
        return Err(IssuerError::Config {
            path: "[serve]".into(),
            detail: "no admin can sign in: add [[serve.admins]] (see `hwpass-issuer admin-token`) or [serve.proxy]".into(),
        });
    }
    let internal =
        |what: &str, e: &dyn std::fmt::Display| IssuerError::Internal(format!("{what}: {e}"));
    let keys = (0..cfg.serve.hsm_sessions)
        .map(|_| cfg.key.open())
        .collect::<Result<Vec<_>, _>>()?;
    let bundle = sign::trust_bundle(&cfg)?;
    let mut csrf_key = [0u8; 32];
    getrandom::getrandom(&mut csrf_key).map_err(|e| internal("random", &e))?;
    let addr = listen.unwrap_or(cfg.serve.listen);
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| internal(&format!("cannot listen on {addr}"), &e))?;
    let local = listener
        .local_addr()
        .map_err(|e| internal("listen address", &e))?;
    let tls = cfg.serve.tls.clone();
    if tls.is_none() && !local.ip().is_loopback() {
        warn!(%local, "serving plain HTTP on a non-loopback address: configure [serve] tls_cert and tls_key, or put a TLS reverse proxy in front");
    }
    let audit_store = cfg.audit_store();
    let register = cfg.revocation_store();
    let audit = Committer::start(audit_store.clone(), &cfg)?;
    let svc = Arc::new(Service {
        cfg,
        pool: Arc::new(KeyPool::new(keys)),
        bundle,
        audit,
        audit_store,
        register,
        sessions: Mutex::new(HashMap::new()),
        csrf_key,
        tls: tls.is_some(),
        denylist: Mutex::new(None),
    });
    let app = router(svc.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| internal("tokio runtime", &e))?;
    rt.block_on(async move {
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("shutting down: no new connections, finishing requests in flight");
            stopper.graceful_shutdown(Some(Duration::from_secs(10)));
        });
        let make = app.into_make_service_with_connect_info::<SocketAddr>();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{local}");
        info!(%url, kid = %svc.bundle.keys[0].0, sessions = svc.pool.size(), "hwpass issuing service listening");
        let served = match tls {
            Some((cert, key)) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                    .await
                    .map_err(|e| {
                        internal(
                            &format!("TLS certificate {} / key {}", cert.display(), key.display()),
                            &e,
                        )
                    })?;
                let server = axum_server::from_tcp_rustls(listener, config)
                    .map_err(|e| internal("listener", &e))?;
                ready(&url);
                server.handle(handle).serve(make).await
            }
            None => {
                let server =
                    axum_server::from_tcp(listener).map_err(|e| internal("listener", &e))?;
                ready(&url);
                server.handle(handle).serve(make).await
            }
        };
        served.map_err(|e| internal("server", &e))?;
        info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

fn router(svc: Shared) -> Router {
    Router::new()
        .route("/", get(page::home))
        .route("/login", post(page::login))
        .route("/logout", post(page::logout))
        .route("/review", post(page::review))
        .route("/sign", post(page::sign))
        .route("/revoke", post(page::revoke_form))
        .route("/static/hwpass.css", get(page::css))
        .route("/static/hwpass.js", get(page::js))
        .route("/v1/passes", post(api::api_sign))
        .route("/v1/jwks", get(api::api_jwks))
        .route("/v1/denylist", get(api::api_denylist))
        .route("/v1/revocations", post(api::api_revoke))
        .route("/v1/issuances", get(api::api_issuances))
        .route("/v1/openapi.json", get(api::api_openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::middleware::from_fn(log_and_harden))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(svc)
}

/// Logs each request (method, path, status, time — never bodies or headers) and adds the
/// security headers every response carries.
async fn log_and_harden(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_string(), |c| c.0.ip().to_string());
    let start = Instant::now();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    info!(
        %method,
        path,
        status = resp.status().as_u16(),
        ms = start.elapsed().as_secs_f64() * 1e3,
        %peer,
        "request"
    );
    resp
}
