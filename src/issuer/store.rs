//! The issuer's store seam: the audit log and the revocation register behind two traits,
//! [`AuditStore`] and [`RevocationStore`], so another store (a database) can hold the same
//! log and register. [`file`] is the embedded default: files on one machine.
//!
//! The audit log is a list of entries ([`AuditEntry`]: an issued pass, or a revocation). Each
//! entry names the [`entry_hash`] of the one before (a hash chain), and the entries are the
//! leaves of an RFC 6962 Merkle tree whose root a signed checkpoint ([`checkpoint`]) covers.
//! Every append checks the end of the log against its last checkpoint and stores a new
//! checkpoint covering the new entries, signed by the issuer key; [`verify_log`] checks every
//! entry. Both are functions of the entries (their canonical JSON), not of a file's bytes, so
//! any store can hold the same log.
//!
//! [`postgres`] holds the same log and register in PostgreSQL for several replicas: their
//! appends only add entries, and one of them at a time signs the checkpoints
//! ([`AuditStore::checkpointer`]).

pub(crate) mod checkpoint;
pub(crate) mod file;
pub(crate) mod memory;
pub(crate) mod postgres;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use checkpoint::{
    AuditTrust, Checkpoint, CheckpointError, Frontier, Hash, Notary, NotaryError,
};
pub use postgres::DbError;

use crate::core::claims::{Attestation, BindingKind};
use crate::core::denylist::{self, DenyList, RevokedPass};
use crate::core::jwk::{Jwks, TrustParams};
use crate::core::jws::LEEWAY_SECS;
use crate::core::signer::{SignError, Signer};
use checkpoint::leaf_hash;

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
    /// A line is not an entry, or not in the canonical form hwpass writes.
    #[error("audit log line {line} is not a valid record: {detail}")]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        detail: String,
    },
    /// The chain is broken: a line was edited, inserted or removed before `line`.
    #[error("audit log line {line} does not follow line {}: a record was edited, inserted or deleted", line.saturating_sub(1))]
    Broken {
        /// 1-based line number.
        line: u64,
    },
    /// The log has entries but no checkpoint covers them.
    #[error("the audit log has {records} records but no checkpoint: its checkpoint file was deleted, or the log was written before checkpoints")]
    NoCheckpoint {
        /// Entries in the log.
        records: u64,
    },
    /// The log holds fewer entries than its last checkpoint covers.
    #[error("the audit log's last checkpoint covers {covered} records but the log {}: records were cut off", match present { Some(n) => format!("has only {n}"), None => "is shorter".to_string() })]
    Cut {
        /// Entries the checkpoint covers.
        covered: u64,
        /// Complete entries present, when known.
        present: Option<u64>,
    },
    /// The first `size` entries do not hash to the checkpoint's root.
    #[error("the first {size} records do not match the signed checkpoint that covers them: a record was edited, deleted, inserted, reordered or forged")]
    Mismatch {
        /// Entries the checkpoint covers.
        size: u64,
    },
    /// Lines after the last checkpoint that no append of hwpass wrote.
    #[error("{count} line(s) after the {after} records of the last checkpoint are not covered by any checkpoint: written by something other than hwpass, or the checkpoint file was rolled back")]
    Uncovered {
        /// Lines not covered (an incomplete last line counts as one).
        count: u64,
        /// Entries the last checkpoint covers.
        after: u64,
    },
    /// The log does not extend a checkpoint saved elsewhere (`audit verify --against`).
    #[error("the log does not extend the saved checkpoint of {size} records: records it covered were cut, edited or replaced")]
    Inconsistent {
        /// Entries the saved checkpoint covers.
        size: u64,
    },
    /// A checkpoint note was refused.
    #[error("audit checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The store's own bookkeeping (the checkpoint file) is damaged.
    #[error("audit checkpoint file {path}: {detail}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The new checkpoint could not be signed.
    #[error("the audit checkpoint could not be signed: {0}")]
    Sign(#[from] SignError),
    /// The same failure, reported to everyone whose entries were in one group commit.
    #[error(transparent)]
    Shared(Arc<AuditError>),
    /// The database holding the log (PostgreSQL) failed or refused.
    #[error("audit log: {0}")]
    Database(#[from] DbError),
    /// The log's entries are not numbered 0, 1, 2, … in order (PostgreSQL): an entry was
    /// deleted or a position changed.
    #[error("audit log position {found} where {expected} was due: an entry was deleted, inserted or renumbered")]
    Position {
        /// The position the next entry must have.
        expected: u64,
        /// The position it has.
        found: u64,
    },
    /// A checkpoint signer found the log inconsistent and stopped every replica's appends
    /// until a person checks it (`audit verify`, then `audit seal`).
    #[error("audit log stopped: {0}")]
    Stopped(String),
}

impl From<NotaryError> for AuditError {
    fn from(e: NotaryError) -> Self {
        match e {
            NotaryError::Checkpoint(c) => Self::Checkpoint(c),
            NotaryError::Sign(s) => Self::Sign(s),
        }
    }
}

impl AuditError {
    /// The failure itself, through [`AuditError::Shared`].
    pub fn cause(&self) -> &AuditError {
        match self {
            Self::Shared(inner) => inner.cause(),
            other => other,
        }
    }

    /// The store could not be reached for a while (a database restarting): nothing is known
    /// to be wrong with the log, and the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self.cause(), Self::Database(d) if d.is_transient())
    }
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
    /// `proxy:bob`, or a person's verified identity when they signed in through the OpenID
    /// provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The OpenID provider (`iss`) that vouched for `by`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
    /// The provider group whose `[[policy.group]]` rule allowed it (or the admin group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The TPM the pass was sealed to, as its EK certificate names it (attested passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<AuditTpm>,
    /// [`record_hash`] of the previous record, or [`GENESIS`].
    pub prev: String,
}

