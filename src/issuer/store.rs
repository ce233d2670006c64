//! The issuer's store seam: the audit log and the revocation register behind two traits,
//! [`AuditStore`] and [`RevocationStore`], so another store (a database) can hold the same
//! chain and register. [`file`] is the embedded default: files on one machine.
//!
//! The audit chain links records by [`record_hash`], a function of the record itself (its
//! canonical JSON), not of a file's line bytes.

pub(crate) mod file;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::core::claims::{Attestation, BindingKind};
use crate::core::denylist::{self, DenyList, RevokedPass};
use crate::core::jwk::{Jwks, TrustParams};
use crate::core::jws::LEEWAY_SECS;
use crate::core::signer::{SignError, Signer};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What went wrong with the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Reading, writing or syncing failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A line is not a record.
    #[error("audit log line {line} is not a valid record: {detail}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The last complete line, which the next record would chain to, is not a record.
    #[error("the last record of the audit log is not valid: {detail}")]
    LastRecord {
        /// What is wrong.
        detail: String,
    },
    /// The chain is broken: a line was edited, inserted or removed before `line`.
    #[error("audit log line {line} does not follow line {}: a record was edited, inserted or deleted", line - 1)]
    Broken {
        /// 1-based line number.
        line: usize,
    },
}

/// One issued pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Record format version.
    pub v: u32,
    /// When it was signed (Unix seconds).
    pub time: i64,
    /// Pass id.
    pub jti: String,
    /// Subject.
    pub sub: String,
    /// Device key thumbprint.
    pub jkt: String,
    /// Binding kind.
    pub kind: BindingKind,
    /// How the binding was vouched for.
    pub att: Attestation,
    /// Validity.
    pub nbf: i64,
    /// Validity.
    pub exp: i64,
    /// Issuer key.
    pub kid: String,
    /// Device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Who asked for it, when the issuing service signed it (`alice`, `web:alice`,
    /// `proxy:bob`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// [`record_hash`] of the previous record, or [`GENESIS`].
    pub prev: String,
}

/// Result of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Number of complete records.
    pub records: usize,
    /// Hex SHA-256 of the last record, or [`GENESIS`].
    pub head: String,
    /// An unterminated fragment at the end (a write cut short by a crash; never acknowledged).
    pub torn_tail: bool,
}

/// The chain hash of a record: hex SHA-256 of its canonical JSON (the serialization hwpass
/// writes: fields in declaration order, no whitespace).
pub fn record_hash(record: &AuditRecord) -> String {
    // Invariant: a record holds only strings, integers and enums, which always serialize.
    hex::encode(Sha256::digest(
        serde_json::to_vec(record).unwrap_or_default(),
    ))
}

/// An append-only, hash-chained audit log.
pub trait AuditStore: std::fmt::Debug + Send + Sync {
    /// Where it is, for messages (`audit log /var/lib/hwpass/audit.jsonl`).
    fn describe(&self) -> String;
    /// Appends `records` in order, filling in their `prev`; returns only once they are durable,
    /// and keeps one chain even when several issuers append at once.
    fn append(&self, records: &mut [AuditRecord]) -> Result<(), AuditError>;
    /// Every complete record, in order, with the chain checked.
    fn read(&self) -> Result<(Vec<AuditRecord>, ChainSummary), AuditError>;
}

/// What went wrong with the register.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// The file could not be read or written.
    #[error("revocation register {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a register.
    #[error("revocation register {path} is damaged: {detail}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The deny list could not be signed.
    #[error("{0}")]
    Key(#[from] SignError),
}

/// A revoked pass, as the register keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassEntry {
    /// Pass id.
    pub jti: String,
    /// Its expiry (after which it leaves the signed list).
    pub exp: i64,
    /// Its subject.
    pub sub: String,
    /// When it was revoked.
    pub time: i64,
    /// Who revoked it.
    pub by: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A revoked device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// RFC 7638 thumbprint of the device key.
    pub jkt: String,
    /// When it was revoked.
    pub time: i64,
    /// Who revoked it.
    pub by: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The register's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// Format version.
    pub v: u32,
    /// Sequence number of the newest deny list content.
    pub seq: u64,
    /// Key ids in the newest deny list (a change of keys is a new sequence number too).
    pub kids: Vec<String>,
    /// Revoked passes.
    pub passes: Vec<PassEntry>,
    /// Revoked device keys.
    pub devices: Vec<DeviceEntry>,
}

