//! `sign --batch`: many requests, one worker thread per key of the pool (each its own HSM
//! session), audit records group-committed per chunk with a signed checkpoint, passes handed
//! out only once durable. Every line gets its own result: a request that fails — even one that
//! makes signing panic — fails alone.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::config::IssuerConfig;
use super::error::IssuerError;
use super::keys::pool::KeyPool;
use super::sign::{approve, sign_one};
use super::store::{AuditEntry, AuditRecord, AuditStore, Notary};
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
/// requests are appended with one fsync and one checkpoint signed by `notary`. `emit`
/// receives each chunk's results, in input order, only after that chunk's records are
/// durable — the caller prints them then. When the audit log cannot be appended or does not
/// verify, the batch stops there (fail closed): that chunk's passes are never emitted.
pub fn issue_batch<K: Signer + Send + Sync>(
    cfg: &IssuerConfig,
    requests: &[String],
    opts: &BatchOptions,
    keys: &KeyPool<K>,
    log: &dyn AuditStore,
    notary: &Notary<'_>,
    mut emit: impl FnMut(Vec<BatchItem>) -> Result<(), IssuerError> + Send,
) -> Result<(), IssuerError> {
    // Chunk k's audit append, fsync and printing run on their own thread while the workers
    // sign chunk k + 1; chunks reach the writer in order, and each chunk's passes are emitted
    // only after its records are durable.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<AuditRecord>, Vec<BatchItem>)>(1);
        let writer = scope.spawn(move || -> Result<(), IssuerError> {
            for (records, items) in rx {
                if !records.is_empty() {
                    let mut entries: Vec<AuditEntry> =
                        records.into_iter().map(AuditEntry::Issued).collect();
                    log.append(&mut entries, notary)?;
                }
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
                                // A panic while handling one request (a bug) fails that
                                // request only; the worker goes on with the others.
                                let r = catch_unwind(AssertUnwindSafe(|| {
                                    approve(cfg, &part[i], opts.lifetime, opts.now)
                                        .and_then(|a| sign_one(&a, key, opts.now))
                                }))
                                .unwrap_or_else(|panic| Err(panicked(&*panic)));
                                (i, r)
                            })
                            .collect::<Vec<_>>()
                    })
                })
            })
            .collect();
        for h in handles {
            // Invariant: each request's panic is caught above; if a worker still stopped (the
            // key pool itself failed), its requests stay None and are reported as failed below.
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

/// The failure of a request whose handling panicked.
fn panicked(panic: &(dyn std::any::Any + Send)) -> IssuerError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into());
    IssuerError::Internal(format!(
        "signing this request failed unexpectedly (a bug in hwpass: {what}); the other requests are not affected"
    ))
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::{Signature, VerifyingKey};

    use super::*;
    use crate::core::b64::b64url_decode;
    use crate::core::claims::{BindingKind, RequestClaims};
    use crate::core::jws::sign_request;
    use crate::core::signer::{MemoryKey, SignError};
    use crate::issuer::store::file::FileAuditLog;
    use crate::issuer::store::AuditTrust;

    const NOW: i64 = 1_800_000_000;

    /// An issuer key with a bug: it panics signing a pass for `crash@corp`.
    #[derive(Debug)]
    struct Fragile(MemoryKey);

    impl Signer for Fragile {
        fn verifying_key(&self) -> &VerifyingKey {
            self.0.verifying_key()
        }
        fn try_sign(&self, msg: &[u8]) -> Result<Signature, SignError> {
            let payload = std::str::from_utf8(msg)
                .ok()
                .and_then(|m| m.split('.').nth(1))
                .and_then(b64url_decode)
                .unwrap_or_default();
            if String::from_utf8_lossy(&payload).contains("crash@corp") {
                panic!("the key device broke");
            }
            self.0.try_sign(msg)
        }
    }

    fn config(dir: &std::path::Path) -> IssuerConfig {
        let path = dir.join("issuer.toml");
        std::fs::write(
            &path,
            "issuer = \"test\"\naudience = \"app\"\naudit_log = \"audit.jsonl\"\n\n[key]\nuri = \"pkcs11:token=t;object=o?module-path=/nonexistent.so\"\n\n[policy]\ndefault_lifetime = \"1d\"\nmax_lifetime = \"7d\"\nallow_software = true\n",
        )
        .unwrap();
        IssuerConfig::load(&path).unwrap()
    }

    fn request(sub: &str) -> String {
        let claims = RequestClaims {
            sub: sub.into(),
            iat: NOW,
            kind: BindingKind::Software,
            ttl: None,
            dev: None,
            att: None,
            stm: None,
        };
        sign_request(&claims, &MemoryKey::generate()).unwrap()
    }

    #[test]
    fn one_request_that_panics_fails_alone_and_every_other_line_gets_its_pass() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let requests: Vec<String> = ["a@corp", "b@corp", "crash@corp", "c@corp", "d@corp"]
            .iter()
            .map(|s| request(s))
            .collect();
        // One worker: before, its panic lost every request it had.
        let keys = KeyPool::new(vec![Fragile(MemoryKey::generate())]);
        let audit_key = MemoryKey::generate();
        let trust = AuditTrust::new("test/audit", [*audit_key.verifying_key()]).unwrap();
        let log = FileAuditLog::new(dir.path().join("audit.jsonl"));
        let opts = BatchOptions {
            lifetime: None,
            chunk: 16,
            now: NOW,
        };
        let mut out = Vec::new();
        issue_batch(
            &cfg,
            &requests,
            &opts,
            &keys,
            &log,
            &Notary::new(&trust, &audit_key),
            |items| {
                out.extend(items);
                Ok(())
            },
        )
        .unwrap();
        let issued: Vec<bool> = out
            .iter()
            .map(|i| matches!(i, BatchItem::Issued(_)))
            .collect();
        assert_eq!(issued, [true, true, false, true, true]);
        assert!(
            matches!(&out[2], BatchItem::Failed(IssuerError::Internal(m)) if m.contains("the key device broke")),
            "{:?}",
            out[2]
        );
        let v = log.verify(&trust, &[]).unwrap();
        assert_eq!((v.records, v.checkpoint.unwrap().size), (4, 4));
    }
}