/// The TPM behind an attested pass, from its EK certificate's subject alternative name (TCG EK
/// Credential Profile: `tcg-at-tpmManufacturer`, `tcg-at-tpmModel`, `tcg-at-tpmVersion`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditTpm {
    /// `id:` and the TCG vendor ID in hex, e.g. `id:494E5443`.
    pub manufacturer: String,
    /// The vendor's model name.
    pub model: String,
    /// `id:` and the firmware version in hex.
    pub version: String,
}

/// The record kind of a [`RevocationRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// A pass or device key was revoked.
    Revoke,
}

/// What a [`RevocationRecord`] revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
#[serde(rename_all = "lowercase")]
pub enum RevokedKind {
    /// One pass, by its id.
    Pass,
    /// A device key, by its thumbprint.
    Device,
}

/// A revocation, as the audit log records it (record kind `revoke`, format version 1). The
/// register holds the revocation itself; this entry makes it part of the signed history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationRecord {
    /// Record format version of this kind.
    pub v: u32,
    /// The record kind: `revoke`.
    pub event: RecordKind,
    /// When it was revoked (Unix seconds).
    pub time: i64,
    /// A pass or a device key.
    pub target: RevokedKind,
    /// The pass id or device key thumbprint.
    pub id: String,
    /// The deny list sequence number that carries it.
    pub seq: u64,
    /// Who revoked it.
    pub by: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// [`entry_hash`] of the previous entry, or [`GENESIS`].
    pub prev: String,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
#[serde(untagged)]
pub enum AuditEntry {
    /// A pass was issued.
    Issued(AuditRecord),
    /// A pass or device key was revoked.
    Revoked(RevocationRecord),
}

/// The format versions this build reads, for each record kind.
const RECORD_VERSION: u32 = 1;

impl AuditEntry {
    /// The hash of the entry before it.
    pub fn prev(&self) -> &str {
        match self {
            Self::Issued(r) => &r.prev,
            Self::Revoked(r) => &r.prev,
        }
    }

    /// Sets the hash of the entry before it.
    pub fn set_prev(&mut self, prev: String) {
        match self {
            Self::Issued(r) => r.prev = prev,
            Self::Revoked(r) => r.prev = prev,
        }
    }

    /// When it was written.
    pub fn time(&self) -> i64 {
        match self {
            Self::Issued(r) => r.time,
            Self::Revoked(r) => r.time,
        }
    }

