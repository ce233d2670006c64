//! `sign --batch`: many requests in a pipeline of chunks. Requests are verified on one thread
//! per CPU, signed on one thread per key of the pool (each its own HSM session), and their
//! audit records group-committed per chunk with a signed checkpoint; passes are handed out
//! only once durable. Every line gets its own result: a request that fails — even one that
//! makes signing panic — fails alone.

use std::iter::StepBy;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::sync_channel;

use super::config::IssuerConfig;
use super::error::IssuerError;
use super::keys::pool::KeyPool;
use super::sign::{approve, sign_one, Approved};
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
    /// Threads verifying and approving requests (CPU-bound: one per core).
    pub verifiers: usize,
}

/// The outcome of one line of a batch.
#[derive(Debug)]
pub enum BatchItem {
    /// The pass (or delivery), durable in the audit log.
    Issued(String),
    /// Why this request was refused or failed.
    Failed(IssuerError),
}

/// Signs a batch: requests are verified and approved on `opts.verifiers` threads and signed on
/// one thread per key of the pool (each key its own PKCS#11 session); the audit records of
/// each chunk of `chunk` requests are appended with one fsync and one checkpoint signed by
/// `notary`. `emit` receives each chunk's results, in input order, only after that chunk's
/// records are durable — the caller prints them then. When the audit log cannot be appended or does not
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
    // Three stages, chunk by chunk: chunk k + 2 is verified and approved while chunk k + 1 is
    // signed and chunk k is appended, fsynced and printed (with at most one more chunk waiting
    // between two stages). Chunks pass through in order, and
    // each chunk's passes are emitted only after its records are durable. Each stage's threads
    // do one kind of work (P-256 verification, or the module's signing) with its code and
    // tables hot in the core's caches: one thread verifying then signing each request in turn
    // cost ~20 µs more per pass.
    std::thread::scope(|scope| {
        let (to_sign, signing) = sync_channel::<Vec<Result<Approved, IssuerError>>>(1);
        let (to_write, writing) = sync_channel::<(Vec<AuditRecord>, Vec<BatchItem>)>(1);
        let writer = scope.spawn(move || -> Result<(), IssuerError> {
            for (records, items) in writing {
                if !records.is_empty() {
                    let mut entries: Vec<AuditEntry> =
                        records.into_iter().map(AuditEntry::Issued).collect();
                    log.append(&mut entries, notary)?;
                }
                emit(items)?;
            }
            Ok(())
        });
        let signer = scope.spawn(move || {
            for approved in signing {
                if to_write.send(sign_chunk(approved, keys, opts.now)).is_err() {
                    break; // The writer stopped with an error, returned below.
                }
            }
        });
        for part in requests.chunks(opts.chunk.max(1)) {
            if to_sign.send(approve_chunk(cfg, part, opts)).is_err() {
                break; // A later stage stopped; why is returned below.
            }
        }
        drop(to_sign);
        // Both stages are joined; the writer's error (the audit log's) says why a batch stopped.
        match (writer.join(), signer.join()) {
            (Ok(Err(e)), _) => Err(e),
            (Ok(Ok(())), Ok(())) => Ok(()),
            _ => Err(IssuerError::Internal(
                "a batch stage stopped unexpectedly".into(),
            )),
        }
    })
}

/// Runs `share` on `threads` threads over `0..n`: thread t gets the indices t, t + threads, …
/// (balanced without a queue) and returns one result per index, in that order. The results
/// come back in index order; an index whose thread stopped (it cannot: each request's step
/// is [`guarded`]) gets `None`.
fn spread<T: Send>(
    n: usize,
    threads: usize,
    share: impl Fn(StepBy<Range<usize>>) -> Vec<T> + Sync,
) -> Vec<Option<T>> {
    let threads = threads.clamp(1, n.max(1));
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::thread::scope(|scope| {
        let share = &share;
        let handles: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || share((t..n).step_by(threads))))
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            if let Ok(done) = h.join() {
                for (i, r) in (t..n).step_by(threads).zip(done) {
                    out[i] = Some(r);
                }
            }
        }
    });
    out
}

/// Verifies and approves one chunk on `opts.verifiers` threads; results in input order.
fn approve_chunk(
    cfg: &IssuerConfig,
    part: &[String],
    opts: &BatchOptions,
) -> Vec<Result<Approved, IssuerError>> {
    spread(part.len(), opts.verifiers, |share| {
        share
            .map(|i| guarded(|| approve(cfg, &part[i], opts.lifetime, opts.now)))
            .collect()
    })
    .into_iter()
    .map(|r| r.unwrap_or_else(|| Err(stopped())))
    .collect()
}

