//! `hwpass-issuer serve`: the issuing service — a JSON API and a server-rendered web page over
//! the same sign flow as the CLI (verify request → policy → HSM → durable audit → pass).
//!
//! - tokio + axum; HTTPS through rustls when `[serve]` names a certificate and key.
//! - Every mutating endpoint needs an admin: a bearer token whose SHA-256 is in the config, or
//!   (when configured) a reverse proxy's user header, believed only from the proxy's addresses.
//!   The web page logs in with the same token and keeps a server-side session (cookie
//!   `hwpass_session`, HttpOnly, SameSite=Strict, Secure under TLS); its forms carry a CSRF
//!   token, an HMAC of the session id.
//! - HSM work runs on tokio's blocking pool, with keys from the same `KeyPool` type the
//!   batch signer uses; audit records are group-committed by one writer thread, and a pass
//!   leaves the server only after its record is fsynced.
//! - Logs (tracing) name requests, admins and pass ids, never tokens, PINs or request bodies.
//!
//! Files: [`startup`] (listening, TLS, routes, shutdown), [`auth`] (admins, proxy, sessions,
//! CSRF), [`api`] (JSON API and problem details), [`page`] (the web page), [`committer`] (the
//! audit group commit). This file holds the state they share and the sign flow they call.

mod api;
mod auth;
mod committer;
mod page;
mod startup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::info;

use self::api::{ApiError, Revocation};
use self::committer::Committer;
use super::config::IssuerConfig;
use super::error::IssuerError;
use super::keys::pool::KeyPool;
use super::keys::IssuerKey;
use super::sign;
use super::store::{AuditRecord, AuditStore, RevocationStore, Revoked};
use crate::core::claims::PassClaims;
use crate::core::jwk::Jwks;

pub use self::startup::run;

/// Largest request body accepted (a request is at most 8 KiB; forms carry one).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Most web sessions kept at once (expired ones are dropped first).
const MAX_SESSIONS: usize = 10_000;

/// Everything a handler needs.
struct Service {
    cfg: IssuerConfig,
    pool: Arc<KeyPool<Box<dyn IssuerKey>>>,
    bundle: Jwks,
    audit: Committer,
    audit_store: Arc<dyn AuditStore>,
    register: Arc<dyn RevocationStore>,
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

fn now() -> Result<i64, ApiError> {
    crate::sys::now().map_err(|e| ApiError::Issuer(IssuerError::Internal(e)))
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
        let approved = sign::approve(&svc.cfg, request.trim(), lifetime, now)?;
        let (pass, record) = svc.pool.with(|key| sign::sign_one(&approved, key, now))?;
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
async fn revoke(svc: &Shared, what: Revocation, by: String) -> Result<Revoked, ApiError> {
    let now = now()?;
    let by2 = by.clone();
    let (out, label) = blocking(svc, move |svc| match what {
        Revocation {
            pass: Some(jti),
            device: None,
            reason,
        } => {
            sign::revoke_pass(&svc.cfg, &jti, &by2, reason, now).map(|r| (r, format!("pass {jti}")))
        }
        Revocation {
            pass: None,
            device: Some(jkt),
            reason,
        } => sign::revoke_device(&svc.cfg, &jkt, &by2, reason, now)
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
        let seq = svc.register.load()?.seq;
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
            .with(|key| sign::publish_denylist(&svc.cfg, &svc.bundle, key, now))?;
        *cache = Some((seq, now, list.clone()));
        Ok(list)
    })
    .await
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
        let (records, _) = svc.audit_store.read()?;
        let reg = svc.register.load()?;
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
