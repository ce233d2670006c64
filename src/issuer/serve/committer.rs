//! The audit group commit: one thread appends records; whatever arrived while the last append
//! ran goes into the next one, with one fsync and one signed checkpoint, and each issuance
//! waits for its own record to be durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{debug, error};

use super::metrics;
use super::problem::ApiError;
use crate::core::signer::Signer;
use crate::issuer::config::IssuerConfig;
use crate::issuer::error::IssuerError;
use crate::issuer::sign;
use crate::issuer::store::{AuditEntry, AuditError, AuditRecord, AuditStore, Notary};

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
    /// Starts the writer with its own session of the issuer key, which signs the checkpoints.
    pub(super) fn start(log: Arc<dyn AuditStore>, cfg: &IssuerConfig) -> Result<Self, IssuerError> {
        let trust = sign::audit_trust(cfg)?;
        let key = cfg.key.open()?;
        let (tx, rx) = std::sync::mpsc::channel::<(AuditRecord, Reply)>();
        let shown = Arc::new(AtomicBool::new(false));
        let healthy_flag = shown.clone();
        // Verified before start returns, so `/readyz` is right from the first request.
        let verified = log.verify(&trust, &[]);
        shown.store(verified.is_ok(), Ordering::SeqCst);
        std::thread::spawn(move || {
            let signer: &(dyn Signer + Sync) = &*key;
            let notary = Notary::new(&trust, signer);
            let mut healthy = match verified {
                Ok(_) => true,
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
                    .and_then(|()| log.append(&mut entries, &notary).map(|_| ()))
                    .map_err(Arc::new);
                metrics::get().audit_commit.observe(metrics::since(start));
                healthy = result.is_ok();
                healthy_flag.store(healthy, Ordering::SeqCst);
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
