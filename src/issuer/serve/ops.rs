//! What operators and their tools ask of the service: `/healthz` (the process answers),
//! `/readyz` (it can issue: the HSM session answers, the audit log takes an append and
//! verifies), `/metrics` (Prometheus), and SIGHUP, which reads the config again and switches
//! every new request to it while requests in flight finish on the old one. Web sessions, the
//! HSM sessions, the audit writer and the connection caps carry over; a config that does not
//! load is refused, logged, and the service keeps the one it has.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceExt as _;
use tracing::{error, info, warn};

use super::metrics;
use super::problem::typed;
use super::service::{anyone_can_sign_in, provider, Service, Shared, NOBODY_CAN_SIGN_IN};
use crate::issuer::config::{IssuerConfig, Storage};
use crate::issuer::error::IssuerError;
use crate::issuer::sign;

/// How long `/readyz` waits for the HSM (all its sessions may be busy signing).
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// `/healthz`, `/readyz` and `/metrics`.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
}

/// 200 when a pass could be issued now; otherwise 503 with a problem naming what is not
/// ready (the full error goes to the log, not to an anonymous client).
async fn readyz(State(svc): State<Shared>) -> Response {
    // One check at a time: a check still waiting for a hung HSM (its caller timed out) holds
    // this, and later callers are answered at once instead of tying up more threads.
    static CHECKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if CHECKING.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return not_ready(
            "hsm",
            "an earlier readiness check is still waiting for the HSM".into(),
        );
    }
    let worker = svc.clone();
    let check = tokio::task::spawn_blocking(move || -> Result<(), (&'static str, String)> {
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                CHECKING.store(false, std::sync::atomic::Ordering::Release);
            }
        }
        let _done = Done;
        if !worker.audit.healthy() {
            return Err((
                "audit",
                "the audit log does not verify: signing is stopped until it does (`hwpass-issuer audit verify`)".into(),
            ));
        }
        worker.audit_store.writable().map_err(|e| {
            warn!(error = %e, "not ready: the audit log cannot be written");
            (
                "audit",
                "the audit log cannot be written (the issuer's log says why)".to_string(),
            )
        })?;
        worker.pool.with(|key| key.ping()).map_err(|e| {
            warn!(error = %e, "not ready: the HSM did not answer");
            (
                "hsm",
                "the HSM session did not answer (the issuer's log says why)".to_string(),
            )
        })
    });
    let outcome = match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(("internal", format!("the readiness check failed: {e}"))),
        Err(_) => Err((
            "hsm",
            format!(
                "the HSM did not answer within {} s",
                READY_TIMEOUT.as_secs()
            ),
        )),
    };
    match outcome {
        Ok(()) => "ready\n".into_response(),
        Err((reason, detail)) => not_ready(reason, detail),
    }
}

/// A 503 problem naming what is not ready.
fn not_ready(reason: &'static str, detail: String) -> Response {
    let body = serde_json::json!({
        "type": "urn:hwpass:problem:not-ready",
        "title": "Not ready",
        "status": 503,
        "reason": reason,
        "detail": detail,
    });
    typed(
        (StatusCode::SERVICE_UNAVAILABLE, body.to_string()),
        "application/problem+json",
    )
}

