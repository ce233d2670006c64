//! The file store, the embedded default for one machine.
//!
//! - [`FileAuditLog`]: append-only JSON lines, each record carrying the [`record_hash`] of the
//!   one before, fsynced before any pass it records is printed. An edited, inserted or deleted
//!   line breaks the chain and `read` names the first line that does not follow. Cutting lines
//!   off the *end* leaves a valid shorter chain; that is detected only by comparing the record
//!   count or last hash with a copy kept elsewhere (`audit verify` prints both).
//! - [`FileRegister`]: the revocation register, one JSON file rewritten atomically (temp file,
//!   fsync, rename) under an exclusive lock on a sibling `.lock` file, so the CLI and a running
//!   service can revoke at the same time.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::{
    record_hash, AuditError, AuditRecord, AuditStore, ChainSummary, Register, RevocationError,
    RevocationStore, GENESIS,
};
use crate::sys::{create_private_dir, sync_dir, write_atomic};

/// Largest register file read.
const MAX_REGISTER: u64 = 16 * 1024 * 1024;

/// The log file.
#[derive(Debug, Clone)]
pub struct FileAuditLog {
    path: PathBuf,
}

impl FileAuditLog {
    /// A log at `path` (created on first append, mode 0600).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends records (their `prev` is filled in here) and fsyncs them, under an exclusive
    /// lock so concurrent issuers keep one chain. Returns only once the records are durable.
    fn append_locked(&self, records: &mut [AuditRecord]) -> Result<(), AuditError> {
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| self.io(e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        file.lock().map_err(|e| self.io(e))?;
        let mut prev = self.repair_tail_and_head(&mut file)?;
        let mut buf = Vec::new();
        for r in records.iter_mut() {
            r.prev = prev;
            let line = serde_json::to_vec(r).map_err(|e| self.io(io::Error::other(e)))?;
            prev = record_hash(r);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        file.write_all(&buf).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))?;
        // A new file's directory entry must be durable too.
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(dir).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Finds the hash of the last complete line. An unterminated fragment after it is a write
    /// that a crash cut short before its fsync completed — so its pass was never printed — and
    /// is cut off so the chain continues from the last acknowledged record.
    fn repair_tail_and_head(&self, file: &mut File) -> Result<String, AuditError> {
        let len = file.metadata().map_err(|e| self.io(e))?.len();
        if len == 0 {
            return Ok(GENESIS.into());
        }
        let mut window = 4096u64;
        loop {
            let start = len.saturating_sub(window);
            file.seek(SeekFrom::Start(start)).map_err(|e| self.io(e))?;
            let mut tail = Vec::new();
            file.read_to_end(&mut tail).map_err(|e| self.io(e))?;
            let end = tail.iter().rposition(|&b| b == b'\n');
            let complete_end = match end {
                Some(i) => i,
                None if start == 0 => {
                    // Only a fragment: nothing was ever acknowledged.
                    file.set_len(0).map_err(|e| self.io(e))?;
                    return Ok(GENESIS.into());
                }
                None => {
                    window *= 4;
                    continue;
                }
            };
            if complete_end + 1 != tail.len() {
                file.set_len(start + complete_end as u64 + 1)
                    .map_err(|e| self.io(e))?;
            }
            let line_start = match tail[..complete_end].iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if start == 0 => 0,
                None => {
                    window *= 4;
                    continue;
                }
            };
            let last: AuditRecord = serde_json::from_slice(&tail[line_start..complete_end])
                .map_err(|e| AuditError::LastRecord {
                    detail: e.to_string(),
                })?;
            return Ok(record_hash(&last));
        }
    }