    /// Its canonical JSON: the serialization hwpass writes (fields in declaration order, no
    /// whitespace), the leaf of the Merkle tree and the input of [`entry_hash`].
    pub fn canonical(&self) -> Vec<u8> {
        // Invariant: entries hold only strings, integers and enums, which always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses one line (without its newline); it must be in canonical form, so that any change
    /// to its bytes changes its hash.
    pub fn parse(line: &[u8]) -> Result<Self, String> {
        let entry = match serde_json::from_slice::<AuditRecord>(line) {
            Ok(r) => Self::Issued(r),
            Err(issued) => match serde_json::from_slice::<RevocationRecord>(line) {
                Ok(r) => Self::Revoked(r),
                Err(revoked) => {
                    let revocation =
                        std::str::from_utf8(line).is_ok_and(|l| l.contains("\"event\":"));
                    return Err(if revocation { revoked } else { issued }.to_string());
                }
            },
        };
        let v = match &entry {
            Self::Issued(r) => r.v,
            Self::Revoked(r) => r.v,
        };
        if v != RECORD_VERSION {
            return Err(format!(
                "record format version {v} is not one this hwpass reads"
            ));
        }
        if entry.canonical() != line {
            return Err(
                "not in the canonical form hwpass writes (the line was re-encoded or edited)"
                    .into(),
            );
        }
        Ok(entry)
    }

    /// The issued pass, if that is what it records.
    pub fn issued(&self) -> Option<&AuditRecord> {
        match self {
            Self::Issued(r) => Some(r),
            Self::Revoked(_) => None,
        }
    }
}

/// The chain hash of an entry: hex SHA-256 of its canonical JSON.
pub fn entry_hash(entry: &AuditEntry) -> String {
    hex::encode(Sha256::digest(entry.canonical()))
}

/// The chain hash of an issuance record: hex SHA-256 of its canonical JSON (the serialization
/// hwpass writes: fields in declaration order, no whitespace).
pub fn record_hash(record: &AuditRecord) -> String {
    // Invariant: a record holds only strings, integers and enums, which always serialize.
    hex::encode(Sha256::digest(
        serde_json::to_vec(record).unwrap_or_default(),
    ))
}

/// Result of reading the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Number of complete records.
    pub records: usize,
    /// Hex SHA-256 of the last record, or [`GENESIS`].
    pub head: String,
    /// An unterminated fragment at the end (a write cut short by a crash; never acknowledged).
    pub torn_tail: bool,
}

/// An append that did not finish (a crash): the checkpoint it signed before writing, and every
/// entry line after the last finished checkpoint that this checkpoint covers. The next append
/// completes it; [`verify_log`] accepts the lines of it that are present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAppend {
    /// The signed checkpoint note.
    pub note: String,
    /// The entry lines (canonical JSON) it adds to the last finished checkpoint.
    pub lines: Vec<Vec<u8>>,
}

/// The whole log as a store holds it, for [`verify_log`].
#[derive(Debug, Clone)]
pub struct LogContents {
    /// Every complete entry, in order, chain checked.
    pub entries: Vec<AuditEntry>,
    /// The RFC 6962 leaf hash of each entry's canonical JSON.
    pub leaves: Vec<Hash>,
    /// The hash of the last entry, or [`GENESIS`].
    pub head: String,
    /// An incomplete last line, if any.
    pub fragment: Option<Vec<u8>>,
    /// The last checkpoint note.
    pub checkpoint: Option<String>,
    /// An append that did not finish.
    pub pending: Option<PendingAppend>,
}

impl LogContents {
    /// The chain summary.
    pub fn summary(&self) -> ChainSummary {
        ChainSummary {
            records: self.entries.len(),
            head: self.head.clone(),
            torn_tail: self.fragment.is_some(),
        }
    }
}

/// What [`verify_log`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Complete entries.
    pub records: u64,
    /// Hash of the last entry, or [`GENESIS`].
    pub head: String,
    /// The last checkpoint, verified (none only for an empty log).
    pub checkpoint: Option<Checkpoint>,
    /// Entries after it that an unfinished append wrote: covered by the checkpoint that append
    /// signed, and completed by the next append.
    pub pending: u64,
    /// An incomplete last line of that unfinished append (the next append cuts it off).
    pub torn_tail: bool,
    /// Checkpoints saved elsewhere that the log was checked against.
    pub against: Vec<Checkpoint>,
    /// Entries after the last checkpoint that no checkpoint covers yet: in a store whose
    /// checkpoints a leader signs after the appends (PostgreSQL), the newest entries until its
    /// next round. Always 0 for the file store, which refuses uncovered entries.
    pub uncovered: u64,
}

