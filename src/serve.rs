//! `hwpass-issuer serve`: the issuing service — a JSON API and a server-rendered web page over
//! the same sign flow as the CLI (verify request → policy → HSM → durable audit → pass).
//!
//! - tokio + axum; HTTPS through rustls when `[serve]` names a certificate and key.
//! - Every mutating endpoint needs an admin: a bearer token whose SHA-256 is in the config, or
//!   (when configured) a reverse proxy's user header, believed only from the proxy's addresses.
//!   The web page logs in with the same token and keeps a server-side session (cookie
//!   `hwpass_session`, HttpOnly, SameSite=Strict, Secure under TLS); its forms carry a CSRF
//!   token, an HMAC of the session id.
//! - HSM work runs on tokio's blocking pool, with keys from the same [`KeyPool`] type the
//!   batch signer uses; audit records are group-committed by one writer thread, and a pass
//!   leaves the server only after its record is fsynced.
//! - Logs (tracing) name requests, admins and pass ids, never tokens, PINs or request bodies.

mod page;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hmac::{Hmac, Mac as _};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::audit::{AuditLog, AuditRecord};
use crate::issuer::{self, IssuerConfig, IssuerError};
use crate::pkcs11::{Hsm, Pkcs11Key};
use crate::pool::KeyPool;
use crate::revocation::RevocationStore;
use crate::token::{self, Jwks, PassClaims};

/// Largest request body accepted (a request is at most 8 KiB; forms carry one).
const MAX_BODY: usize = 64 * 1024;
/// Most web sessions kept at once (expired ones are dropped first).
const MAX_SESSIONS: usize = 10_000;
/// Audit records per group commit at most.
const MAX_GROUP: usize = 1024;
/// The session cookie.
const COOKIE: &str = "hwpass_session";

/// Everything a handler needs.
struct Service {
    cfg: IssuerConfig,
    pool: Arc<KeyPool<Pkcs11Key>>,
    bundle: Jwks,
    audit: Committer,
    sessions: Mutex<HashMap<String, Session>>,
    csrf_key: [u8; 32],
    tls: bool,
    /// The last signed deny list: its sequence number, when it was signed, the list.
    denylist: Mutex<Option<(u64, i64, String)>>,
}

/// A signed deny list is reused for this long while nothing changed (an anonymous GET must
/// not cost an HSM signature each time).
const DENYLIST_REUSE_SECS: i64 = 300;

type Shared = Arc<Service>;

#[derive(Debug, Clone)]
struct Session {
    user: Option<String>,
    expires: i64,
}

/// Runs the service until SIGINT or SIGTERM, then stops accepting and lets requests in flight
/// finish (up to 10 s). `ready` receives the address actually listened on.
pub fn run(
    cfg: IssuerConfig,
    listen: Option<SocketAddr>,
    hsm: &Hsm,
    pin: SecretString,
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
        .map(|_| hsm.open_key(&pin))
        .collect::<Result<Vec<_>, _>>()?;
    drop(pin);
    let bundle = issuer::trust_bundle(&cfg, hsm)?;
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
    let audit = Committer::start(AuditLog::new(&cfg.audit_log));
    let svc = Arc::new(Service {
        cfg,
        pool: Arc::new(KeyPool::new(keys)),
        bundle,
        audit,
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
        .route("/v1/passes", post(api_sign))
        .route("/v1/jwks", get(api_jwks))
        .route("/v1/denylist", get(api_denylist))
        .route("/v1/revocations", post(api_revoke))
        .route("/v1/issuances", get(api_issuances))
        .route("/v1/openapi.json", get(api_openapi))
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

// ---------------------------------------------------------------------------------------------
// Errors: RFC 9457 problem details

/// Why a request failed, as the client sees it.
#[derive(Debug)]
enum ApiError {
    /// No credentials, or wrong ones.
    Unauthorized(&'static str),
    /// A form without a valid CSRF token.
    Csrf,
    /// The body is not what the endpoint takes.
    BadInput(String),
    /// No such thing.
    NotFound(String),
    /// The sign flow refused or failed.
    Issuer(IssuerError),
}

impl From<IssuerError> for ApiError {
    fn from(e: IssuerError) -> Self {
        Self::Issuer(e)
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        use IssuerError as E;
        match self {
            Self::Unauthorized(why) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
                (*why).into(),
            ),
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                "csrf",
                "Form refused",
                "the form's CSRF token is missing or wrong; reload the page and try again".into(),
            ),
            Self::BadInput(d) => (
                StatusCode::BAD_REQUEST,
                "bad-input",
                "Malformed input",
                d.clone(),
            ),
            Self::NotFound(d) => (StatusCode::NOT_FOUND, "not-found", "Not found", d.clone()),
            Self::Issuer(e) => {
                let (status, slug, title) = match e {
                    E::Request(_) => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "request-refused",
                        "Request refused",
                    ),
                    E::Attest(crate::attest::AttestError::Missing) | E::Policy(_) => {
                        (StatusCode::FORBIDDEN, "policy", "Refused by policy")
                    }
                    E::Attest(_) => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "attestation-refused",
                        "Attestation refused",
                    ),
                    E::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
                    E::Key(_) => (StatusCode::SERVICE_UNAVAILABLE, "hsm", "HSM unavailable"),
                    E::Audit(_) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "audit",
                        "Audit log failed; no pass was issued",
                    ),
                    E::Config { .. } | E::Pin(_) | E::Revocation(_) | E::Internal(_) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "Internal error",
                    ),
                };
                (status, slug, title, e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title, detail) = self.parts();
        if status.is_server_error() {
            warn!(problem = slug, %detail, "request failed");
        }
        let body = serde_json::json!({
            "type": format!("urn:hwpass:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut resp = typed((status, body.to_string()), "application/problem+json");
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hwpass\""),
            );
        }
        resp
    }
}