    /// Reads every complete record, checking the chain.
    fn read_all(&self) -> Result<(Vec<AuditRecord>, ChainSummary), AuditError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let summary = ChainSummary {
                    records: 0,
                    head: GENESIS.into(),
                    torn_tail: false,
                };
                return Ok((Vec::new(), summary));
            }
            Err(e) => return Err(self.io(e)),
        };
        let mut reader = BufReader::new(file);
        let mut prev = GENESIS.to_string();
        let mut records = Vec::new();
        let mut torn_tail = false;
        let mut line = Vec::new();
        let mut n = 0;
        loop {
            line.clear();
            if reader
                .read_until(b'\n', &mut line)
                .map_err(|e| self.io(e))?
                == 0
            {
                break;
            }
            n += 1;
            if line.last() != Some(&b'\n') {
                torn_tail = true;
                break;
            }
            let body = &line[..line.len() - 1];
            let r: AuditRecord =
                serde_json::from_slice(body).map_err(|e| AuditError::Malformed {
                    line: n,
                    detail: e.to_string(),
                })?;
            if r.prev != prev {
                return Err(AuditError::Broken { line: n });
            }
            prev = record_hash(&r);
            records.push(r);
        }
        let summary = ChainSummary {
            records: records.len(),
            head: prev,
            torn_tail,
        };
        Ok((records, summary))
    }
}

impl AuditStore for FileAuditLog {
    fn describe(&self) -> String {
        format!("audit log {}", self.path.display())
    }

    fn append(&self, records: &mut [AuditRecord]) -> Result<(), AuditError> {
        self.append_locked(records)
    }

    fn read(&self) -> Result<(Vec<AuditRecord>, ChainSummary), AuditError> {
        self.read_all()
    }
}

/// The register at a path.
#[derive(Debug, Clone)]
pub struct FileRegister {
    path: PathBuf,
}

