//! The audit group commit: one thread appends records; whatever arrived while the last append
//! ran goes into the next one, with one fsync and one signed checkpoint, and each issuance
//! waits for its own record to be durable. With a store that several replicas share
//! (PostgreSQL), the appends only add entries, and a second thread takes part in choosing the
//! one replica that signs the checkpoints ([`Checkpointer`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use super::metrics;
use super::problem::ApiError;
use crate::core::signer::Signer;
use crate::issuer::config::IssuerConfig;
use crate::issuer::error::IssuerError;
use crate::issuer::sign;
use crate::issuer::store::{
    AuditEntry, AuditError, AuditRecord, AuditStore, Checkpointer, Notary, Round,
};

/// Audit records per group commit at most.
const MAX_GROUP: usize = 1024;

type Reply = oneshot::Sender<Result<(), Arc<AuditError>>>;

/// One thread appends audit records: whatever arrived while the last append ran goes into the
/// next, so concurrent issuances share fsyncs and checkpoint signatures without any of them
/// returning early. It verifies the whole log when it starts, and every append checks the
/// log's end against its last checkpoint: a log that cannot be appended or does not verify
/// fails each issuance waiting on it (503); after a failure the whole log is verified again
/// before the next append, so a repaired log is taken up without a restart.
pub(super) struct Committer {
    tx: std::sync::mpsc::Sender<(AuditRecord, Reply)>,
    /// The log verified (at start, or at the last append): what `/readyz` reports.
    healthy: Arc<AtomicBool>,
}

impl Committer {
    /// Starts the writer with its own session of the issuer key, which signs the checkpoints
    /// (or, for a shared store, the checkpoint thread with that session). Refuses a store this
    /// build cannot use as it is (a database schema of another version); a store out of reach
    /// is only logged (signing answers 503 until it is back).
    pub(super) fn start(log: Arc<dyn AuditStore>, cfg: &IssuerConfig) -> Result<Self, IssuerError> {
        let trust = sign::audit_trust(cfg)?;
        match log.check_ready() {
            Err(e) if e.is_transient() => {
                warn!(error = %e, "the audit store is out of reach: signing answers 503 until it is back")
            }
            other => other?,
        }
        let key = cfg.key.open()?;
        let shared = match log.checkpointer() {
            Some(leader) => {
                let leader_key = cfg.key.open()?;
                let leader_trust = trust.clone();
                std::thread::spawn(move || {
                    let signer: &(dyn Signer + Sync) = &*leader_key;
                    checkpoints(leader, &Notary::new(&leader_trust, signer));
                });
                true
            }
            None => false,
        };
        let (tx, rx) = std::sync::mpsc::channel::<(AuditRecord, Reply)>();
        let shown = Arc::new(AtomicBool::new(false));
        let healthy_flag = shown.clone();
        // Verified before start returns, so `/readyz` is right from the first request. `shown`
        // is false only for a log known not to verify; a store out of reach is for `/readyz`'s
        // write check to report.
        let verified = log.verify(&trust, &[]);
        shown.store(
            verified.as_ref().is_ok() || verified.as_ref().is_err_and(|e| e.is_transient()),
            Ordering::SeqCst,
        );
        std::thread::spawn(move || {
            let signer: &(dyn Signer + Sync) = &*key;
            let notary = Notary::new(&trust, signer);
            let mut healthy = match verified {
                Ok(_) => true,
                // Nothing known to be wrong with the log: check it at the next append.
                Err(e) if e.is_transient() => {
                    warn!(error = %e, "the audit log could not be read: it is checked again before the next append");
                    false
                }
                Err(e) => {
                    error!(error = %e, "the audit log does not verify: signing answers 503 until it does (see `hwpass-issuer audit verify`)");
                    false
                }
            };
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                let (records, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let mut entries: Vec<AuditEntry> =
                    records.into_iter().map(AuditEntry::Issued).collect();
                let checked = match healthy {
                    true => Ok(()),
                    false => log.verify(&trust, &[]).map(|_| ()),
                };
                let start = Instant::now();
                let result = checked
                    .and_then(|()| match shared {
                        true => log.append_entries(&mut entries, &notary),
                        false => log.append(&mut entries, &notary).map(|_| ()),
                    })
                    .map_err(Arc::new);
                metrics::get().audit_commit.observe(metrics::since(start));
                // A database that went away says nothing about the log: no need to read it
                // all again once it is back (and a log not verified yet stays to be verified).
                let transient = result.as_ref().is_err_and(|e| e.is_transient());
                healthy = result.is_ok() || (healthy && transient);
                if !transient {
                    healthy_flag.store(result.is_ok(), Ordering::SeqCst);
                }
                if let Err(e) = &result {
                    error!(error = %e, records = entries.len(), "audit log failed: no pass of this group was issued");
                }
                for reply in replies {
                    // A client that went away no longer waits; its record is durable anyway.
                    let _ = reply.send(result.clone());
                }
            }
            debug!("audit writer stopped");
        });
        Ok(Self { tx, healthy: shown })
    }

    /// Whether the log verified at start or at the last append (signing stops while not).
    pub(super) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    pub(super) async fn commit(&self, record: AuditRecord) -> Result<(), ApiError> {
        let (reply, done) = oneshot::channel();
        let stopped = || ApiError::Issuer(IssuerError::Internal("the audit writer stopped".into()));
        self.tx.send((record, reply)).map_err(|_| stopped())?;
        done.await
            .map_err(|_| stopped())?
            .map_err(|e| ApiError::Issuer(IssuerError::Audit(AuditError::Shared(e))))
    }
}

/// The checkpoint thread of a replica of a shared store: takes its turn every interval; logs
/// when it becomes or stops being the leader, and each failure once until it changes.
fn checkpoints(mut leader: Box<dyn Checkpointer>, notary: &Notary<'_>) {
    let mut last_error: Option<String> = None;
    loop {
        match leader.round(notary) {
            Ok(Round::Leader(Some(c))) => {
                debug!(size = c.size, "audit checkpoint signed");
                last_error = None;
            }
            Ok(_) => last_error = None,
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    if e.is_transient() {
                        warn!(error = %e, "audit checkpoints wait for the database");
                    } else {
                        error!(error = %e, "audit checkpoint failed");
                    }
                    last_error = Some(text);
                }
            }
        }
        std::thread::sleep(leader.interval());
    }
}
