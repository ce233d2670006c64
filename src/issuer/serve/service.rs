//! The state every handler shares, and the sign flow the page and the API both call: verify,
//! approve and sign on the blocking pool, wait for the audit commit, then answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::info;

use super::committer::Committer;
use super::metrics;
use super::problem::ApiError;
use crate::core::claims::PassClaims;
use crate::core::jwk::Jwks;
use crate::issuer::config::IssuerConfig;
use crate::issuer::error::IssuerError;
use crate::issuer::keys::pool::KeyPool;
use crate::issuer::keys::IssuerKey;
use crate::issuer::policy::GroupRule;
use crate::issuer::sign::{self, SelfService};
use crate::issuer::store::{AuditRecord, AuditStore, RevocationStore, Revoked, SessionStore};
use crate::oidc::{Person, Provider};

/// Largest request body accepted (a request is at most 8 KiB; forms carry one).
pub(super) const MAX_BODY: usize = 64 * 1024;

/// Everything a handler needs.
pub(super) struct Service {
    pub(super) cfg: IssuerConfig,
    pub(super) pool: Arc<KeyPool<Box<dyn IssuerKey>>>,
    pub(super) bundle: Jwks,
    pub(super) audit: Arc<Committer>,
    pub(super) audit_store: Arc<dyn AuditStore>,
    pub(super) register: Arc<dyn RevocationStore>,
    /// Signed-in sessions and used sign-in states: in this process, or in the database that
    /// the replicas share. Anonymous visitors have none: their login form is protected by a
    /// signed cookie instead.
    pub(super) web: Arc<dyn SessionStore>,
    /// Keys the CSRF tokens (HMAC) and the sign-in cookie: per process, or the replicas' one
    /// from the database.
    pub(super) csrf_key: [u8; 32],
    /// The listener speaks TLS.
    pub(super) tls: bool,
    /// Requests in progress, per peer address.
    pub(super) in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// The last signed deny list: its sequence number, when it was signed, the list.
    pub(super) denylist: Mutex<Option<(u64, i64, String)>>,
    /// The OpenID provider people sign in with (`[oidc]`).
    pub(super) provider: Option<Provider>,
    /// Held while a person's passes are counted and their next one signed, so two at once
    /// cannot both pass the `passes_per_day` count; shared across a SIGHUP, like the counts
    /// (they are read from the audit log).
    pub(super) self_service: Arc<tokio::sync::Mutex<()>>,
}

/// Why a config without admins, proxy or provider is refused (at start and on reload).
pub(super) const NOBODY_CAN_SIGN_IN: &str = "nobody can sign in: add [[serve.admins]] (see `hwpass-issuer admin-token`), [serve.proxy] or [oidc]";

/// Whether anybody could sign in under `cfg`: a token admin, a proxy's user or a person
/// through the OpenID provider.
pub(super) fn anyone_can_sign_in(cfg: &IssuerConfig) -> bool {
    !cfg.serve.admins.is_empty() || cfg.serve.proxy.is_some() || cfg.oidc.is_some()
}

/// The OpenID provider `[oidc]` names, through an HTTP agent of its own (`ca_file`,
/// `timeout`). It is discovered at the first sign-in, not here: the service starts (and admins
/// sign in with their tokens) while it is down. A SIGHUP builds it again from the new config.
pub(super) fn provider(cfg: &IssuerConfig) -> Result<Option<crate::oidc::Provider>, IssuerError> {
    let internal =
        |what: &str, e: &dyn std::fmt::Display| IssuerError::Internal(format!("{what}: {e}"));
    let Some(o) = &cfg.oidc else {
        return Ok(None);
    };
    let agent = crate::sys::http_agent(o.ca_file.as_deref(), o.timeout)
        .map_err(|e| internal("[oidc] ca_file", &e))?;
    crate::oidc::Provider::new(&o.issuer, agent)
        .map(Some)
        .map_err(|e| internal("[oidc] issuer", &e))
}

/// A signed deny list is reused for this long while nothing changed (an anonymous GET must
/// not cost an HSM signature each time).
const DENYLIST_REUSE_SECS: i64 = 300;

pub(super) type Shared = Arc<Service>;

/// A signed-in web session: an admin's, or a person's who signed in through the provider. The
/// session store keeps it as JSON.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Session {
    /// Who, as audit records name them (`alice` for a token admin, the identity for a person).
    pub(super) user: String,
    /// May sign for others and revoke anything.
    pub(super) admin: bool,
    /// What the provider said, for people who signed in through it.
    pub(super) person: Option<Person>,
    /// A token admin's session: the SHA-256 (hex) of the token they signed in with, so that
    /// replacing a leaked token under the same name ends the sessions opened with it.
    #[serde(default)]
    pub(super) token_sha256: Option<String>,
}

