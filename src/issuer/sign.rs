//! The sign flow: verify the request, apply the policy, sign in the key store, write the audit
//! record durably, and only then hand out the pass; plus revocation and the deny list.

use super::attest::{self, seal_delivery, AttestError};
use super::config::IssuerConfig;
use super::error::IssuerError;
use super::policy::{GroupRule, PolicyError};
use super::store::{
    AuditEntry, AuditError, AuditRecord, AuditStore, AuditTpm, AuditTrust, Notary, RecordKind,
    RevocationRecord, Revoked, RevokedKind, Target,
};
use crate::core::b64::b64url_decode;
use crate::core::claims::{Attestation, BindingKind, Confirmation, HardwareBinding, PassClaims};
use crate::core::error::TokenError;
use crate::core::jwk::{Jwk, Jwks};
use crate::core::jws::{sign_pass_as, verify_request, LEEWAY_SECS, MAX_TOKEN_LEN};
use crate::core::paste::{clean, identify, DocKind};
use crate::core::signer::{random_jti, Signer};

/// The longest delivery (a pass sealed to a TPM) a desktop takes: `hwpass install -` reads at
/// most twice [`MAX_TOKEN_LEN`] from standard input (`crate::sys::read_token_arg`), and the
/// pass inside must itself fit [`MAX_TOKEN_LEN`].
pub const MAX_DELIVERY_LEN: usize = 2 * MAX_TOKEN_LEN;

/// The trust bundle as the key store holds it: the signing key first, then the `also_trusted`
/// keys. Reads public keys only, so it needs no PIN.
pub fn trust_bundle(cfg: &IssuerConfig) -> Result<Jwks, IssuerError> {
    let mut keys = vec![Jwk::new(cfg.key.public_key()?)];
    for label in &cfg.also_trusted {
        keys.push(Jwk::new(cfg.key.with_label(label).public_key()?));
    }
    Ok(cfg.trust_bundle(keys))
}

/// Whose signatures on the audit log's checkpoints count, for the log the config names: the
/// trust bundle's keys. Reads public keys only, so it needs no PIN.
pub fn audit_trust(cfg: &IssuerConfig) -> Result<AuditTrust, IssuerError> {
    let bundle = trust_bundle(cfg)?;
    let keys = bundle.keys.iter().map(|(_, jwk)| *jwk.verifying_key());
    AuditTrust::new(&cfg.audit_origin, keys).map_err(|e| AuditError::from(e).into())
}

/// Revokes the pass with this id, looked up in the audit log (for its expiry and subject; a
/// damaged log is searched line by line, so revocation works on it), then records the
/// revocation in the audit log. The register is what revokes: when the audit record cannot be
/// written (no HSM, a log that does not verify), the revocation stands and
/// [`Revoked::audit_error`] says why the record is missing.
pub fn revoke_pass(
    cfg: &IssuerConfig,
    jti: &str,
    by: &str,
    reason: Option<String>,
    now: i64,
) -> Result<Revoked, IssuerError> {
    let record = cfg.audit_store().find_issued(jti)?.ok_or_else(|| {
        IssuerError::NotFound(format!("no pass with id {jti:?} in the audit log"))
    })?;
    let target = Target::Pass {
        jti: record.jti.clone(),
        exp: record.exp,
        sub: record.sub.clone(),
    };
    let out = cfg
        .revocation_store()
        .revoke(target, by, reason.clone(), now)?;
    Ok(audited(cfg, out, RevokedKind::Pass, jti, by, reason, now))
}

/// Adds the revocation's audit record, or the reason it could not be written.
fn audited(
    cfg: &IssuerConfig,
    mut out: Revoked,
    target: RevokedKind,
    id: &str,
    by: &str,
    reason: Option<String>,
    now: i64,
) -> Revoked {
    if out.already {
        return out;
    }
    let record = RevocationRecord {
        v: 1,
        event: RecordKind::Revoke,
        time: now,
        target,
        id: id.to_string(),
        seq: out.seq,
        by: by.to_string(),
        reason,
        prev: String::new(),
    };
    let write = || -> Result<(), IssuerError> {
        let trust = audit_trust(cfg)?;
        let key = cfg.key.open()?;
        let key: &(dyn Signer + Sync) = &*key;
        let mut entry = [AuditEntry::Revoked(record)];
        cfg.audit_store()
            .append(&mut entry, &Notary::new(&trust, key))?;
        Ok(())
    };
    out.audit_error = write().err().map(|e| e.to_string());
    out
}

