//! `sign --batch`: many requests, one worker thread per key of the pool (each its own HSM
//! session), audit records group-committed per chunk, passes handed out only once durable.

use super::config::IssuerConfig;
use super::error::IssuerError;
use super::keys::pool::KeyPool;
use super::sign::{approve, sign_one};
use super::store::{AuditRecord, AuditStore};
use crate::core::signer::Signer;

/// How a batch is signed.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// `--valid-for`, if given.
    pub lifetime: Option<i64>,
    /// Requests per audit fsync.
    pub chunk: usize,
    /// The time of signing.
    pub now: i64,
}

/// The outcome of one line of a batch.
#[derive(Debug)]
pub enum BatchItem {
    /// The pass (or delivery), durable in the audit log.
    Issued(String),
    /// Why this request was refused or failed.
    Failed(IssuerError),
}

/// Signs a batch: requests are verified, approved and signed by one worker thread per key of
/// the pool (each key its own PKCS#11 session); the audit records of each chunk of `chunk`
/// requests are appended with one fsync. `emit` receives each chunk's results, in input
/// order, only after that chunk's records are durable — the caller prints them then.
pub fn issue_batch<K: Signer + Send + Sync>(
    cfg: &IssuerConfig,
    requests: &[String],
    opts: &BatchOptions,
    keys: &KeyPool<K>,
    log: &dyn AuditStore,
    mut emit: impl FnMut(Vec<BatchItem>) -> Result<(), IssuerError> + Send,
) -> Result<(), IssuerError> {
    // Chunk k's audit append, fsync and printing run on their own thread while the workers
    // sign chunk k + 1; chunks reach the writer in order, and each chunk's passes are emitted
    // only after its records are durable.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<AuditRecord>, Vec<BatchItem>)>(1);
        let writer = scope.spawn(move || -> Result<(), IssuerError> {
            for (mut records, items) in rx {
                log.append(&mut records)?;
                emit(items)?;
            }
            Ok(())
        });
        for part in requests.chunks(opts.chunk.max(1)) {
            if tx.send(sign_chunk(cfg, part, opts, keys)).is_err() {
                break; // The writer stopped with an error, returned below.
            }
        }
        drop(tx);
        writer
            .join()
            .map_err(|_| IssuerError::Internal("the audit writer stopped unexpectedly".into()))?
    })
}

/// Verifies, approves and signs one chunk on one thread per key; results in input order.
fn sign_chunk<K: Signer + Send + Sync>(
    cfg: &IssuerConfig,
    part: &[String],
    opts: &BatchOptions,
    keys: &KeyPool<K>,
) -> (Vec<AuditRecord>, Vec<BatchItem>) {
    let workers = keys.size().max(1);
    let mut results: Vec<Option<Result<(String, AuditRecord), IssuerError>>> =
        (0..part.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        // Worker w takes requests w, w + workers, …: balanced without a queue.
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    keys.with(|key| {
                        (w..part.len())
                            .step_by(workers)
                            .map(|i| {
                                let r = approve(cfg, &part[i], opts.lifetime, opts.now)
                                    .and_then(|a| sign_one(&a, key, opts.now));
                                (i, r)
                            })
                            .collect::<Vec<_>>()
                    })
                })
            })
            .collect();
        for h in handles {
            // Invariant: workers do not panic (every failure is a Result); if one did, its
            // requests stay None and are reported as failed below.
            if let Ok(done) = h.join() {
                for (i, r) in done {
                    results[i] = Some(r);
                }
            }
        }
    });
    let mut records = Vec::new();
    let mut items = Vec::with_capacity(part.len());
    for r in results {
        match r {
            Some(Ok((pass, record))) => {
                records.push(record);
                items.push(BatchItem::Issued(pass));
            }
            Some(Err(e)) => items.push(BatchItem::Failed(e)),
            None => items.push(BatchItem::Failed(IssuerError::Internal(
                "a signing worker stopped unexpectedly".into(),
            ))),
        }
    }
    (records, items)
}