pub(super) fn now() -> Result<i64, ApiError> {
    crate::sys::now().map_err(|e| ApiError::Issuer(IssuerError::Internal(e)))
}

/// Runs `f` on tokio's blocking pool (HSM, TPM-evidence checks and file I/O stay off the async
/// workers).
pub(super) async fn blocking<R: Send + 'static>(
    svc: &Shared,
    f: impl FnOnce(&Service) -> Result<R, IssuerError> + Send + 'static,
) -> Result<R, ApiError> {
    let worker = svc.clone();
    tokio::task::spawn_blocking(move || f(&worker))
        .await
        .map_err(|e| IssuerError::Internal(format!("a signing task failed: {e}")))?
        .map_err(ApiError::from)
}

// ---------------------------------------------------------------------------------------------
// The sign flow, shared by the page and the API

/// A pass issued and audited.
#[derive(Debug)]
pub(super) struct Issued {
    pub(super) pass: String,
    pub(super) claims: PassClaims,
    pub(super) sealed: bool,
    /// The requesting desktop's clock was this far ahead once (seconds).
    pub(super) clock_ahead: Option<i64>,
}

/// Who asks for a pass, as the audit record names them.
#[derive(Debug, Clone)]
pub(super) struct Asker {
    /// `alice` (API token), `web:alice`, `proxy:bob`, or a person's verified identity.
    pub(super) by: String,
    /// The provider that vouched for them.
    pub(super) idp: Option<String>,
    /// The group that let them (its rule, or the admin group).
    pub(super) group: Option<String>,
    /// A person asking for their own pass, under their group's rule.
    pub(super) own: Option<(String, GroupRule)>,
}

impl Asker {
    /// An admin (token, proxy) signing for anyone.
    pub(super) fn admin(by: String) -> Self {
        Self {
            by,
            idp: None,
            group: None,
            own: None,
        }
    }

    fn self_service(&self) -> Option<SelfService<'_>> {
        self.own
            .as_ref()
            .map(|(identity, group)| SelfService { identity, group })
    }
}

impl Service {
    /// The asker behind a signed-in session: an admin signs for anyone; a person for
    /// themselves, within their group's rule (decided now, from the groups the provider
    /// vouched for at sign-in, so a changed policy applies at once).
    pub(super) fn asker(
        &self,
        user: &str,
        admin: bool,
        person: Option<&Person>,
        web: bool,
    ) -> Result<Asker, ApiError> {
        let Some(p) = person else {
            let by = if web {
                format!("web:{user}")
            } else {
                user.to_string()
            };
            return Ok(Asker::admin(by));
        };
        if admin {
            let group = self.admin_group_of(p);
            return Ok(Asker {
                by: p.identity.clone(),
                idp: Some(p.idp.clone()),
                group,
                own: None,
            });
        }
        let rule = self
            .cfg
            .policy
            .group_for(&p.groups)
            .map_err(|e| ApiError::Issuer(e.into()))?;
        Ok(Asker {
            by: p.identity.clone(),
            idp: Some(p.idp.clone()),
            group: Some(rule.name.clone()),
            own: Some((p.identity.clone(), rule.clone())),
        })
    }

    /// The first of `[oidc] admin_groups` the person is in.
    pub(super) fn admin_group_of(&self, p: &Person) -> Option<String> {
        let oidc = self.cfg.oidc.as_ref()?;
        oidc.admin_groups
            .iter()
            .find(|g| p.groups.contains(g))
            .cloned()
    }
}

/// The times of the passes `asker` had signed through the service (by them, via the same
/// provider).
fn passes_by(svc: &Service, asker: &Asker) -> Result<Vec<i64>, IssuerError> {
    let (records, _) = svc.audit_store.read()?;
    Ok(records
        .iter()
        .filter(|r| r.by.as_deref() == Some(asker.by.as_str()) && r.idp == asker.idp)
        .map(|r| r.time)
        .collect())
}

/// Passes left today for a person (none when unlimited or not a person).
pub(super) async fn passes_left(svc: &Shared, asker: &Asker) -> Result<Option<u32>, ApiError> {
    let Some((_, rule)) = asker.own.clone() else {
        return Ok(None);
    };
    let now = now()?;
    let asker = asker.clone();
    blocking(svc, move |svc| Ok(rule.left(&passes_by(svc, &asker)?, now))).await
}

/// Approves without signing (the review page): exactly what Sign would issue.
pub(super) async fn approve(
    svc: &Shared,
    request: String,
    asker: &Asker,
) -> Result<sign::Approved, ApiError> {
    let now = now()?;
    let asker = asker.clone();
    blocking(svc, move |svc| {
        sign::approve_for(&svc.cfg, request.trim(), None, now, asker.self_service())
    })
    .await
}

