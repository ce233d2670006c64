//! The file store, the embedded default for one machine.
//!
//! - [`FileAuditLog`]: the audit log as JSON lines (`audit.jsonl`), one entry per line in its
//!   canonical form, each naming the hash of the one before, and its checkpoint file beside it
//!   (`audit.jsonl.checkpoint`), rewritten atomically (temp file, fsync, rename). An append, under
//!   an exclusive lock on the log:
//!   1. checks the log's end against the last checkpoint: the line ending where the checkpoint
//!      says the covered entries end must be the checkpoint's last leaf (its audit path, kept in
//!      the checkpoint file, and the signed root prove it), and nothing may follow it except
//!      what an unfinished append wrote;
//!   2. signs a checkpoint covering the new entries and stores it as *pending*, with the new
//!      lines, before writing them;
//!   3. appends the lines and fsyncs;
//!   4. stores the new checkpoint as the last one.
//!
//!   A crash between 2 and 4 leaves lines that the pending checkpoint covers (and perhaps an
//!   incomplete last line, a prefix of one of them): the next append writes what is missing and
//!   finishes. Anything else after the last checkpoint was not written by hwpass, and appending
//!   stops. Only an incomplete last line of such an unfinished append is ever cut off.
//! - [`FileRegister`]: the revocation register, one JSON file rewritten atomically (temp file,
//!   fsync, rename) under an exclusive lock on a sibling `.lock` file, so the CLI and a running
//!   service can revoke at the same time.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::checkpoint::{is_last_leaf, leaf_hash, Frontier, Hash};
use super::{
    verify_log, AuditEntry, AuditError, AuditRecord, AuditStore, AuditTrust, Checkpoint,
    LogContents, Notary, PendingAppend, Register, RevocationError, RevocationStore, Verified,
    GENESIS,
};
use crate::sys::{create_private_dir, sync_dir, write_atomic};

/// Largest register file read.
const MAX_REGISTER: u64 = 16 * 1024 * 1024;
/// Largest checkpoint file read (a pending append holds its lines: a batch chunk of them).
const MAX_STATE: u64 = 256 * 1024 * 1024;
/// Longest line looked at when finding the last covered entry.
const MAX_LINE: u64 = 1024 * 1024;
/// Most bytes after the last checkpoint read at once.
const MAX_TAIL: u64 = 256 * 1024 * 1024;

/// The log file and its checkpoint file.
#[derive(Debug, Clone)]
pub struct FileAuditLog {
    path: PathBuf,
}

/// The checkpoint file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// Format version.
    v: u32,
    /// The last checkpoint all of whose entries are in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoint: Option<Covered>,
    /// An append that signed its checkpoint and has not yet finished writing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Pending>,
}

/// A checkpoint and where its entries end in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Covered {
    /// The signed note.
    note: String,
    /// Bytes of the log it covers (its last entry's newline is the last of them).
    offset: u64,
    /// The audit path of its last entry, base64 (RFC 6962 §2.1.1): with that entry's bytes it
    /// reproduces the signed root, and it is the frontier to append after it.
    path: Vec<String>,
}

/// An unfinished append.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pending {
    /// The signed note of the checkpoint it will have made.
    note: String,
    /// Every entry line after the covered ones that this checkpoint covers.
    lines: Vec<String>,
}

/// The verified end of the log, where an append continues.
#[derive(Debug)]
struct Tip {
    /// The tree of every entry the new checkpoint will cover before the new ones.
    frontier: Frontier,
    /// Hash of the last of them.
    head: String,
    /// Lines after the covered bytes the new checkpoint covers (an unfinished append's).
    carried: Vec<Vec<u8>>,
    /// How many of `carried` are already in the file, complete.
    present: usize,
    /// Where the complete lines end (anything after is an incomplete line to cut off).
    end: u64,
    /// The time of the unfinished append's checkpoint.
    time: i64,
}