/// The metrics in the OpenMetrics text format; the deny list's sequence number is read now.
async fn metrics_text(State(svc): State<Shared>) -> Response {
    let register = svc.register.clone();
    // One number, not the register (an anonymous scrape must stay cheap).
    if let Ok(Ok(seq)) = tokio::task::spawn_blocking(move || register.seq()).await {
        metrics::get()
            .denylist_sequence
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
    }
    typed(
        metrics::get().render(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
}

// ---------------------------------------------------------------------------------------------
// SIGHUP: the config read again

/// The service in force and the router serving it; SIGHUP replaces both.
pub(super) struct Live {
    current: RwLock<(Shared, Router)>,
    build: fn(Shared) -> Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
}

impl Live {
    /// The service `svc`, routed by `build`; `tls` (the listener's, when it speaks TLS) gets the
    /// certificate and key files again on each reload.
    pub(super) fn new(
        svc: Shared,
        build: fn(Shared) -> Router,
        tls: Option<axum_server::tls_rustls::RustlsConfig>,
    ) -> Arc<Self> {
        let router = build(svc.clone());
        Arc::new(Self {
            current: RwLock::new((svc, router)),
            build,
            tls,
        })
    }

    fn service(&self) -> Shared {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    fn router(&self) -> Router {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// A router that hands each request to the router in force when it arrives.
    pub(super) fn app(self: &Arc<Self>) -> Router {
        let live = self.clone();
        Router::new().fallback(move |req: Request| {
            let router = live.router();
            async move {
                match router.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
        })
    }

    /// Reloads on every SIGHUP until the process ends. Registered before it returns, so a
    /// SIGHUP right after start-up is a reload, never the default action (exit).
    pub(super) fn reload_on_sighup(self: &Arc<Self>) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let live = self.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                live.reload().await;
            }
        });
        Ok(())
    }

    /// Reads the config again and switches to it, or logs why not and keeps the old one.
    async fn reload(&self) {
        let old = self.service();
        let path = old.cfg.source.clone();
        info!(config = %path.display(), "SIGHUP: reading the config again");
        let loaded = tokio::task::spawn_blocking(move || {
            let cfg = IssuerConfig::load(&path)?;
            reloaded(&old, cfg)
        })
        .await
        .unwrap_or_else(|e| Err(IssuerError::Internal(format!("the reload failed: {e}"))));
        let m = metrics::get();
        let svc = match loaded {
            Ok(svc) => svc,
            Err(e) => {
                m.reloads.get_or_create(&vec![("result", "refused")]).inc();
                error!(error = %e, "config reload refused: the service keeps running with the config it had");
                return;
            }
        };
        if let Some(tls) = &self.tls {
            if let Some((cert, key)) = &svc.cfg.serve.tls {
                match load_tls(cert, key).await {
                    Ok(config) => tls.reload_from_config(config),
                    Err(e) => {
                        m.reloads.get_or_create(&vec![("result", "refused")]).inc();
                        error!(error = %e, "config reload refused: the service keeps running with the config and certificate it had");
                        return;
                    }
                }
            }
        }
        let (admins, kid) = (svc.cfg.serve.admins.len(), svc.bundle.keys[0].0.clone());
        let svc = Arc::new(svc);
        let router = (self.build)(svc.clone());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (svc, router);
        m.reloads.get_or_create(&vec![("result", "applied")]).inc();
        info!(admins, %kid, "config reloaded: new requests use it; web sessions kept");
    }
}

/// Where the audit log and the revocation register are, to compare two configs.
fn storage_of(cfg: &IssuerConfig) -> String {
    match &cfg.storage {
        Storage::Files {
            audit_log,
            revocations,
        } => format!("files {} {}", audit_log.display(), revocations.display()),
        Storage::Postgres { store, .. } => format!("postgres {}", store.fingerprint()),
    }
}

/// The TLS settings of the listener: HTTP/1.1 only (its header-read timeout is what cuts slow
/// clients), from the PEM certificate chain and key.
pub(super) async fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, IssuerError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| {
            IssuerError::Internal(format!(
                "TLS certificate {} / key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    let mut inner = (*config.get_inner()).clone();
    inner.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(inner))
}

/// The service under `cfg`, sharing with `old` what outlives a reload: the HSM sessions, the
/// audit writer and store, the revocation register, the web sessions and sign-in states
/// already used (less the sessions of admins the new config no longer lists; a person's
/// session is held against the config in force whenever it is read), the CSRF key, the
/// per-peer request counts and the lock under which a person's passes are counted. The
/// OpenID provider is the new config's. What only a
/// restart changes keeps its old value, with a warning.
fn reloaded(old: &Service, mut cfg: IssuerConfig) -> Result<Service, IssuerError> {
    let was = &old.cfg;
    let mut restart = Vec::new();
    if cfg.key.display_uri() != was.key.display_uri() || cfg.module_env != was.module_env {
        restart.push("[key] uri and module_env");
    }
    if storage_of(&cfg) != storage_of(was) || cfg.audit_origin != was.audit_origin {
        restart.push("audit_log, revocations, [store] and [audit] origin");
    }
    if cfg.serve.listen != was.serve.listen
        || cfg.serve.hsm_sessions != was.serve.hsm_sessions
        || cfg.serve.limits.max_connections != was.serve.limits.max_connections
        || cfg.serve.limits.max_connections_per_ip != was.serve.limits.max_connections_per_ip
        || cfg.serve.limits.idle_timeout != was.serve.limits.idle_timeout
        || cfg.serve.limits.header_read_timeout != was.serve.limits.header_read_timeout
        || cfg.serve.tls.is_some() != was.serve.tls.is_some()
    {
        restart.push("[serve] listen, hsm_sessions, connection limits, timeouts, TLS on or off");
    }
    if !restart.is_empty() {
        warn!(settings = %restart.join("; "), "changed settings that take effect only after a restart; the old values stay in force until then");
        cfg.module_env = was.module_env.clone();
        cfg.audit_origin = was.audit_origin.clone();
        cfg.serve.listen = was.serve.listen;
        cfg.serve.hsm_sessions = was.serve.hsm_sessions;
        cfg.serve.limits = was.serve.limits.clone();
        if cfg.serve.tls.is_some() != was.serve.tls.is_some() {
            cfg.serve.tls = was.serve.tls.clone();
        }
    }
    // The same key (its sessions stay open), and the keys desktops are told to trust; the same
    // store, always (its connections, its TLS and the audit writer's are one pool: a changed
    // `[store]` waits for the restart the warning above asks for).
    cfg.key = was.key.clone();
    cfg.storage = was.storage.clone();
    if !anyone_can_sign_in(&cfg) {
        return Err(IssuerError::Config {
            path: cfg.source.clone(),
            detail: NOBODY_CAN_SIGN_IN.into(),
        });
    }
    let bundle = sign::trust_bundle(&cfg)?;
    // The OpenID provider as the new config names it (discovered again at the next sign-in).
    let provider = provider(&cfg)?;
    // An admin whose token the new config no longer lists (removed, or replaced under the
    // same name) is signed out everywhere (also checked whenever a session is read, as is a
    // person's provider and admin group).
    let removed: Vec<String> = was
        .serve
        .admins
        .iter()
        .filter(|(name, hash)| !cfg.serve.admins.iter().any(|(n, h)| n == name && h == hash))
        .map(|(name, _)| name.clone())
        .collect();
    if !removed.is_empty() {
        if let Err(e) = old.web.end_sessions_of(&removed) {
            warn!(error = %e, "the sessions of removed admins could not be ended now: they are refused when used");
        }
    }
    Ok(Service {
        cfg,
        pool: old.pool.clone(),
        bundle,
        audit: old.audit.clone(),
        audit_store: old.audit_store.clone(),
        register: old.register.clone(),
        web: old.web.clone(),
        csrf_key: old.csrf_key,
        tls: old.tls,
        in_flight: old.in_flight.clone(),
        // The key set may have changed: the next deny list is signed afresh.
        denylist: Default::default(),
        provider,
        // The per-person counting lock is the same one (used sign-in states are in `web`).
        self_service: old.self_service.clone(),
    })
}