impl FileRegister {
    /// The register at `path` (created on the first revocation, mode 0600).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> RevocationError {
        RevocationError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads the register; a missing file is an empty register.
    fn read_file(&self) -> Result<Register, RevocationError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Register {
                    v: 1,
                    ..Register::default()
                })
            }
            Err(e) => return Err(self.io(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_REGISTER + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io(e))?;
        if bytes.len() as u64 > MAX_REGISTER {
            return Err(RevocationError::Damaged {
                path: self.path.clone(),
                detail: "file is far too large".into(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| RevocationError::Damaged {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    /// Runs `change` on the register under the lock and writes the result back atomically when
    /// it says it changed something.
    fn update_locked(
        &self,
        change: &mut dyn FnMut(&mut Register) -> bool,
    ) -> Result<Register, RevocationError> {
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| self.io(e))?;
        }
        let mut lock_name = self.path.as_os_str().to_owned();
        lock_name.push(".lock");
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(PathBuf::from(lock_name))
            .map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        let mut reg = self.read_file()?;
        if change(&mut reg) {
            let bytes = serde_json::to_vec_pretty(&reg).map_err(|e| self.io(e.into()))?;
            write_atomic(&self.path, &bytes).map_err(|e| self.io(e))?;
        }
        Ok(reg)
    }
}

impl RevocationStore for FileRegister {
    fn load(&self) -> Result<Register, RevocationError> {
        self.read_file()
    }

    fn update(
        &self,
        change: &mut dyn FnMut(&mut Register) -> bool,
    ) -> Result<Register, RevocationError> {
        self.update_locked(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::claims::{Attestation, BindingKind};
    use crate::core::denylist;
    use crate::core::jwk::{Jwk, Jwks, TrustParams};
    use crate::core::signer::{MemoryKey, Signer as _};
    use crate::issuer::store::{RevocationError, Revoked, Target};

    #[test]
    fn sequence_rises_with_each_change_and_keys_change_and_expired_passes_leave_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileRegister::new(dir.path().join("sub/revocations.json"));
        let key = MemoryKey::generate();
        let params = TrustParams {
            iss: "corp".into(),
            aud: "app".into(),
        };
        let bundle = Jwks::new([Jwk::new(*key.verifying_key())], Some(params.clone()));
        let trust = bundle.clone();
        // Publish with this bundle at `now`, as a desktop trusting only the first key reads it.
        let published = |bundle: &Jwks, now| {
            denylist::verify(
                &store.publish(bundle, &key, now).unwrap(),
                &trust,
                &params,
                now,
            )
            .unwrap()
        };

        let first = published(&bundle, 100);
        assert_eq!(first.seq, 1, "the first key set is a change");
        let again = published(&bundle, 100);
        assert_eq!(again.seq, 1, "nothing changed");

        let pass = |jti: &str, exp| Target::Pass {
            jti: jti.into(),
            exp,
            sub: "alice".into(),
        };
        let r = store
            .revoke(pass("p1", 1_000), "admin", Some("lost laptop".into()), 200)
            .unwrap();
        assert_eq!(
            r,
            Revoked {
                seq: 2,
                already: false
            }
        );
        let r = store.revoke(pass("p1", 1_000), "admin", None, 201).unwrap();
        assert_eq!(
            r,
            Revoked {
                seq: 2,
                already: true
            }
        );
        store.revoke(pass("p2", 300), "admin", None, 202).unwrap();
        let r = store
            .revoke(Target::Device { jkt: "d1".into() }, "admin", None, 203)
            .unwrap();
        assert_eq!(r.seq, 4);

        let list = published(&bundle, 250);
        assert_eq!(list.seq, 4);
        assert!(list.revokes("p1", "x") && list.revokes("p2", "x") && list.revokes("q", "d1"));
        // p2 expired at 300: past 300 + leeway it is no longer listed (but stays in the register).
        let later = published(&bundle, 400);
        assert!(later.revokes("p1", "x") && !later.revokes("p2", "x"));
        assert_eq!(store.load().unwrap().passes.len(), 2);

        // A new key in the bundle: a new sequence number.
        let next = MemoryKey::generate();
        let rotated = Jwks::new(
            [
                Jwk::new(*key.verifying_key()),
                Jwk::new(*next.verifying_key()),
            ],
            Some(params.clone()),
        );
        let list = published(&rotated, 500);
        assert_eq!((list.seq, list.keys.len()), (5, 2));

        let reg = store.load().unwrap();
        assert_eq!(reg.passes[0].reason.as_deref(), Some("lost laptop"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn damaged_register_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.json");
        std::fs::write(&path, b"{\"v\":1,\"seq\":").unwrap();
        let store = FileRegister::new(&path);
        assert!(matches!(store.load(), Err(RevocationError::Damaged { .. })));
        assert!(store
            .revoke(Target::Device { jkt: "d".into() }, "a", None, 1)
            .is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"v\":1,\"seq\":");
    }

    fn record(i: i64) -> AuditRecord {
        AuditRecord {
            v: 1,
            time: i,
            jti: format!("jti{i}"),
            sub: "alice".into(),
            jkt: "k".into(),
            kind: BindingKind::Software,
            att: Attestation::None,
            nbf: i,
            exp: i + 10,
            kid: "kid".into(),
            dev: None,
            by: None,
            prev: String::new(),
        }
    }

    #[test]
    fn chain_detects_edit_and_deletion_and_repairs_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileAuditLog::new(dir.path().join("audit.jsonl"));
        log.append(&mut [record(1), record(2)]).unwrap();
        log.append(&mut [record(3)]).unwrap();
        let (records, s) = log.read().unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(s.records, 3);
        assert_eq!(records[0].prev, GENESIS);
        let text = std::fs::read_to_string(log.path()).unwrap();

        // A torn fragment is reported, then cut off by the next append, and the chain holds.
        std::fs::write(log.path(), format!("{text}{{\"v\":1,\"ti")).unwrap();
        assert!(log.read().unwrap().1.torn_tail);
        log.append(&mut [record(4)]).unwrap();
        let (_, s) = log.read().unwrap();
        assert_eq!((s.records, s.torn_tail), (4, false));

        // Edit line 2: line 3 no longer follows it.
        let edited = text.replacen("jti2", "jtiX", 1);
        std::fs::write(log.path(), &edited).unwrap();
        assert!(matches!(log.read(), Err(AuditError::Broken { line: 3 })));

        // Delete line 1: line 2 (now first) does not start the chain.
        let deleted: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        std::fs::write(log.path(), deleted).unwrap();
        assert!(matches!(log.read(), Err(AuditError::Broken { line: 1 })));

        std::fs::write(log.path(), "garbage\n").unwrap();
        assert!(matches!(
            log.read(),
            Err(AuditError::Malformed { line: 1, .. })
        ));
    }
}