impl FileAuditLog {
    /// A log at `path` (created on first append, mode 0600), its checkpoint file beside it.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checkpoint file's path: the log's with `.checkpoint` added.
    pub fn checkpoint_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".checkpoint");
        PathBuf::from(name)
    }

    fn io(&self, source: io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn damaged(&self, detail: impl Into<String>) -> AuditError {
        AuditError::State {
            path: self.checkpoint_path(),
            detail: detail.into(),
        }
    }

    fn read_state(&self) -> Result<State, AuditError> {
        let path = self.checkpoint_path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => {
                return Err(AuditError::Io {
                    path: path.clone(),
                    source: e,
                })
            }
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| AuditError::Io {
                path: path.clone(),
                source: e,
            })?;
        self.parse_state(&bytes)
    }

    fn parse_state(&self, bytes: &[u8]) -> Result<State, AuditError> {
        if bytes.len() as u64 > MAX_STATE {
            return Err(self.damaged("far too large"));
        }
        let state: State =
            serde_json::from_slice(bytes).map_err(|e| self.damaged(e.to_string()))?;
        if state.v != 1 {
            return Err(self.damaged(format!("format version {} is not known", state.v)));
        }
        Ok(state)
    }

    fn write_state(&self, state: &State) -> Result<(), AuditError> {
        let bytes = serde_json::to_vec(state).map_err(|e| self.damaged(e.to_string()))?;
        write_atomic(&self.checkpoint_path(), &bytes).map_err(|e| AuditError::Io {
            path: self.checkpoint_path(),
            source: e,
        })
    }

    /// The covered checkpoint's audit path, decoded.
    fn path_of(&self, c: &Covered) -> Result<Vec<Hash>, AuditError> {
        c.path
            .iter()
            .map(|h| {
                B64.decode(h)
                    .ok()
                    .and_then(|b| Hash::try_from(b).ok())
                    .ok_or_else(|| self.damaged("an audit path hash is not 32 bytes of base64"))
            })
            .collect()
    }

    /// Opens the log for appending (creating it and its directory), locked exclusively.
    fn open_locked(&self) -> Result<(File, bool), AuditError> {
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| self.io(e))?;
        }
        let existed = self.path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        file.lock().map_err(|e| self.io(e))?;
        Ok((file, existed))
    }

    /// Reads `len` bytes at `at`.
    fn read_at(&self, file: &mut File, at: u64, len: u64) -> Result<Vec<u8>, AuditError> {
        file.seek(SeekFrom::Start(at)).map_err(|e| self.io(e))?;
        let mut buf = Vec::new();
        file.take(len)
            .read_to_end(&mut buf)
            .map_err(|e| self.io(e))?;
        Ok(buf)
    }

    /// Checks the end of the log against the last checkpoint (and an unfinished append), without
    /// reading the entries before it: see the module documentation.
    fn tip(&self, file: &mut File, state: &State, trust: &AuditTrust) -> Result<Tip, AuditError> {
        let len = file.metadata().map_err(|e| self.io(e))?.len();
        let (mut frontier, mut head, covered_end, covered) = match &state.checkpoint {
            None => (Frontier::new(), GENESIS.to_string(), 0, 0),
            Some(c) => {
                let cp = trust.open(&c.note)?;
                let mismatch = AuditError::Mismatch { size: cp.size };
                if c.offset > len {
                    return Err(AuditError::Cut {
                        covered: cp.size,
                        present: None,
                    });
                }
                if cp.size == 0 || c.offset == 0 {
                    return Err(self.damaged("the checkpoint covers no entries"));
                }
                // The line that ends where the covered entries end.
                let window = c.offset.min(MAX_LINE + 1);
                let before = self.read_at(file, c.offset - window, window)?;
                let Some((b'\n', rest)) = before.split_last() else {
                    return Err(mismatch);
                };
                let last = match rest.iter().rposition(|&b| b == b'\n') {
                    Some(i) => &rest[i + 1..],
                    None if window == c.offset => rest,
                    None => return Err(mismatch),
                };
                let path = self.path_of(c)?;
                if !is_last_leaf(cp.size, &cp.root, last, &path) {
                    return Err(mismatch);
                }
                let mut frontier = Frontier::from_next_leaf_path(cp.size - 1, &path)
                    .ok_or_else(|| self.damaged("the audit path does not fit the checkpoint"))?;
                frontier.push(&leaf_hash(last));
                (
                    frontier,
                    hex::encode(Sha256::digest(last)),
                    c.offset,
                    cp.size,
                )
            }
        };
        // What follows the covered entries.
        if len - covered_end > MAX_TAIL {
            return Err(AuditError::Uncovered {
                count: 1,
                after: covered,
            });
        }
        let tail = self.read_at(file, covered_end, len - covered_end)?;
        let mut complete: Vec<&[u8]> = tail.split(|&b| b == b'\n').collect();
        let fragment = complete.pop().filter(|f| !f.is_empty());
        let uncovered = || AuditError::Uncovered {
            count: complete.len() as u64 + u64::from(fragment.is_some()),
            after: covered,
        };
        let Some(pending) = &state.pending else {
            if complete.is_empty() && fragment.is_none() {
                return Ok(Tip {
                    frontier,
                    head,
                    carried: Vec::new(),
                    present: 0,
                    end: len,
                    time: i64::MIN,
                });
            }
            return Err(uncovered());
        };
        // An unfinished append: the lines present must be the first of its lines, an
        // incomplete last line a prefix of the next, and its lines must make its checkpoint.
        let pc = trust.open(&pending.note)?;
        let carried: Vec<Vec<u8>> = pending
            .lines
            .iter()
            .map(|l| l.clone().into_bytes())
            .collect();
        let fits = complete.len() <= carried.len()
            && complete
                .iter()
                .zip(&carried)
                .all(|(a, b)| *a == b.as_slice())
            && fragment.is_none_or(|f| {
                carried
                    .get(complete.len())
                    .is_some_and(|next| next.starts_with(f))
            });
        if !fits {
            return Err(uncovered());
        }
        for (i, line) in carried.iter().enumerate() {
            let entry = AuditEntry::parse(line).map_err(|detail| {
                self.damaged(format!("pending line {} is not an entry: {detail}", i + 1))
            })?;
            if entry.prev() != head {
                return Err(self.damaged("the pending lines do not continue the log"));
            }
            head = hex::encode(Sha256::digest(line));
            frontier.push(&leaf_hash(line));
        }
        if frontier.size() != pc.size || frontier.root() != pc.root {
            return Err(AuditError::Mismatch { size: pc.size });
        }
        let end = covered_end + complete.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
        Ok(Tip {
            frontier,
            head,
            present: complete.len(),
            carried,
            end,
            time: pc.time,
        })
    }

    /// Appends entries and their checkpoint (the module documentation has the steps).
    fn append_locked(
        &self,
        entries: &mut [AuditEntry],
        notary: &Notary<'_>,
    ) -> Result<Checkpoint, AuditError> {
        let (mut file, existed) = self.open_locked()?;
        let state = self.read_state()?;
        let tip = self.tip(&mut file, &state, notary.trust())?;
        let Tip {
            mut frontier,
            mut head,
            carried: mut lines,
            present,
            end,
            mut time,
        } = tip;
        let mut before_last = frontier.clone();
        for e in entries.iter_mut() {
            e.set_prev(head);
            let line = e.canonical();
            head = hex::encode(Sha256::digest(&line));
            before_last = frontier.clone();
            frontier.push(&leaf_hash(&line));
            time = time.max(e.time());
            lines.push(line);
        }
        if lines.is_empty() {
            return Err(self.damaged("nothing to append"));
        }
        let (checkpoint, note) = notary.sign(frontier.size(), frontier.root(), time)?;
        let as_text = |lines: &[Vec<u8>]| -> Vec<String> {
            lines
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect()
        };
        // 2. The pending checkpoint and its lines, durable before any line is written.
        self.write_state(&State {
            v: 1,
            checkpoint: state.checkpoint.clone(),
            pending: Some(Pending {
                note: note.clone(),
                lines: as_text(&lines),
            }),
        })?;
        // 3. The lines not yet in the file, after cutting off an incomplete last line.
        let len = file.metadata().map_err(|e| self.io(e))?.len();
        if len != end {
            file.set_len(end).map_err(|e| self.io(e))?;
        }
        let mut buf = Vec::new();
        for line in &lines[present..] {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        file.write_all(&buf).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))?;
        if !existed {
            // A new file's directory entry must be durable too.
            if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(dir).map_err(|e| self.io(e))?;
            }
        }
        // 4. The new checkpoint is the last one.
        self.write_state(&State {
            v: 1,
            checkpoint: Some(Covered {
                note,
                offset: end + buf.len() as u64,
                path: before_last
                    .next_leaf_path()
                    .iter()
                    .map(|h| B64.encode(h))
                    .collect(),
            }),
            pending: None,
        })?;
        Ok(checkpoint)
    }

    /// Reads the log and its checkpoint file under a shared lock (an append in progress
    /// finishes first); also returns where each entry's line ends.
    fn load_shared(&self) -> Result<(LogContents, Vec<u64>, State), AuditError> {
        match File::open(&self.path) {
            Ok(file) => {
                file.lock_shared().map_err(|e| self.io(e))?;
                self.read_locked(&file)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let state = self.read_state()?;
                let empty = LogContents {
                    entries: Vec::new(),
                    leaves: Vec::new(),
                    head: GENESIS.into(),
                    fragment: None,
                    checkpoint: state.checkpoint.as_ref().map(|c| c.note.clone()),
                    pending: state.pending.as_ref().map(|p| PendingAppend {
                        note: p.note.clone(),
                        lines: p.lines.iter().map(|l| l.clone().into_bytes()).collect(),
                    }),
                };
                Ok((empty, Vec::new(), state))
            }
            Err(e) => Err(self.io(e)),
        }
    }

    /// Reads every line of the locked log, checking the chain, and the checkpoint file.
    fn read_locked(&self, file: &File) -> Result<(LogContents, Vec<u64>, State), AuditError> {
        let state = self.read_state()?;
        let (contents, ends) = self.read_log(BufReader::new(file), &state)?;
        Ok((contents, ends, state))
    }

    /// Reads log lines (the file's bytes from `reader`), checking each line and the chain.
    fn read_log(
        &self,
        mut reader: impl BufRead,
        state: &State,
    ) -> Result<(LogContents, Vec<u64>), AuditError> {
        let mut prev = GENESIS.to_string();
        let mut entries = Vec::new();
        let mut leaves = Vec::new();
        let mut ends = Vec::new();
        let mut fragment = None;
        let mut line = Vec::new();
        let mut n: u64 = 0;
        let mut offset: u64 = 0;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| self.io(e))?;
            if read == 0 {
                break;
            }
            n += 1;
            offset += read as u64;
            let Some(body) = line.strip_suffix(b"\n") else {
                fragment = Some(line.clone());
                break;
            };
            let entry = AuditEntry::parse(body)
                .map_err(|detail| AuditError::Malformed { line: n, detail })?;
            if entry.prev() != prev {
                return Err(AuditError::Broken { line: n });
            }
            prev = hex::encode(Sha256::digest(body));
            leaves.push(leaf_hash(body));
            ends.push(offset);
            entries.push(entry);
        }
        let contents = LogContents {
            entries,
            leaves,
            head: prev,
            fragment,
            checkpoint: state.checkpoint.as_ref().map(|c| c.note.clone()),
            pending: state.pending.as_ref().map(|p| PendingAppend {
                note: p.note.clone(),
                lines: p.lines.iter().map(|l| l.clone().into_bytes()).collect(),
            }),
        };
        Ok((contents, ends))
    }

    /// Checks the checkpoint file's hints (where the covered entries end, the last one's audit
    /// path) against the log, once [`verify_log`] has checked the checkpoint: hints that do not
    /// fit would stop the next append.
    fn check_hints(
        &self,
        log: &LogContents,
        ends: &[u64],
        state: &State,
        verified: &Verified,
    ) -> Result<(), AuditError> {
        let (Some(c), Some(cp)) = (&state.checkpoint, &verified.checkpoint) else {
            return Ok(());
        };
        let size = usize::try_from(cp.size).unwrap_or(usize::MAX);
        if size == 0 || ends.get(size - 1) != Some(&c.offset) {
            return Err(self.damaged("the covered entries do not end where it says"));
        }
        let mut frontier = Frontier::new();
        for leaf in &log.leaves[..size - 1] {
            frontier.push(leaf);
        }
        if self.path_of(c)? != frontier.next_leaf_path() {
            return Err(self.damaged("the audit path of the last covered entry is wrong"));
        }
        Ok(())
    }
}

