//! Starting and stopping the service: process hardening, keys, listener, TLS, connection
//! limits, routes, middleware, signals.

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
use super::limits::{per_request, LimitAcceptor};
use super::metrics::Timed;
use super::ops::{self, load_tls, Live};
use super::page;
use super::problem::ApiError;
use super::service::{anyone_can_sign_in, provider, Service, Shared, MAX_BODY, NOBODY_CAN_SIGN_IN};
use super::signin;
use crate::issuer::config::IssuerConfig;
use crate::issuer::error::IssuerError;
use crate::issuer::keys::pool::KeyPool;
use crate::issuer::keys::IssuerKey;
use crate::issuer::sign;

/// What [`harden_process`] made sure of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hardened {
    /// The process is not dumpable (`PR_SET_DUMPABLE` 0): no core dump, and other processes
    /// of the same user can neither ptrace it nor read its memory or `/proc/PID/environ`.
    pub not_dumpable: bool,
    /// `RLIMIT_CORE` is 0 (soft and hard).
    pub no_core_limit: bool,
}

/// Keeps secrets out of core dumps: `PR_SET_DUMPABLE` 0 and `RLIMIT_CORE` 0, then reads both
/// back. Call it before the PIN is read.
pub fn harden_process() -> std::io::Result<Hardened> {
    use rustix::process::{
        dumpable_behavior, getrlimit, set_dumpable_behavior, setrlimit, DumpableBehavior, Resource,
        Rlimit,
    };
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    let core = getrlimit(Resource::Core);
    Ok(Hardened {
        not_dumpable: dumpable_behavior()? == DumpableBehavior::NotDumpable,
        no_core_limit: core.current == Some(0) && core.maximum == Some(0),
    })
}

/// Connections the process can hold: `max_connections`, but no more than its file
/// descriptor limit leaves room for beside the HSM, the audit log and the runtime (a
/// connection refused by the cap is closed at once; one refused by `EMFILE` would wait).
fn connection_cap(configured: usize) -> usize {
    const RESERVE: u64 = 64;
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match nofile {
        Some(n) => {
            let room = usize::try_from(n.saturating_sub(RESERVE)).unwrap_or(usize::MAX);
            configured.min(room.max(1))
        }
        None => configured,
    }
}

/// Until the service's own SIGHUP handler is in place — after the HSM, the audit log and the
/// database have answered, which can take seconds — a SIGHUP (`systemctl reload` right after
/// `start`) must not end the process: that is its default action, and systemd counts it as a
/// clean exit and does not restart the unit. Registering tokio's handler once installs it for
/// the life of the process; a SIGHUP before the service listens for it is dropped (the config
/// is read at start anyway).
pub fn hold_sighup() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("a runtime for the SIGHUP handler: {e}"))?;
    let _enter = rt.enter();
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map(drop)
        .map_err(|e| format!("the SIGHUP handler: {e}"))
}

