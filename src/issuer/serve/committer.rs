//! The audit group commit: one thread appends records; whatever arrived while the last fsync
//! ran goes into the next append, and each issuance waits for its own record to be durable.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::problem::ApiError;
use crate::issuer::error::IssuerError;
use crate::issuer::store::{AuditError, AuditRecord, AuditStore};

/// Audit records per group commit at most.
const MAX_GROUP: usize = 1024;

type Reply = oneshot::Sender<Result<(), String>>;

/// One thread appends audit records: whatever arrived while the last fsync ran goes into the
/// next append, so concurrent issuances share fsyncs without any of them returning early.
pub(super) struct Committer {
    tx: std::sync::mpsc::Sender<(AuditRecord, Reply)>,
}

impl Committer {
    pub(super) fn start(log: Arc<dyn AuditStore>) -> Self {
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

    pub(super) async fn commit(&self, record: AuditRecord) -> Result<(), ApiError> {
        let (reply, done) = oneshot::channel();
        let stopped = || ApiError::Issuer(IssuerError::Internal("the audit writer stopped".into()));
        self.tx.send((record, reply)).map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?.map_err(|e| {
            ApiError::Issuer(IssuerError::Audit(AuditError::Io {
                path: "audit log".into(),
                source: std::io::Error::other(e),
            }))
        })
    }
}