/// Checks the whole log: the chain (already checked by the store as it read), that the entries
/// up to the last checkpoint hash to its root and that a trusted key signed it, that nothing
/// follows it but what an unfinished append of hwpass wrote, and that the log extends each of
/// the `saved` checkpoints (notes kept elsewhere). With `allow` it tolerates a missing
/// checkpoint and entries after the last one (for `audit seal`, after a person reviewed them).
pub fn verify_log(
    log: &LogContents,
    trust: &AuditTrust,
    saved: &[String],
    allow_uncovered: bool,
) -> Result<Verified, AuditError> {
    let n = log.leaves.len() as u64;
    let checkpoint = log
        .checkpoint
        .as_deref()
        .map(|note| trust.open(note))
        .transpose()?;
    let covered = checkpoint.as_ref().map_or(0, |c| c.size);
    if checkpoint.is_none() && n > 0 && log.pending.is_none() && !allow_uncovered {
        return Err(AuditError::NoCheckpoint { records: n });
    }
    if n < covered {
        return Err(AuditError::Cut {
            covered,
            present: Some(n),
        });
    }
    let against = saved
        .iter()
        .map(|note| trust.open(note))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(c) = against.iter().find(|c| c.size > n) {
        return Err(AuditError::Cut {
            covered: c.size,
            present: Some(n),
        });
    }
    let mut frontier = Frontier::new();
    let mut at_checkpoint = frontier.clone();
    let check = |frontier: &Frontier| -> Result<(), AuditError> {
        let size = frontier.size();
        if let Some(c) = &checkpoint {
            if c.size == size && c.root != frontier.root() {
                return Err(AuditError::Mismatch { size });
            }
        }
        if let Some(c) = against
            .iter()
            .find(|c| c.size == size && c.root != frontier.root())
        {
            return Err(AuditError::Inconsistent { size: c.size });
        }
        Ok(())
    };
    check(&frontier)?;
    for leaf in &log.leaves {
        frontier.push(leaf);
        check(&frontier)?;
        if frontier.size() == covered {
            at_checkpoint = frontier.clone();
        }
    }
    let extra = n - covered;
    let mut pending = 0;
    match &log.pending {
        Some(p) => {
            let pc = trust.open(&p.note)?;
            let leaves: Vec<Hash> = p.lines.iter().map(|l| leaf_hash(l)).collect();
            let present = &log.leaves[covered as usize..];
            let fragment_fits = log.fragment.as_ref().is_none_or(|f| {
                p.lines
                    .get(present.len())
                    .is_some_and(|next| next.starts_with(f))
            });
            if present.len() > leaves.len() || present != &leaves[..present.len()] || !fragment_fits
            {
                return Err(AuditError::Uncovered {
                    count: extra + u64::from(log.fragment.is_some()),
                    after: covered,
                });
            }
            let mut tree = at_checkpoint;
            for leaf in &leaves {
                tree.push(leaf);
            }
            if tree.size() != pc.size || tree.root() != pc.root {
                return Err(AuditError::Mismatch { size: pc.size });
            }
            pending = extra;
        }
        None if (extra > 0 || log.fragment.is_some()) && !allow_uncovered => {
            return Err(AuditError::Uncovered {
                count: extra + u64::from(log.fragment.is_some()),
                after: covered,
            })
        }
        None => {}
    }
    Ok(Verified {
        records: n,
        head: log.head.clone(),
        checkpoint,
        pending,
        torn_tail: log.fragment.is_some(),
        against,
        uncovered: if log.pending.is_some() { 0 } else { extra },
    })
}

/// An append-only audit log with signed checkpoints.
pub trait AuditStore: std::fmt::Debug + Send + Sync {
    /// Where it is, for messages (`audit log /var/lib/hwpass/audit.jsonl`).
    fn describe(&self) -> String;

    /// Appends `entries` in order, filling in their `prev`, and a checkpoint covering the log
    /// with them, signed by `notary` and dated at the newest entry's time. First checks that
    /// the log's end matches its last checkpoint (and completes an append a crash interrupted);
    /// refuses to append to a log that does not. Returns only once entries and checkpoint are
    /// durable, and keeps one log when several issuers append at once.
    fn append(
        &self,
        entries: &mut [AuditEntry],
        notary: &Notary<'_>,
    ) -> Result<Checkpoint, AuditError>;

    /// Every complete entry, in order, with the chain checked, and the stored checkpoints (not
    /// yet verified: see [`verify_log`]).
    fn load(&self) -> Result<LogContents, AuditError>;

    /// Whether an append could be stored now, found out without storing one (the service's
    /// `/readyz`, `config check`): the store is reachable and this process may write to it.
    fn writable(&self) -> Result<(), AuditError>;