/// Runs the service until SIGINT or SIGTERM, then stops accepting and lets requests in flight
/// finish (up to 10 s). `ready` receives the address actually listened on.
/// The key must be unlocked ([`crate::issuer::KeyManager::unlock`]) first.
pub fn run(
    cfg: IssuerConfig,
    listen: Option<SocketAddr>,
    ready: impl FnOnce(&str),
) -> Result<(), IssuerError> {
    if !anyone_can_sign_in(&cfg) {
        return Err(IssuerError::Config {
            path: "[serve]".into(),
            detail: NOBODY_CAN_SIGN_IN.into(),
        });
    }
    let internal =
        |what: &str, e: &dyn std::fmt::Display| IssuerError::Internal(format!("{what}: {e}"));
    // Each signature timed into the metrics.
    let keys = (0..cfg.serve.hsm_sessions)
        .map(|_| {
            cfg.key
                .open()
                .map(|k| Box::new(Timed(k)) as Box<dyn IssuerKey>)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bundle = sign::trust_bundle(&cfg)?;
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
    let audit = Arc::new(Committer::start(audit_store.clone(), &cfg)?);
    let web = cfg
        .session_store()
        .map_err(|e| internal("web sessions", &e))?;
    let csrf_key = web
        .web_key()
        .map_err(|e| internal("the web page's key", &e))?;
    let provider = provider(&cfg)?;
    let svc = Arc::new(Service {
        cfg,
        pool: Arc::new(KeyPool::new(keys)),
        bundle,
        audit,
        audit_store,
        register,
        web,
        csrf_key,
        tls: tls.is_some(),
        in_flight: Arc::new(Mutex::new(HashMap::new())),
        denylist: Mutex::new(None),
        provider,
        self_service: Arc::new(tokio::sync::Mutex::new(())),
    });
    let limits = svc.cfg.serve.limits.clone();
    let max_connections = connection_cap(limits.max_connections);
    if max_connections < limits.max_connections {
        warn!(
            configured = limits.max_connections,
            max_connections,
            "max_connections lowered to what the open-file limit (ulimit -n) leaves room for"
        );
    }
    let acceptor = LimitAcceptor::new(
        max_connections,
        limits.max_connections_per_ip,
        limits.idle_timeout,
    );
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
        // The certificate and key are read (and must parse) before anything says "listening".
        let tls_config = match &tls {
            Some((cert, key)) => Some(axum_server::tls_rustls::RustlsConfig::from_config(
                load_tls(cert, key).await?,
            )),
            None => None,
        };
        // Each request goes to the router of the config in force; SIGHUP reloads it.
        let live = Live::new(svc.clone(), router, tls_config.clone());
        live.reload_on_sighup()
            .map_err(|e| internal("SIGHUP handler", &e))?;
        let make = live
            .app()
            .into_make_service_with_connect_info::<SocketAddr>();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{local}");
        info!(%url, kid = %svc.bundle.keys[0].0, sessions = svc.pool.size(), "hwpass issuing service listening");
        let served = match tls_config {
            Some(config) => {
                let tls = axum_server::tls_rustls::RustlsAcceptor::new(config)
                    .handshake_timeout(limits.header_read_timeout)
                    .acceptor(acceptor);
                let server = axum_server::from_tcp(listener)
                    .map_err(|e| internal("listener", &e))?
                    .acceptor(tls);
                let server = tune(server, &limits);
                ready(&url);
                server.handle(handle).serve(make).await
            }
            None => {
                let server = axum_server::from_tcp(listener)
                    .map_err(|e| internal("listener", &e))?
                    .acceptor(acceptor);
                let server = tune(server, &limits);
                ready(&url);
                server.handle(handle).serve(make).await
            }
        };
        served.map_err(|e| internal("server", &e))?;
        info!("stopped");
        Ok(())
    })
}

/// HTTP/1.1 only, with the head of each request (and the wait for the next one on a
/// kept-alive connection) bounded by `header_read_timeout`, and at most 64 KiB of head.
fn tune<Acc>(
    mut server: axum_server::Server<SocketAddr, Acc>,
    limits: &crate::issuer::config::Limits,
) -> axum_server::Server<SocketAddr, Acc> {
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    server
        .http1_only()
        .first_request_timeout(limits.header_read_timeout)
        .accept_error_handler(|peer, e| {
            tracing::debug!(peer = ?peer, error = %e, "connection not accepted");
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
    let hsts = svc.secure_cookies();
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
        .route("/v1/self", get(api::self_info))
        .route("/v1/self/whoami", get(api::self_whoami))
        .route("/v1/self/passes", post(api::self_sign))
        .route("/oidc/login", get(signin::login))
        .route("/oidc/callback", get(signin::callback))
        .merge(ops::routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            svc.clone(),
            per_request,
        ))
        .layer(axum::middleware::from_fn(move |req, next| {
            log_and_harden(hsts, req, next)
        }))
        .with_state(svc)
}

/// Logs each request (method, path, status, time — never bodies or headers) and adds the
/// security headers every response carries (HSTS when browsers reach it over TLS).
async fn log_and_harden(
    hsts: bool,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
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
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    // Nothing is stored by caches, unless a handler says otherwise (the deny list: no-cache).
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
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