/// What [`export_log`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exported {
    /// Entries written: those the last checkpoint covers.
    pub records: u64,
    /// Entries after the last checkpoint, left out (no checkpoint covers them yet; a later
    /// export takes them).
    pub left_out: u64,
}

/// Writes the entries of `log` that its last checkpoint covers as a file log at `path`, with
/// its checkpoint file beside it — the format [`FileAuditLog`] reads, so that `audit verify
/// --log` checks it on any machine. Checks `log` with [`verify_log`] first (entries after the
/// checkpoint are allowed and left out). Refuses to overwrite either file.
pub fn export_log(
    log: &LogContents,
    trust: &AuditTrust,
    path: &Path,
) -> Result<Exported, AuditError> {
    let verified = verify_log(log, trust, &[], true)?;
    let covered = verified.checkpoint.as_ref().map_or(0, |c| c.size);
    let (Some(note), true) = (&log.checkpoint, covered > 0) else {
        return Err(AuditError::NoCheckpoint {
            records: verified.records,
        });
    };
    let out = FileAuditLog::new(path);
    let io = |p: &Path, source: io::Error| AuditError::Io {
        path: p.to_path_buf(),
        source,
    };
    let state_path = out.checkpoint_path();
    if state_path.exists() {
        return Err(io(
            &state_path,
            io::Error::new(io::ErrorKind::AlreadyExists, "already exists"),
        ));
    }
    // Invariant: covered <= entries (verify_log checked it).
    let count = usize::try_from(covered).unwrap_or(usize::MAX);
    let mut buf = Vec::new();
    for e in &log.entries[..count] {
        buf.extend_from_slice(&e.canonical());
        buf.push(b'\n');
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))?;
    file.write_all(&buf).map_err(|e| io(path, e))?;
    file.sync_all().map_err(|e| io(path, e))?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(dir).map_err(|e| io(dir, e))?;
    }
    let mut before_last = Frontier::new();
    for leaf in &log.leaves[..count - 1] {
        before_last.push(leaf);
    }
    out.write_state(&State {
        v: 1,
        checkpoint: Some(Covered {
            note: note.clone(),
            offset: buf.len() as u64,
            path: before_last
                .next_leaf_path()
                .iter()
                .map(|h| B64.encode(h))
                .collect(),
        }),
        pending: None,
    })?;
    Ok(Exported {
        records: covered,
        left_out: verified.records - covered,
    })
}