    /// Checks the whole log with [`verify_log`] (and whatever the store keeps beside it).
    fn verify(&self, trust: &AuditTrust, saved: &[String]) -> Result<Verified, AuditError> {
        verify_log(&self.load()?, trust, saved, false)
    }

    /// Signs a checkpoint covering every entry now in the log, after [`verify_log`] (a missing
    /// checkpoint and entries after the last one allowed): for a log written before
    /// checkpoints, or entries a person reviewed.
    fn seal(&self, notary: &Notary<'_>) -> Result<Verified, AuditError>;

    /// The issuance record of pass `jti`, searched leniently (lines that do not parse and a
    /// broken chain are skipped), so revocation works on a damaged log.
    fn find_issued(&self, jti: &str) -> Result<Option<AuditRecord>, AuditError>;

    /// Checks, without changing anything, that this build can use the store as it is (the
    /// database schema's version): a replica calls it as it starts.
    fn check_ready(&self) -> Result<(), AuditError> {
        Ok(())
    }

    /// Appends `entries` like [`Self::append`], but leaves the checkpoint to the store's
    /// [`Self::checkpointer`] when it has one; stores without one sign it here, as `append`.
    fn append_entries(
        &self,
        entries: &mut [AuditEntry],
        notary: &Notary<'_>,
    ) -> Result<(), AuditError> {
        self.append(entries, notary).map(|_| ())
    }

    /// For a store shared by several replicas: what signs the checkpoints, one replica at a
    /// time, after [`Self::append_entries`]. `None` when each append signs its own.
    fn checkpointer(&self) -> Option<Box<dyn Checkpointer>> {
        None
    }

    /// The newest `limit` issuance records (of passes for `sub`, when given), newest first.
    fn recent_issued(
        &self,
        limit: usize,
        sub: Option<&str>,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let (records, _) = self.read()?;
        Ok(records
            .into_iter()
            .rev()
            .filter(|r| sub.is_none_or(|s| s == r.sub))
            .take(limit)
            .collect())
    }

    /// Every issuance record, in order, with the chain checked.
    fn read(&self) -> Result<(Vec<AuditRecord>, ChainSummary), AuditError> {
        let log = self.load()?;
        let summary = log.summary();
        let records = log
            .entries
            .into_iter()
            .filter_map(|e| match e {
                AuditEntry::Issued(r) => Some(r),
                AuditEntry::Revoked(_) => None,
            })
            .collect();
        Ok((records, summary))
    }
}

/// Signs the checkpoints of a log that several replicas append to: one of them at a time (the
/// leader) signs a checkpoint covering the entries the others appended, after checking them;
/// when it stops, another takes over.
pub trait Checkpointer: std::fmt::Debug + Send {
    /// One turn: leads if no other replica does, and while leading signs a checkpoint covering
    /// every entry not yet covered (after checking them against the last checkpoint). An
    /// entry that does not check stops the appends of every replica
    /// ([`AuditError::Stopped`]).
    fn round(&mut self, notary: &Notary<'_>) -> Result<Round, AuditError>;

    /// How long to wait between turns.
    fn interval(&self) -> Duration;
}

/// What a [`Checkpointer::round`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Round {
    /// Another replica leads.
    Follower,
    /// This replica leads; the checkpoint it signed, if there were new entries.
    Leader(Option<Checkpoint>),
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
    /// The deny list sequence number cannot go higher: the register is damaged (a real
    /// register never comes near it). Desktops refuse a list whose number went down.
    #[error("revocation register {path}: the deny list sequence number {seq} cannot be raised")]
    SequenceExhausted {
        /// The register.
        path: PathBuf,
        /// Its sequence number.
        seq: u64,
    },
    /// The database holding the register (PostgreSQL) failed or refused.
    #[error("revocation register: {0}")]
    Database(#[from] DbError),
}

impl RevocationError {
    /// The store could not be reached for a while: the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database(d) if d.is_transient())
    }

    /// The store can be read but not changed here (a read-only standby).
    pub fn is_read_only(&self) -> bool {
        matches!(self, Self::Database(d) if d.is_read_only())
    }
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revoked {
    /// The deny list sequence number that carries it.
    pub seq: u64,
    /// It was revoked before (nothing changed).
    pub already: bool,
    /// The revocation is in force, but its audit record could not be written: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_error: Option<String>,
}

/// The revocation register: read it, or change it atomically.
pub trait RevocationStore: std::fmt::Debug + Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> PathBuf;

    /// Reads the register; none yet is an empty register.
    fn load(&self) -> Result<Register, RevocationError>;