/// [`issue_unmetered`], counted in the metrics (issued by kind, refused by reason).
pub(super) async fn issue(
    svc: &Shared,
    request: String,
    lifetime: Option<i64>,
    asker: &Asker,
) -> Result<Issued, ApiError> {
    let result = issue_unmetered(svc, request, lifetime, asker).await;
    metrics::count_issue(
        result
            .as_ref()
            .map(|i| i.claims.hwb.kind.as_str())
            .map_err(|e| e.parts().1),
    );
    result
}

/// Verifies, approves and signs on the blocking pool, then waits for the audit record's
/// group commit. The pass is returned only once its record is durable. A person's passes in
/// the last day are counted first, under a lock, against their group's `passes_per_day`.
async fn issue_unmetered(
    svc: &Shared,
    request: String,
    lifetime: Option<i64>,
    asker: &Asker,
) -> Result<Issued, ApiError> {
    let _counted = match asker.own {
        Some(_) => Some(svc.self_service.lock().await),
        None => None,
    };
    let now = now()?;
    let who = asker.clone();
    let (approved, pass, mut record) = blocking(svc, move |svc| {
        let approved =
            sign::approve_for(&svc.cfg, request.trim(), lifetime, now, who.self_service())?;
        if let Some((_, rule)) = &who.own {
            rule.check_rate(&passes_by(svc, &who)?, now)?;
        }
        let (pass, record) = svc.pool.with(|key| sign::sign_one(&approved, key, now))?;
        Ok((approved, pass, record))
    })
    .await?;
    record.by = Some(asker.by.clone());
    record.idp = asker.idp.clone();
    record.group = asker.group.clone();
    let by = &asker.by;
    svc.audit.commit(record).await?;
    let c = &approved.claims;
    info!(jti = %c.jti, sub = %c.sub, kind = %c.hwb.kind.as_str(), exp = c.exp, %by, "pass issued");
    Ok(Issued {
        pass,
        sealed: approved.deliver_to.is_some(),
        clock_ahead: approved.clock_ahead,
        claims: approved.claims,
    })
}

/// Revokes a pass (by id) or a device key, for `by`.
pub(super) async fn revoke(
    svc: &Shared,
    what: Revocation,
    by: String,
) -> Result<Revoked, ApiError> {
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
/// older than [`DENYLIST_REUSE_SECS`] — or, with a store that keeps signed lists for every
/// replica (PostgreSQL), the one another replica signed.
pub(super) async fn denylist(svc: &Shared) -> Result<String, ApiError> {
    let now = now()?;
    blocking(svc, move |svc| {
        let seq = svc.register.seq()?;
        let mut cache = svc.denylist.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, at, list)) = cache.as_ref() {
            if *s == seq && (0..DENYLIST_REUSE_SECS).contains(&(now - at)) {
                return Ok(list.clone());
            }
        }
        // Publishing may itself raise the sequence number (the key set changed): cache the
        // number the list carries.
        let (seq, list) = svc.pool.with(|key| {
            svc.register
                .current_denylist(&svc.bundle, key, now, DENYLIST_REUSE_SECS)
        })?;
        *cache = Some((seq, now, list.clone()));
        Ok(list)
    })
    .await
}

/// One row of the recent-issuances list.
#[derive(Debug, Serialize)]
pub(super) struct Recent {
    #[serde(flatten)]
    pub(super) record: AuditRecord,
    /// The pass or its device key is revoked.
    pub(super) revoked: bool,
    /// Its device key is revoked.
    pub(super) device_revoked: bool,
}

/// The newest `limit` audit records, newest first, with their revocation state.
pub(super) async fn recent(svc: &Shared, limit: usize) -> Result<Vec<Recent>, ApiError> {
    recent_of(svc, None, limit).await
}

/// The newest `limit` audit records of passes for `sub` (all when none), newest first, with
/// their revocation state.
pub(super) async fn recent_of(
    svc: &Shared,
    sub: Option<String>,
    limit: usize,
) -> Result<Vec<Recent>, ApiError> {
    blocking(svc, move |svc| {
        let records = svc.audit_store.recent_issued(limit, sub.as_deref())?;
        let reg = svc.register.load()?;
        Ok(records
            .into_iter()
            .map(|record| {
                let device_revoked = reg.devices.iter().any(|d| d.jkt == record.jkt);
                Recent {
                    revoked: device_revoked || reg.passes.iter().any(|p| p.jti == record.jti),
                    device_revoked,
                    record,
                }
            })
            .collect())
    })
    .await
}

/// `POST /v1/revocations`: exactly one of `pass` and `device`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Revocation {
    #[serde(default)]
    pub(super) pass: Option<String>,
    #[serde(default)]
    pub(super) device: Option<String>,
    #[serde(default)]
    pub(super) reason: Option<String>,
}