/// The file store's reader on arbitrary bytes — a log file and its checkpoint file — with the
/// whole-log check `audit verify` makes, for the fuzzer: never a panic, and never a log that
/// verifies without a checkpoint the fuzzer could not have signed.
#[cfg(fuzzing)]
pub fn fuzz_audit_log(
    log: &[u8],
    checkpoint: &[u8],
    trust: &AuditTrust,
) -> Result<Verified, AuditError> {
    let store = FileAuditLog::new("fuzz/audit.jsonl");
    let state = if checkpoint.is_empty() {
        State::default()
    } else {
        store.parse_state(checkpoint)?
    };
    let (contents, ends) = store.read_log(log, &state)?;
    let verified = verify_log(&contents, trust, &[], false)?;
    store.check_hints(&contents, &ends, &state, &verified)?;
    Ok(verified)
}

impl AuditStore for FileAuditLog {
    fn describe(&self) -> String {
        format!("audit log {}", self.path.display())
    }

    fn append(
        &self,
        entries: &mut [AuditEntry],
        notary: &Notary<'_>,
    ) -> Result<Checkpoint, AuditError> {
        self.append_locked(entries, notary)
    }

    fn load(&self) -> Result<LogContents, AuditError> {
        self.load_shared().map(|(log, _, _)| log)
    }