/// Revokes a device key: every pass bound to it, past and future.
pub fn revoke_device(
    cfg: &IssuerConfig,
    jkt: &str,
    by: &str,
    reason: Option<String>,
    now: i64,
) -> Result<Revoked, IssuerError> {
    let valid = b64url_decode(jkt).is_some_and(|b| b.len() == 32);
    if !valid {
        return Err(IssuerError::NotFound(format!(
            "{jkt:?} is not a device key thumbprint (43 base64url characters, as `hwpass status` shows)"
        )));
    }
    let target = Target::Device { jkt: jkt.into() };
    let out = cfg
        .revocation_store()
        .revoke(target, by, reason.clone(), now)?;
    Ok(audited(cfg, out, RevokedKind::Device, jkt, by, reason, now))
}

/// Signs the current deny list (revocations and trust bundle keys) with the issuer key;
/// returns its sequence number and the list.
pub fn publish_denylist(
    cfg: &IssuerConfig,
    bundle: &Jwks,
    key: &dyn Signer,
    now: i64,
) -> Result<(u64, String), IssuerError> {
    Ok(cfg.revocation_store().publish_seq(bundle, key, now)?)
}

/// A pass ready to be signed: the request verified and the policy applied.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The pass claims.
    pub claims: PassClaims,
    /// The attested TPM the pass is delivered sealed to, if the request carried evidence.
    pub deliver_to: Option<attest::Verified>,
    /// How far ahead of this issuer's clock the requesting desktop's time mark is, in seconds,
    /// when it is (its clock ran ahead once): tell the person; this pass resets the mark.
    pub clock_ahead: Option<i64>,
}

/// Verifies a request and applies the policy. Needs no HSM, so refusals cost no PIN entry.
pub fn approve(
    cfg: &IssuerConfig,
    request: &str,
    lifetime: Option<i64>,
    now: i64,
) -> Result<Approved, IssuerError> {
    approve_for(cfg, request, lifetime, now, None)
}

/// A person signed in through the OpenID provider, asking for their own pass.
#[derive(Debug, Clone, Copy)]
pub struct SelfService<'a> {
    /// Their verified identity: the only `sub` they may get a pass for.
    pub identity: &'a str,
    /// The rule of the group that lets them.
    pub group: &'a GroupRule,
}