/// Signs one approved chunk on one thread per key of the pool (each key its own session);
/// the audit records of the passes and every line's result, in input order.
fn sign_chunk<K: Signer + Send + Sync>(
    approved: Vec<Result<Approved, IssuerError>>,
    keys: &KeyPool<K>,
    now: i64,
) -> (Vec<AuditRecord>, Vec<BatchItem>) {
    let signed = spread(approved.len(), keys.size(), |share| {
        keys.with(|key| {
            share
                .map(|i| match &approved[i] {
                    Ok(a) => Some(guarded(|| sign_one(a, key, now))),
                    Err(_) => None,
                })
                .collect()
        })
    });
    let mut records = Vec::new();
    let mut items = Vec::with_capacity(approved.len());
    for (a, r) in approved.into_iter().zip(signed) {
        match (a, r) {
            (Err(e), _) => items.push(BatchItem::Failed(e)),
            (Ok(_), Some(Some(Ok((pass, record))))) => {
                records.push(record);
                items.push(BatchItem::Issued(pass));
            }
            (Ok(_), Some(Some(Err(e)))) => items.push(BatchItem::Failed(e)),
            (Ok(_), _) => items.push(BatchItem::Failed(stopped())),
        }
    }
    (records, items)
}

/// The failure of a request whose thread stopped unexpectedly.
fn stopped() -> IssuerError {
    IssuerError::Internal("a batch worker stopped unexpectedly".into())
}

/// Runs one request's step (its verification, or its signing); a panic there (a bug) fails
/// that request only, and the thread goes on with the others.
fn guarded<T>(step: impl FnOnce() -> Result<T, IssuerError>) -> Result<T, IssuerError> {
    catch_unwind(AssertUnwindSafe(step)).unwrap_or_else(|panic| Err(panicked(&*panic)))
}

/// The failure of a request whose handling panicked.
fn panicked(panic: &(dyn std::any::Any + Send)) -> IssuerError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into());
    IssuerError::Internal(format!(
        "handling this request failed unexpectedly (a bug in hwpass: {what}); the other requests are not affected"
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
    use crate::issuer::store::{AuditError, AuditTrust};

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
            verifiers: 2,
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

    /// What a test batch did.
    struct Ran {
        result: Result<(), IssuerError>,
        emitted: Vec<Vec<BatchItem>>,
        /// The records of the audit log, as it verifies afterwards.
        records: Result<u64, AuditError>,
    }

    /// Runs a batch of `requests` on two signing keys and three verifying threads, in chunks
    /// of `chunk`; `after_emit` runs after each chunk is emitted.
    fn run_batch(
        dir: &std::path::Path,
        requests: &[String],
        chunk: usize,
        mut after_emit: impl FnMut() + Send,
    ) -> Ran {
        let cfg = config(dir);
        let keys = KeyPool::new(vec![MemoryKey::generate(), MemoryKey::generate()]);
        let audit_key = MemoryKey::generate();
        let trust = AuditTrust::new("test/audit", [*audit_key.verifying_key()]).unwrap();
        let log = FileAuditLog::new(dir.join("audit.jsonl"));
        let opts = BatchOptions {
            lifetime: None,
            chunk,
            now: NOW,
            verifiers: 3,
        };
        let mut emitted = Vec::new();
        let notary = Notary::new(&trust, &audit_key);
        let result = issue_batch(&cfg, requests, &opts, &keys, &log, &notary, |items| {
            emitted.push(items);
            after_emit();
            Ok(())
        });
        Ran {
            result,
            emitted,
            records: log.verify(&trust, &[]).map(|v| v.records),
        }
    }

    #[test]
    fn results_come_out_in_input_order_across_chunks_threads_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let requests: Vec<String> = (0..11)
            .map(|i| match i % 4 {
                1 => "not a request".to_string(),
                3 => request(" "),
                _ => request(&format!("u{i}@corp")),
            })
            .collect();
        let Ran {
            result,
            emitted,
            records,
        } = run_batch(dir.path(), &requests, 3, || {});
        result.unwrap();
        assert_eq!(records.unwrap(), 6);
        assert_eq!(
            emitted.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 2]
        );
        for (i, item) in emitted.iter().flatten().enumerate() {
            match item {
                BatchItem::Issued(pass) => {
                    assert_eq!(i % 2, 0, "line {i} was signed");
                    let payload = b64url_decode(pass.split('.').nth(1).unwrap()).unwrap();
                    let sub = format!("\"sub\":\"u{i}@corp\"");
                    assert!(
                        String::from_utf8(payload).unwrap().contains(&sub),
                        "line {i}"
                    );
                }
                BatchItem::Failed(e) => assert_eq!(i % 2, 1, "line {i}: {e}"),
            }
        }
    }

    #[test]
    fn a_log_edited_under_a_running_batch_stops_it_and_no_later_chunk_is_emitted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let requests: Vec<String> = (0..8).map(|i| request(&format!("u{i}@corp"))).collect();
        // After the first chunk is durable and handed out, someone edits its last record.
        let Ran {
            result,
            emitted,
            records,
        } = run_batch(dir.path(), &requests, 2, || {
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text.replacen("u1@corp", "u9@corp", 1)).unwrap();
        });
        assert!(records.is_err());
        assert!(matches!(result, Err(IssuerError::Audit(_))), "{result:?}");
        // Chunks already signed behind it are never handed out.
        assert_eq!(emitted.len(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