    fn writable(&self) -> Result<(), AuditError> {
        let io = |path: &Path, source: std::io::Error| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        // The log is appended to, the checkpoint replaced by a rename in its directory: the
        // log must open for appending, and the directory (or, before the first append
        // creates it, the nearest existing parent) must take a new file.
        if self.path.exists() {
            OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map_err(|e| io(&self.path, e))?;
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let existing = dir
            .ancestors()
            .find(|d| d.as_os_str().is_empty() || d.exists())
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !existing.is_dir() {
            return Err(io(
                existing,
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).map_err(|e| io(existing, std::io::Error::other(e)))?;
        let probe = existing.join(format!(".hwpass-probe-{}", hex::encode(nonce)));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| io(existing, e))?;
        std::fs::remove_file(&probe).map_err(|e| io(&probe, e))
    }

    fn verify(&self, trust: &AuditTrust, saved: &[String]) -> Result<Verified, AuditError> {
        let (log, ends, state) = self.load_shared()?;
        let verified = verify_log(&log, trust, saved, false)?;
        self.check_hints(&log, &ends, &state, &verified)?;
        Ok(verified)
    }

    fn seal(&self, notary: &Notary<'_>) -> Result<Verified, AuditError> {
        let (file, _) = self.open_locked()?;
        let (log, ends, _) = self.read_locked(&file)?;
        let verified = verify_log(&log, notary.trust(), &[], true)?;
        if log.fragment.is_some() && log.pending.is_none() {
            return Err(AuditError::Uncovered {
                count: 1,
                after: log.leaves.len() as u64,
            });
        }
        if log.leaves.is_empty() || log.pending.is_some() {
            // Nothing to cover, or an unfinished append that the next append completes.
            return Ok(verified);
        }
        let mut frontier = Frontier::new();
        let mut before_last = frontier.clone();
        for leaf in &log.leaves {
            before_last = frontier.clone();
            frontier.push(leaf);
        }
        let time = log
            .entries
            .iter()
            .map(AuditEntry::time)
            .max()
            .unwrap_or(i64::MIN);
        let (checkpoint, note) = notary.sign(frontier.size(), frontier.root(), time)?;
        let offset = ends.last().copied().unwrap_or(0);
        self.write_state(&State {
            v: 1,
            checkpoint: Some(Covered {
                note,
                offset,
                path: before_last
                    .next_leaf_path()
                    .iter()
                    .map(|h| B64.encode(h))
                    .collect(),
            }),
            pending: None,
        })?;
        Ok(Verified {
            checkpoint: Some(checkpoint),
            ..verified
        })
    }

    fn find_issued(&self, jti: &str) -> Result<Option<AuditRecord>, AuditError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let mut found = None;
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|e| self.io(e))?;
            if let Ok(record) = serde_json::from_slice::<AuditRecord>(&line) {
                if record.jti == jti {
                    found = Some(record);
                }
            }
        }
        Ok(found)
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
    fn location(&self) -> PathBuf {
        self.path.clone()
    }

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
                already: false,
                audit_error: None,
            }
        );
        let r = store.revoke(pass("p1", 1_000), "admin", None, 201).unwrap();
        assert_eq!(
            r,
            Revoked {
                seq: 2,
                already: true,
                audit_error: None,
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

    #[test]
    fn a_register_at_the_highest_sequence_number_refuses_to_change_instead_of_wrapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.json");
        let text = format!(
            "{{\"v\":1,\"seq\":{},\"kids\":[],\"passes\":[],\"devices\":[]}}",
            u64::MAX
        );
        std::fs::write(&path, &text).unwrap();
        let store = FileRegister::new(&path);
        let err = store
            .revoke(Target::Device { jkt: "d".into() }, "a", None, 1)
            .unwrap_err();
        assert!(
            matches!(
                err,
                RevocationError::SequenceExhausted { seq: u64::MAX, .. }
            ),
            "{err}"
        );
        let key = MemoryKey::generate();
        let bundle = Jwks::new([Jwk::new(*key.verifying_key())], None);
        assert!(matches!(
            store.publish(&bundle, &key, 1),
            Err(RevocationError::SequenceExhausted { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "left as it was"
        );
    }

    fn record(i: i64) -> AuditEntry {
        AuditEntry::Issued(AuditRecord {
            v: 1,
            time: 1_800_000_000 + i,
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
            idp: None,
            group: None,
            tpm: None,
            prev: String::new(),
        })
    }

    fn setup() -> (tempfile::TempDir, FileAuditLog, AuditTrust, MemoryKey) {
        let dir = tempfile::tempdir().unwrap();
        let log = FileAuditLog::new(dir.path().join("audit/audit.jsonl"));
        let key = MemoryKey::generate();
        let trust = AuditTrust::new("test/audit", [*key.verifying_key()]).unwrap();
        (dir, log, trust, key)
    }

    #[test]
    fn appends_carry_checkpoints_and_verify_checks_everything() {
        let (_dir, log, trust, key) = setup();
        let notary = Notary::new(&trust, &key);
        let cp = log.append(&mut [record(1), record(2)], &notary).unwrap();
        assert_eq!(cp.size, 2);
        log.append(&mut [record(3)], &notary).unwrap();
        let (records, s) = log.read().unwrap();
        assert_eq!((records.len(), s.records), (3, 3));
        assert_eq!(records[0].prev, GENESIS);
        let v = log.verify(&trust, &[]).unwrap();
        assert_eq!(
            (v.records, v.checkpoint.unwrap().size, v.pending),
            (3, 3, 0)
        );
        let text = std::fs::read_to_string(log.path()).unwrap();

        // Edit line 2: line 3 no longer follows it.
        std::fs::write(log.path(), text.replacen("jti2", "jtiX", 1)).unwrap();
        assert!(matches!(
            log.verify(&trust, &[]),
            Err(AuditError::Broken { line: 3 })
        ));
        // Delete line 1: line 2 (now first) does not start the chain.
        let deleted: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        std::fs::write(log.path(), deleted).unwrap();
        assert!(matches!(
            log.verify(&trust, &[]),
            Err(AuditError::Broken { line: 1 })
        ));
        std::fs::write(log.path(), "garbage\n").unwrap();
        assert!(matches!(
            log.verify(&trust, &[]),
            Err(AuditError::Malformed { line: 1, .. })
        ));
        // Re-encoded (same JSON, other bytes) is refused too: the bytes are the leaves.
        std::fs::write(log.path(), text.replacen("\"v\":1,", "\"v\": 1,", 1)).unwrap();
        assert!(matches!(
            log.verify(&trust, &[]),
            Err(AuditError::Malformed { line: 1, .. })
        ));
        std::fs::write(log.path(), &text).unwrap();
        log.verify(&trust, &[]).unwrap();
    }

    /// A crash at each step of an append: the next append finishes it, and nothing acknowledged
    /// is lost or left uncovered.
    #[test]
    fn an_interrupted_append_is_completed_by_the_next() {
        let (_dir, log, trust, key) = setup();
        let notary = Notary::new(&trust, &key);
        log.append(&mut [record(1)], &notary).unwrap();
        let covered = std::fs::read(log.checkpoint_path()).unwrap();
        let before = std::fs::read(log.path()).unwrap();
        log.append(&mut [record(2), record(3)], &notary).unwrap();
        let after = std::fs::read(log.path()).unwrap();
        // Rebuild "step 2 done": the old checkpoint plus the pending one with the new lines.
        let mut state: State = serde_json::from_slice(&covered).unwrap();
        let done: State =
            serde_json::from_slice(&std::fs::read(log.checkpoint_path()).unwrap()).unwrap();
        let new_lines: Vec<String> = String::from_utf8(after[before.len()..].to_vec())
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        state.pending = Some(Pending {
            note: done.checkpoint.unwrap().note,
            lines: new_lines,
        });
        let pending_state = serde_json::to_vec(&state).unwrap();
        // Crash points: nothing written, one line, one line and a half, everything.
        let first_end = before.len()
            + after[before.len()..]
                .iter()
                .position(|&b| b == b'\n')
                .unwrap()
            + 1;
        let half_second = first_end + (after.len() - first_end) / 2;
        for cut in [before.len(), first_end, half_second, after.len()] {
            std::fs::write(log.checkpoint_path(), &pending_state).unwrap();
            std::fs::write(log.path(), &after[..cut]).unwrap();
            let v = log.verify(&trust, &[]).unwrap();
            assert_eq!(v.checkpoint.unwrap().size, 1, "cut at {cut}");
            assert_eq!(v.torn_tail, cut == half_second);
            log.append(&mut [record(4)], &notary).unwrap();
            let v = log.verify(&trust, &[]).unwrap();
            assert_eq!(
                (v.records, v.pending, v.torn_tail),
                (4, 0, false),
                "cut at {cut}"
            );
            assert_eq!(std::fs::read(log.path()).unwrap()[..after.len()], after[..]);
        }
    }

    #[test]
    fn an_incomplete_line_that_no_append_explains_stops_appending_and_is_kept() {
        let (_dir, log, trust, key) = setup();
        let notary = Notary::new(&trust, &key);
        log.append(&mut [record(1), record(2)], &notary).unwrap();
        let text = std::fs::read(log.path()).unwrap();
        // The last record loses its newline: the checkpoint covers bytes that are gone.
        std::fs::write(log.path(), &text[..text.len() - 1]).unwrap();
        assert!(matches!(
            log.verify(&trust, &[]),
            Err(AuditError::Cut {
                covered: 2,
                present: Some(1)
            })
        ));
        assert!(matches!(
            log.append(&mut [record(3)], &notary),
            Err(AuditError::Cut { covered: 2, .. })
        ));
        assert_eq!(
            std::fs::read(log.path()).unwrap(),
            &text[..text.len() - 1],
            "nothing removed"
        );
        // A fragment after the covered records that hwpass did not write.
        let mut more = text.clone();
        more.extend_from_slice(b"{\"v\":1,\"ti");
        std::fs::write(log.path(), &more).unwrap();
        assert!(matches!(
            log.verify(&trust, &[]),
            Err(AuditError::Uncovered { count: 1, after: 2 })
        ));
        assert!(matches!(
            log.append(&mut [record(3)], &notary),
            Err(AuditError::Uncovered { .. })
        ));
        assert_eq!(std::fs::read(log.path()).unwrap(), more);
    }
}
