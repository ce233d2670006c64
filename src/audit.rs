//! The issuer's audit log: append-only JSON lines, each carrying the SHA-256 of the line before
//! it, fsynced before any pass it records is printed.
//!
//! An edited, inserted or deleted line breaks the chain and `verify` names the first line that
//! does not follow. Cutting lines off the *end* leaves a valid shorter chain; that is detected
//! only by comparing the record count or last hash with a copy kept elsewhere (`audit verify`
//! prints both so they can be noted).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::token::{Attestation, BindingKind};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What went wrong with the audit log.
#[derive(Debug, thiserror::Error)]
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
    /// Hex SHA-256 of the previous line (without its newline), or [`GENESIS`].
    pub prev: String,
}

/// The log file.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
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

fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

impl AuditLog {
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
    pub fn append(&self, records: &mut [AuditRecord]) -> Result<(), AuditError> {
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::fsutil::create_private_dir(dir).map_err(|e| self.io(e))?;
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
            prev = line_hash(&line);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        file.write_all(&buf).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))?;
        // A new file's directory entry must be durable too.
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::fsutil::sync_dir(dir).map_err(|e| self.io(e))?;
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
            return Ok(line_hash(&tail[line_start..complete_end]));
        }
    }

    /// Reads every complete record, checking the chain.
    pub fn read(&self) -> Result<(Vec<AuditRecord>, ChainSummary), AuditError> {
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
            prev = line_hash(body);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let log = AuditLog::new(dir.path().join("audit.jsonl"));
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