    /// The register's sequence number (cheaper than [`Self::load`] where the store can).
    fn seq(&self) -> Result<u64, RevocationError> {
        Ok(self.load()?.seq)
    }

    /// The deny list to hand out now: a list this store keeps (signed by any replica) when it
    /// carries the register's current sequence number and is younger than `reuse` seconds,
    /// else [`Self::publish_seq`]. Stores that keep no lists publish each time.
    fn current_denylist(
        &self,
        bundle: &Jwks,
        signer: &dyn Signer,
        now: i64,
        reuse: i64,
    ) -> Result<(u64, String), RevocationError> {
        let _ = reuse;
        self.publish_seq(bundle, signer, now)
    }

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
        let mut exhausted = None;
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
            let Some(next) = reg.seq.checked_add(1) else {
                exhausted = Some(reg.seq);
                return false;
            };
            reg.seq = next;
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
            true
        })?;
        if let Some(seq) = exhausted {
            return Err(RevocationError::SequenceExhausted {
                path: self.location(),
                seq,
            });
        }
        Ok(Revoked {
            seq: reg.seq,
            already,
            audit_error: None,
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
        let kids = bundle_kids(bundle);
        let mut exhausted = None;
        let reg = self.update(&mut |reg| {
            if reg.kids == kids {
                return false;
            }
            let Some(next) = reg.seq.checked_add(1) else {
                exhausted = Some(reg.seq);
                return false;
            };
            reg.kids = kids.clone();
            reg.seq = next;
            true
        })?;
        if let Some(seq) = exhausted {
            return Err(RevocationError::SequenceExhausted {
                path: self.location(),
                seq,
            });
        }
        let list = denylist_of(&reg, bundle, now);
        Ok((list.seq, denylist::sign(&list, signer)?))
    }
}

/// A signed-in web session as a [`SessionStore`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Who (sessions are bounded per user).
    pub user: String,
    /// Until when (Unix seconds).
    pub expires: i64,
    /// What the service keeps about the session (JSON), opaque to the store.
    pub data: String,
}

/// The web page's shared state: signed-in sessions (by the SHA-256 of their id, never the id
/// itself), the sign-in `state`s already used, and the key that the page's CSRF tokens and the
/// sign-in cookie are made with. In memory for one machine ([`memory::MemorySessions`]); in the
/// database for replicas, so a person signed in through one replica stays signed in through
/// the others.
pub trait SessionStore: std::fmt::Debug + Send + Sync {
    /// The key for CSRF tokens and the sign-in cookie.
    fn web_key(&self) -> Result<[u8; 32], DbError>;

    /// The session with this id hash, if it has not expired at `now`.
    fn session(&self, id_hash: &str, now: i64) -> Result<Option<StoredSession>, DbError>;

    /// Stores a new session; drops expired ones, and the user's oldest beyond
    /// `max_per_user` (counting the new one).
    fn open_session(
        &self,
        id_hash: &str,
        session: StoredSession,
        max_per_user: usize,
        now: i64,
    ) -> Result<(), DbError>;

    /// Ends a session.
    fn end_session(&self, id_hash: &str) -> Result<(), DbError>;

    /// Ends every session of these users; returns how many ended.
    fn end_sessions_of(&self, users: &[String]) -> Result<u64, DbError>;

    /// Marks a sign-in `state` (its hash) used until `until`; false when it already was.
    fn use_state(&self, state_hash: [u8; 32], until: i64, now: i64) -> Result<bool, DbError>;
}

/// The key ids of a trust bundle as the register keeps them: the set matters, not the order
/// (the signing key is listed first), so sorted.
pub(crate) fn bundle_kids(bundle: &Jwks) -> Vec<String> {
    let mut kids: Vec<String> = bundle.keys.iter().map(|(k, _)| k.clone()).collect();
    kids.sort();
    kids
}

/// The deny list of a register at `now`: its revocations (passes already expired left out) and
/// the trust bundle's keys, under the register's sequence number.
pub(crate) fn denylist_of(reg: &Register, bundle: &Jwks, now: i64) -> DenyList {
    let params = bundle.hwpass.clone().unwrap_or(TrustParams {
        iss: String::new(),
        aud: String::new(),
    });
    let keys = match bundle.to_json().get("keys") {
        Some(serde_json::Value::Array(keys)) => keys.clone(),
        _ => Vec::new(),
    };
    DenyList {
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
    }
}