/// What to revoke.
#[derive(Debug, Clone)]
pub enum Target {
    /// One pass (its `exp` and `sub` from the audit log).
    Pass {
        /// Pass id.
        jti: String,
        /// Its expiry.
        exp: i64,
        /// Its subject.
        sub: String,
    },
    /// Every pass bound to a device key.
    Device {
        /// RFC 7638 thumbprint.
        jkt: String,
    },
}

/// The outcome of a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Revoked {
    /// The deny list sequence number that carries it.
    pub seq: u64,
    /// It was revoked before (nothing changed).
    pub already: bool,
}

/// The revocation register: read it, or change it atomically.
pub trait RevocationStore: std::fmt::Debug + Send + Sync {
    /// Reads the register; none yet is an empty register.
    fn load(&self) -> Result<Register, RevocationError>;

    /// Runs `change` on the register under the store's exclusive lock and stores the result
    /// when `change` returns true. Returns the register as it is afterwards.
    fn update(
        &self,
        change: &mut dyn FnMut(&mut Register) -> bool,
    ) -> Result<Register, RevocationError>;

    /// Revokes a pass or a device key; the deny list's sequence number goes up by one unless it
    /// was revoked already. Durable when this returns.
    fn revoke(
        &self,
        target: Target,
        by: &str,
        reason: Option<String>,
        now: i64,
    ) -> Result<Revoked, RevocationError> {
        let mut target = Some(target);
        let mut reason = reason;
        let mut already = false;
        let reg = self.update(&mut |reg| {
            let Some(target) = target.take() else {
                return false;
            };
            already = match &target {
                Target::Pass { jti, .. } => reg.passes.iter().any(|p| &p.jti == jti),
                Target::Device { jkt } => reg.devices.iter().any(|d| &d.jkt == jkt),
            };
            if already {
                return false;
            }
            match target {
                Target::Pass { jti, exp, sub } => reg.passes.push(PassEntry {
                    jti,
                    exp,
                    sub,
                    time: now,
                    by: by.into(),
                    reason: reason.take(),
                }),
                Target::Device { jkt } => reg.devices.push(DeviceEntry {
                    jkt,
                    time: now,
                    by: by.into(),
                    reason: reason.take(),
                }),
            }
            reg.seq += 1;
            true
        })?;
        Ok(Revoked {
            seq: reg.seq,
            already,
        })
    }

    /// Signs the current deny list: the register's revocations (passes already expired left
    /// out) and the trust bundle's keys. A change of keys since the last list raises the
    /// sequence number, so desktops take the new keys.
    fn publish(
        &self,
        bundle: &Jwks,
        signer: &dyn Signer,
        now: i64,
    ) -> Result<String, RevocationError> {
        self.publish_seq(bundle, signer, now).map(|(_, list)| list)
    }

    /// [`Self::publish`], also returning the list's sequence number.
    fn publish_seq(
        &self,
        bundle: &Jwks,
        signer: &dyn Signer,
        now: i64,
    ) -> Result<(u64, String), RevocationError> {
        // The set of keys matters, not their order (the signing key is listed first).
        let mut kids: Vec<String> = bundle.keys.iter().map(|(k, _)| k.clone()).collect();
        kids.sort();
        let reg = self.update(&mut |reg| {
            let changed = reg.kids != kids;
            if changed {
                reg.kids = kids.clone();
                reg.seq += 1;
            }
            changed
        })?;
        let params = bundle.hwpass.clone().unwrap_or(TrustParams {
            iss: String::new(),
            aud: String::new(),
        });
        let keys = match bundle.to_json().get("keys") {
            Some(serde_json::Value::Array(keys)) => keys.clone(),
            _ => Vec::new(),
        };
        let list = DenyList {
            iss: params.iss,
            aud: params.aud,
            seq: reg.seq,
            iat: now,
            keys,
            passes: reg
                .passes
                .iter()
                // Leeway: a desktop accepts a pass until exp + LEEWAY_SECS.
                .filter(|p| p.exp.saturating_add(LEEWAY_SECS) > now)
                .map(|p| RevokedPass {
                    jti: p.jti.clone(),
                    exp: p.exp,
                })
                .collect(),
            devices: reg.devices.iter().map(|d| d.jkt.clone()).collect(),
        };
        Ok((list.seq, denylist::sign(&list, signer)?))
    }
}