fn now() -> Result<i64, ApiError> {
    crate::util::now().map_err(|e| ApiError::Issuer(IssuerError::Internal(e)))
}

/// Runs `f` on tokio's blocking pool (HSM, TPM-evidence checks and file I/O stay off the async
/// workers).
async fn blocking<R: Send + 'static>(
    svc: &Shared,
    f: impl FnOnce(&Service) -> Result<R, IssuerError> + Send + 'static,
) -> Result<R, ApiError> {
    let worker = svc.clone();
    tokio::task::spawn_blocking(move || f(&worker))
        .await
        .map_err(|e| IssuerError::Internal(format!("a signing task failed: {e}")))?
        .map_err(ApiError::from)
}

/// A body with its content type.
fn typed(body: impl IntoResponse, kind: &'static str) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    resp
}

// ---------------------------------------------------------------------------------------------
// Authentication

impl Service {
    /// The admin whose bearer token this is. Every configured hash is compared, in constant
    /// time, so the answer's timing says nothing about which (if any) matched.
    fn admin_by_token(&self, token: &str) -> Option<String> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, hash) in &self.cfg.serve.admins {
            if bool::from(presented.ct_eq(hash)) && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }

    /// The user a trusted reverse proxy vouches for, if the request came from one.
    fn proxy_user(&self, peer: IpAddr, headers: &HeaderMap) -> Option<String> {
        let (name, trusted) = self.cfg.serve.proxy.as_ref()?;
        let value = headers.get(name.as_str())?;
        if !trusted.contains(&peer) {
            warn!(%peer, header = %name, "ignoring a proxy user header from an address not in [serve.proxy] trusted");
            return None;
        }
        value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 256)
            .map(|v| format!("proxy:{v}"))
    }

    /// The admin behind an API call: a bearer token, or a trusted proxy's header.
    fn api_user(&self, peer: IpAddr, headers: &HeaderMap) -> Result<String, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or(ApiError::Unauthorized(
                    "the Authorization header must be `Bearer <admin token>`",
                ))?;
            return self
                .admin_by_token(token.trim())
                .ok_or(ApiError::Unauthorized(
                    "the bearer token is not an admin token of this issuer",
                ));
        }
        self.proxy_user(peer, headers).ok_or(ApiError::Unauthorized(
            "this endpoint needs an admin bearer token",
        ))
    }

    fn csrf_token(&self, sid: &str) -> String {
        // Invariant: HMAC accepts keys of any length.
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.csrf_key).unwrap_or_else(|_| unreachable!());
        mac.update(sid.as_bytes());
        token::b64url(&mac.finalize().into_bytes())
    }

    fn csrf_ok(&self, sid: &str, given: &str) -> bool {
        bool::from(self.csrf_token(sid).as_bytes().ct_eq(given.as_bytes()))
    }
}

fn session_key(sid: &str) -> String {
    hex::encode(Sha256::digest(sid.as_bytes()))
}

fn cookie_sid(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 43)
}

/// A browser's session: found from its cookie, or new (then the response sets the cookie).
#[derive(Debug)]
struct WebSession {
    sid: String,
    fresh: bool,
    user: Option<String>,
}

impl Service {
    fn web_session(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<WebSession, ApiError> {
        let proxy = self.proxy_user(peer, headers);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sid) = cookie_sid(headers) {
            if let Some(s) = sessions.get(&session_key(&sid)) {
                if s.expires > now {
                    let user = s.user.clone().or(proxy);
                    return Ok(WebSession {
                        sid,
                        fresh: false,
                        user,
                    });
                }
            }
        }
        let sid = self.new_session(&mut sessions, None, now)?;
        Ok(WebSession {
            sid,
            fresh: true,
            user: proxy,
        })
    }