/// [`approve`], for `person` when a person asks for themselves: the request must name them,
/// and their group's rule applies on top of the policy (binding, lifetime, attestation).
pub fn approve_for(
    cfg: &IssuerConfig,
    request: &str,
    lifetime: Option<i64>,
    now: i64,
    person: Option<SelfService<'_>>,
) -> Result<Approved, IssuerError> {
    // What mail and chat do to a pasted request is undone first; the verification stays
    // strict. Another kind of document is named for what it is.
    let request = clean(request);
    // A request that verifies is a request; only a refused one is looked at for what it is.
    let req = verify_request(&request, now).map_err(|e| match identify(&request) {
        DocKind::Request | DocKind::Unknown => e,
        found => TokenError::WrongDocument {
            found,
            expected: DocKind::Request,
        },
    })?;
    let validity = match person {
        Some(p) => {
            if req.claims.sub != p.identity {
                return Err(PolicyError::NotYours {
                    requested: req.claims.sub,
                    identity: p.identity.to_string(),
                }
                .into());
            }
            cfg.policy.decide_for(&req.claims, lifetime, now, p.group)?
        }
        None => cfg.policy.decide(&req.claims, lifetime, now)?,
    };
    let deliver_to = match (&req.claims.att, req.claims.kind) {
        (Some(_), BindingKind::Software) => return Err(AttestError::Unexpected.into()),
        (Some(ev), BindingKind::Tpm) if cfg.attestation.configured() => {
            Some(attest::verify(ev, &req.jwk, &cfg.attestation, now)?)
        }
        (Some(_), BindingKind::Tpm) => None,
        (None, BindingKind::Tpm) if cfg.attestation.require => {
            return Err(AttestError::Missing.into())
        }
        (None, _) => None,
    };
    let att = deliver_to.as_ref().map_or(Attestation::None, |v| v.att);
    if let Some(p) = person {
        p.group.check_attestation(att)?;
    }
    let claims = PassClaims {
        iss: cfg.iss.clone(),
        sub: req.claims.sub,
        aud: cfg.aud.clone(),
        iat: validity.iat,
        nbf: validity.nbf,
        exp: validity.exp,
        jti: random_jti()?,
        cnf: Confirmation {
            jkt: req.jwk.thumbprint(),
        },
        // Without attestation evidence the binding kind is the request's word only.
        hwb: HardwareBinding {
            kind: req.claims.kind,
            att,
        },
        dev: req.claims.dev,
        // Echoed so the desktop knows this pass answers its current state.
        stm: req.claims.stm,
    };
    let clock_ahead = claims
        .stm
        .map(|m| m.hw.saturating_sub(now))
        .filter(|&ahead| ahead > LEEWAY_SECS);
    Ok(Approved {
        claims,
        deliver_to,
        clock_ahead,
    })
}

/// Signs approved passes with the HSM key, appends their audit records and a checkpoint
/// (signed by `notary`) to the log, after checking the log's end against its last checkpoint.
/// Returns the passes (sealed to their TPM when attested) only once their records are
/// durable: the caller prints them after this. A log that cannot be appended or does not
/// verify stops signing: no pass is returned.
pub fn issue(
    approved: &[Approved],
    key: &dyn Signer,
    log: &dyn AuditStore,
    notary: &Notary<'_>,
    now: i64,
) -> Result<Vec<String>, IssuerError> {
    let (passes, records): (Vec<_>, Vec<_>) = approved
        .iter()
        .map(|a| sign_one(a, key, now))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    let mut entries: Vec<AuditEntry> = records.into_iter().map(AuditEntry::Issued).collect();
    log.append(&mut entries, notary)?;
    Ok(passes)
}

/// Signs one approved pass (sealing it to its TPM when attested) and makes its audit record,
/// not yet written. A pass or delivery longer than a desktop accepts is refused here, before
/// anything is audited or handed out.
pub fn sign_one(
    a: &Approved,
    key: &dyn Signer,
    now: i64,
) -> Result<(String, AuditRecord), IssuerError> {
    let c = &a.claims;
    let kid = Jwk::new(*key.verifying_key()).thumbprint();
    let pass = sign_pass_as(c, &kid, key)?;
    if pass.len() > MAX_TOKEN_LEN {
        return Err(IssuerError::TooLarge {
            what: "pass",
            len: pass.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    let pass = match &a.deliver_to {
        Some(to) => seal_delivery(&pass, to)?,
        None => pass,
    };
    if pass.len() > MAX_DELIVERY_LEN {
        return Err(IssuerError::TooLarge {
            what: "delivery",
            len: pass.len(),
            max: MAX_DELIVERY_LEN,
        });
    }
    let record = AuditRecord {
        v: 1,
        time: now,
        jti: c.jti.clone(),
        sub: c.sub.clone(),
        jkt: c.cnf.jkt.clone(),
        kind: c.hwb.kind,
        att: c.hwb.att,
        nbf: c.nbf,
        exp: c.exp,
        kid,
        dev: c.dev.clone(),
        by: None,
        idp: None,
        group: None,
        tpm: a
            .deliver_to
            .as_ref()
            .and_then(|v| v.tpm.as_ref())
            .map(|t| AuditTpm {
                manufacturer: t.manufacturer.clone(),
                model: t.model.clone(),
                version: t.version.clone(),
            }),
        prev: String::new(),
    };
    Ok((pass, record))
}