    fn new_session(
        &self,
        sessions: &mut HashMap<String, Session>,
        user: Option<String>,
        now: i64,
    ) -> Result<String, ApiError> {
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires > now);
            if sessions.len() >= MAX_SESSIONS {
                // Anonymous sessions go first; admins stay logged in.
                sessions.retain(|_, s| s.user.is_some());
            }
        }
        let mut raw = [0u8; 32];
        getrandom::getrandom(&mut raw)
            .map_err(|e| ApiError::Issuer(IssuerError::Internal(format!("random: {e}"))))?;
        let sid = token::b64url(&raw);
        sessions.insert(
            session_key(&sid),
            Session {
                user,
                expires: now + self.cfg.serve.session_lifetime,
            },
        );
        Ok(sid)
    }

    /// Logs a session in: a new session id replaces the old one (no session fixation).
    fn promote(&self, old_sid: &str, user: String, now: i64) -> Result<String, ApiError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(&session_key(old_sid));
        self.new_session(&mut sessions, Some(user), now)
    }

    fn end_session(&self, sid: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(&session_key(sid));
    }

    fn set_cookie(&self, sid: &str) -> HeaderValue {
        let secure = if self.tls { "; Secure" } else { "" };
        let v = format!(
            "{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            self.cfg.serve.session_lifetime
        );
        // Invariant: the session id is base64url and the rest is ASCII.
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

// ---------------------------------------------------------------------------------------------
// The sign flow, shared by the page and the API

/// A pass issued and audited.
#[derive(Debug)]
struct Issued {
    pass: String,
    claims: PassClaims,
    sealed: bool,
}

/// Verifies, approves and signs on the blocking pool, then waits for the audit record's
/// group commit. The pass is returned only once its record is durable.
async fn issue(
    svc: &Shared,
    request: String,
    lifetime: Option<i64>,
    by: &str,
) -> Result<Issued, ApiError> {
    let now = now()?;
    let (approved, pass, mut record) = blocking(svc, move |svc| {
        let approved = issuer::approve(&svc.cfg, request.trim(), lifetime, now)?;
        let (pass, record) = svc.pool.with(|key| issuer::sign_one(&approved, key, now))?;
        Ok((approved, pass, record))
    })
    .await?;
    record.by = Some(by.to_string());
    svc.audit.commit(record).await?;
    let c = &approved.claims;
    info!(jti = %c.jti, sub = %c.sub, kind = %c.hwb.kind.as_str(), exp = c.exp, %by, "pass issued");
    Ok(Issued {
        pass,
        sealed: approved.deliver_to.is_some(),
        claims: approved.claims,
    })
}

/// Revokes a pass (by id) or a device key, for `by`.
async fn revoke(
    svc: &Shared,
    what: Revocation,
    by: String,
) -> Result<crate::revocation::Revoked, ApiError> {
    let now = now()?;
    let by2 = by.clone();
    let (out, label) = blocking(svc, move |svc| match what {
        Revocation {
            pass: Some(jti),
            device: None,
            reason,
        } => issuer::revoke_pass(&svc.cfg, &jti, &by2, reason, now)
            .map(|r| (r, format!("pass {jti}"))),
        Revocation {
            pass: None,
            device: Some(jkt),
            reason,
        } => issuer::revoke_device(&svc.cfg, &jkt, &by2, reason, now)
            .map(|r| (r, format!("device {jkt}"))),
        _ => Err(IssuerError::NotFound(
            "give exactly one of `pass` (a pass id) and `device` (a device key thumbprint)".into(),
        )),
    })
    .await?;
    info!(what = %label, seq = out.seq, already = out.already, by = %by, "revoked");
    Ok(out)
}

/// The signed deny list as of now: re-signed when the register changed or the last copy is
/// older than [`DENYLIST_REUSE_SECS`].
async fn denylist(svc: &Shared) -> Result<String, ApiError> {
    let now = now()?;
    blocking(svc, move |svc| {
        let seq = RevocationStore::new(&svc.cfg.revocations).load()?.seq;
        let mut cache = svc.denylist.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, at, list)) = cache.as_ref() {
            if *s == seq && (0..DENYLIST_REUSE_SECS).contains(&(now - at)) {
                return Ok(list.clone());
            }
        }
        // Publishing may itself raise the sequence number (the key set changed): cache the
        // number the list carries.
        let (seq, list) = svc
            .pool
            .with(|key| issuer::publish_denylist(&svc.cfg, &svc.bundle, key, now))?;
        *cache = Some((seq, now, list.clone()));
        Ok(list)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Group commit of audit records

type Reply = oneshot::Sender<Result<(), String>>;

/// One thread appends audit records: whatever arrived while the last fsync ran goes into the
/// next append, so concurrent issuances share fsyncs without any of them returning early.
struct Committer {
    tx: std::sync::mpsc::Sender<(AuditRecord, Reply)>,
}

impl Committer {
    fn start(log: AuditLog) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<(AuditRecord, Reply)>();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                let (mut records, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let result = log.append(&mut records).map_err(|e| e.to_string());
                for reply in replies {
                    // A client that went away no longer waits; its record is durable anyway.
                    let _ = reply.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    async fn commit(&self, record: AuditRecord) -> Result<(), ApiError> {
        let (reply, done) = oneshot::channel();
        let stopped = || ApiError::Issuer(IssuerError::Internal("the audit writer stopped".into()));
        self.tx.send((record, reply)).map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?.map_err(|e| {
            ApiError::Issuer(IssuerError::Audit(crate::audit::AuditError::Io {
                path: "audit log".into(),
                source: std::io::Error::other(e),
            }))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// JSON API

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    request: String,
    #[serde(default)]
    valid_for: Option<String>,
}

#[derive(Serialize)]
struct SignReply {
    pass: String,
    /// The pass is wrapped to the requesting TPM (`hwpass-dlv1.`), openable only there.
    sealed_to_tpm: bool,
    jti: String,
    sub: String,
    kind: &'static str,
    att: crate::token::Attestation,
    nbf: i64,
    exp: i64,
}

fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::BadInput(
            "send Content-Type: application/json".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadInput(format!("body: {e}")))
}

async fn api_sign(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let by = svc.api_user(peer.ip(), &headers)?;
    let b: SignBody = parse_json(&headers, &body)?;
    let lifetime = b
        .valid_for
        .as_deref()
        .map(crate::util::parse_duration)
        .transpose()
        .map_err(|e| ApiError::BadInput(format!("valid_for: {e}")))?;
    let out = issue(&svc, b.request, lifetime, &by).await?;
    let c = &out.claims;
    let reply = SignReply {
        sealed_to_tpm: out.sealed,
        jti: c.jti.clone(),
        sub: c.sub.clone(),
        kind: c.hwb.kind.as_str(),
        att: c.hwb.att,
        nbf: c.nbf,
        exp: c.exp,
        pass: out.pass,
    };
    Ok((StatusCode::CREATED, axum::Json(reply)).into_response())
}

async fn api_jwks(State(svc): State<Shared>) -> Response {
    typed(svc.bundle.to_json().to_string(), "application/jwk-set+json")
}

async fn api_denylist(State(svc): State<Shared>) -> Result<Response, ApiError> {
    let list = denylist(&svc).await?;
    Ok(typed(format!("{list}\n"), "application/jwt"))
}

/// `POST /v1/revocations`: exactly one of `pass` and `device`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revocation {
    #[serde(default)]
    pass: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn api_revoke(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let by = svc.api_user(peer.ip(), &headers)?;
    let what: Revocation = parse_json(&headers, &body)?;
    if what.reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err(ApiError::BadInput("reason: at most 500 characters".into()));
    }
    let out = revoke(&svc, what, by).await?;
    let status = if out.already {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(out)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn api_issuances(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    svc.api_user(peer.ip(), &headers)?;
    let Query(q) = query.map_err(|e| ApiError::BadInput(e.body_text()))?;
    let limit = q.limit.unwrap_or(50).min(1000);
    let rows = recent(&svc, limit).await?;
    Ok(axum::Json(rows).into_response())
}

async fn api_openapi() -> Response {
    typed(include_str!("serve/openapi.json"), "application/json")
}

/// One row of the recent-issuances list.
#[derive(Debug, Serialize)]
struct Recent {
    #[serde(flatten)]
    record: AuditRecord,
    revoked: bool,
}

/// The newest `limit` audit records, newest first, with their revocation state.
async fn recent(svc: &Shared, limit: usize) -> Result<Vec<Recent>, ApiError> {
    blocking(svc, move |svc| {
        let (records, _) = AuditLog::new(&svc.cfg.audit_log).read()?;
        let reg = RevocationStore::new(&svc.cfg.revocations).load()?;
        Ok(records
            .into_iter()
            .rev()
            .take(limit)
            .map(|record| Recent {
                revoked: reg.passes.iter().any(|p| p.jti == record.jti)
                    || reg.devices.iter().any(|d| d.jkt == record.jkt),
                record,
            })
            .collect())
    })
    .await
}

/// Form extraction with the refusal as problem details (axum's default is plain text).
fn form<T>(f: Result<Form<T>, FormRejection>) -> Result<T, ApiError> {
    f.map(|Form(v)| v)
        .map_err(|e| ApiError::BadInput(e.body_text()))
}
