//! Signed checkpoints of the audit log.
//!
//! The log's entries are the leaves of an RFC 6962 Merkle tree (each leaf is an entry's
//! canonical JSON, the bytes of its line without the newline). A checkpoint names the tree —
//! the log's name, its size and its root hash — in the C2SP `tlog-checkpoint` format, signed as
//! a C2SP `signed-note` with the issuer's P-256 key (signature type 0x02, ECDSA):
//!
//! ```text
//! <origin>\n                       the log's name, e.g. issuer.example/hwpass-audit
//! <size>\n                         number of entries covered, decimal
//! <base64 root>\n                  RFC 6962 Merkle tree hash of those entries (std base64)
//! Time: 2027-01-15T08:00:00Z\n     extension line: when the newest covered entry was written
//! \n
//! — <origin> <base64(key id ‖ DER ECDSA signature over the four lines above)>\n
//! ```
//!
//! The key id is the first four bytes of SHA-256 of the key's DER SubjectPublicKeyInfo, as
//! transparency-dev/witness and the C2SP signed-note spec define for type 0x02; the signature is
//! ECDSA P-256 over SHA-256 of the body. A third party verifies it with the issuer's public key
//! and any ECDSA implementation (`openssl dgst -sha256 -verify`), and an entry's inclusion with
//! any RFC 6962 implementation.
//!
//! The issuer key signs JWS (ASCII `header.payload`, no newline) and these notes (at least four
//! lines): no message can be read as both, so one key serves both without confusion.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::EncodePublicKey as _;
use sha2::{Digest as _, Sha256};

use crate::core::signer::{SignError, Signer};
use crate::core::time::{format_time, in_range};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// C2SP signed-note: the signature type byte of ECDSA (P-256 here).
const SIG_TYPE_ECDSA: u8 = 0x02;
/// Largest note read.
const MAX_NOTE: usize = 64 * 1024;
/// Most signature lines read (the spec asks verifiers to accept at least 16).
const MAX_SIGNATURES: usize = 100;
/// Largest tree size believed: far more entries than any log holds, and small enough that every
/// index computation stays far from overflow.
pub const MAX_TREE_SIZE: u64 = 1 << 48;

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The text is not a checkpoint in a signed note.
    #[error("the checkpoint is not a signed checkpoint note: {0}")]
    Malformed(&'static str),
    /// The checkpoint is of another log.
    #[error("the checkpoint is for the log {found:?}, not {expected:?}")]
    WrongOrigin {
        /// This log's name.
        expected: String,
        /// The name in the checkpoint.
        found: String,
    },
    /// No signature is by a key this issuer trusts.
    #[error("the checkpoint carries no signature by a trusted issuer key")]
    UnknownKey,
    /// A trusted key's signature does not verify.
    #[error("the checkpoint's signature does not verify")]
    BadSignature,
    /// A log name that a checkpoint cannot carry.
    #[error("the audit log name {0:?} must be 1 to 255 printable ASCII characters without spaces or '+'")]
    BadOrigin(String),
    /// The time to put in the checkpoint is outside 1970…9999.
    #[error("the checkpoint time {0} is outside 1970…9999")]
    TimeOutOfRange(i64),
}

// ---------------------------------------------------------------------------------------------
// RFC 6962 Merkle tree

/// RFC 6962 §2.1: the hash of a leaf, SHA-256(0x00 ‖ bytes).
pub fn leaf_hash(bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(bytes);
    h.finalize().into()
}

/// RFC 6962 §2.1: the hash of an interior node, SHA-256(0x01 ‖ left ‖ right).
fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The right edge of an RFC 6962 Merkle tree: the roots of the perfect subtrees its leaves
/// split into (one per set bit of the size, largest first). Enough to compute the root and to
/// append leaves without the leaves themselves. The tests check it against `ct-merkle`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf (its [`leaf_hash`]).
    pub fn push(&mut self, leaf: &Hash) {
        let mut hash = *leaf;
        // Each trailing one bit of the size is a subtree as large as the one being carried:
        // merge them, as binary addition carries.
        let mut carries = self.size.trailing_ones();
        while carries > 0 {
            // Invariant: nodes.len() == size.count_ones() >= trailing_ones, so pop succeeds.
            let Some(left) = self.nodes.pop() else { break };
            hash = node_hash(&left, &hash);
            carries -= 1;
        }
        self.nodes.push(hash);
        // Invariant: sizes count entries of a log, far below u64::MAX (see MAX_TREE_SIZE).
        self.size = self.size.saturating_add(1);
    }

    /// The Merkle tree hash (RFC 6962 §2.1: SHA-256 of nothing for the empty tree).
    pub fn root(&self) -> Hash {
        let mut from_right = self.nodes.iter().rev();
        match from_right.next() {
            None => Sha256::digest([]).into(),
            Some(last) => from_right.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }

    /// The audit path (RFC 6962 §2.1.1) of the leaf that would come next, in the tree that
    /// holds it: these subtree roots, smallest first.
    pub fn next_leaf_path(&self) -> Vec<Hash> {
        self.nodes.iter().rev().copied().collect()
    }

    /// The frontier of a tree of `size` leaves from [`Self::next_leaf_path`]; `None` if the path
    /// has the wrong length for that size.
    pub fn from_next_leaf_path(size: u64, path: &[Hash]) -> Option<Self> {
        (size <= MAX_TREE_SIZE && path.len() == size.count_ones() as usize).then(|| Self {
            size,
            nodes: path.iter().rev().copied().collect(),
        })
    }
}

/// Whether `leaf` (an entry's bytes) is the last of the `size` leaves whose tree hash is `root`,
/// given its audit path (RFC 6962 §2.1.1), checked by the `ct-merkle` crate.
pub fn is_last_leaf(size: u64, root: &Hash, leaf: &[u8], path: &[Hash]) -> bool {
    if size == 0 || size > MAX_TREE_SIZE {
        return false;
    }
    let root = ct_merkle::RootHash::<Sha256>::new((*root).into(), size);
    let proof = ct_merkle::InclusionProof::<Sha256>::from_bytes(path.concat());
    root.verify_inclusion(&leaf, size - 1, &proof).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Checkpoint and signed note

/// A checkpoint: the state of the log it names (C2SP tlog-checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (the origin line).
    pub origin: String,
    /// Number of entries covered.
    pub size: u64,
    /// RFC 6962 Merkle tree hash of those entries.
    pub root: Hash,
    /// When the newest covered entry was written (Unix seconds).
    pub time: i64,
}

impl Checkpoint {
    /// The note body the signature covers.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\nTime: {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            format_time(self.time)
        )
    }

    /// Parses a body: exactly the origin, size and root lines and one `Time:` line.
    fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let bad = CheckpointError::Malformed;
        let lines: Vec<&str> = body
            .strip_suffix('\n')
            .ok_or(bad("the body does not end with a newline"))?
            .split('\n')
            .collect();
        let [origin, size, root, time] = lines.as_slice() else {
            return Err(bad(
                "the body is not four lines (origin, size, root hash, time)",
            ));
        };
        if origin.is_empty() {
            return Err(bad("the origin line is empty"));
        }
        let size_ok = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (*size == "0" || !size.starts_with('0'));
        let size: u64 = size
            .parse()
            .ok()
            .filter(|s| size_ok && *s <= MAX_TREE_SIZE)
            .ok_or(bad("the size line is not a decimal number"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(bad("the root hash line is not 32 bytes of base64"))?;
        let time = time
            .strip_prefix("Time: ")
            .and_then(|t| {
                let parsed = humantime::parse_rfc3339(t).ok()?;
                let secs = parsed.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
                let secs = i64::try_from(secs).ok().filter(|s| in_range(*s))?;
                // Only the one spelling hwpass writes.
                (format_time(secs) == t).then_some(secs)
            })
            .ok_or(bad("the extension line is not `Time: <RFC 3339 UTC>`"))?;
        Ok(Self {
            origin: (*origin).to_string(),
            size,
            root,
            time,
        })
    }
}

/// Checks a log name: what a note's origin line and key name may hold (C2SP signed-note: no
/// spaces, no `+`), kept to printable ASCII so it shows plainly everywhere.
pub fn check_origin(origin: &str) -> Result<(), CheckpointError> {
    let ok = (1..=255).contains(&origin.len())
        && origin.bytes().all(|b| b.is_ascii_graphic() && b != b'+');
    if ok {
        Ok(())
    } else {
        Err(CheckpointError::BadOrigin(origin.to_string()))
    }
}

/// A trusted key as signed notes name it.
#[derive(Debug, Clone)]
struct NoteKey {
    key: VerifyingKey,
    spki: Vec<u8>,
    id: [u8; 4],
}

impl NoteKey {
    fn new(key: VerifyingKey) -> Self {
        // Invariant: a valid P-256 public key always encodes as SubjectPublicKeyInfo.
        let spki = key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let digest = Sha256::digest(&spki);
        let id = [digest[0], digest[1], digest[2], digest[3]];
        Self { key, spki, id }
    }
}

/// Which log checkpoints are for, and whose signatures on them count: the issuer's keys (the
/// signing key and the `also_trusted` ones). Verifying needs no PIN.
#[derive(Debug, Clone)]
pub struct AuditTrust {
    origin: String,
    keys: Vec<NoteKey>,
}

impl AuditTrust {
    /// Trust for the log named `origin`, signed by any of `keys`.
    pub fn new(
        origin: &str,
        keys: impl IntoIterator<Item = VerifyingKey>,
    ) -> Result<Self, CheckpointError> {
        check_origin(origin)?;
        Ok(Self {
            origin: origin.to_string(),
            keys: keys.into_iter().map(NoteKey::new).collect(),
        })
    }

    /// The log's name.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The keys as verifier keys for Go's `golang.org/x/mod/sumdb/note` and other C2SP tools:
    /// `<name>+<hex key id>+<base64(0x02 ‖ SubjectPublicKeyInfo)>`.
    pub fn verifier_keys(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| {
                let mut blob = vec![SIG_TYPE_ECDSA];
                blob.extend_from_slice(&k.spki);
                format!("{}+{}+{}", self.origin, hex::encode(k.id), B64.encode(blob))
            })
            .collect()
    }

    /// Verifies a signed checkpoint note and returns the checkpoint: it must name this log and
    /// carry a valid signature by a trusted key; signatures by other keys are ignored (C2SP
    /// signed-note), a trusted key's failing signature rejects the note.
    pub fn open(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let bad = CheckpointError::Malformed;
        if note.len() > MAX_NOTE {
            return Err(bad("longer than 64 KiB"));
        }
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad("it holds a control character"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or(bad("no blank line before the signatures"))?;
        let (body, signatures) = (&note[..split + 1], &note[split + 2..]);
        let checkpoint = Checkpoint::parse_body(body)?;
        if checkpoint.origin != self.origin {
            return Err(CheckpointError::WrongOrigin {
                expected: self.origin.clone(),
                found: checkpoint.origin,
            });
        }
        let lines: Vec<&str> = signatures
            .strip_suffix('\n')
            .ok_or(bad("the signatures do not end with a newline"))?
            .split('\n')
            .collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(bad("more than 100 signature lines"));
        }
        let mut verified = false;
        for line in lines {
            let (name, sig) = line
                .strip_prefix("\u{2014} ")
                .and_then(|rest| rest.split_once(' '))
                .ok_or(bad("a signature line is not `— <name> <base64>`"))?;
            if name.is_empty() || sig.contains(' ') {
                return Err(bad("a signature line is not `— <name> <base64>`"));
            }
            let blob = B64
                .decode(sig)
                .map_err(|_| bad("a signature is not base64"))?;
            if blob.len() < 5 {
                return Err(bad("a signature is too short"));
            }
            if name != self.origin {
                continue;
            }
            for k in self.keys.iter().filter(|k| blob[..4] == k.id) {
                let sig =
                    Signature::from_der(&blob[4..]).map_err(|_| CheckpointError::BadSignature)?;
                k.key
                    .verify(body.as_bytes(), &sig)
                    .map_err(|_| CheckpointError::BadSignature)?;
                verified = true;
            }
        }
        if verified {
            Ok(checkpoint)
        } else {
            Err(CheckpointError::UnknownKey)
        }
    }
}

/// Signs checkpoints: the log's trust and the issuer key that signs.
#[derive(Clone, Copy)]
pub struct Notary<'a> {
    trust: &'a AuditTrust,
    signer: &'a (dyn Signer + Sync),
}

impl std::fmt::Debug for Notary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notary")
            .field("origin", &self.trust.origin)
            .finish_non_exhaustive()
    }
}

/// Why a checkpoint could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotaryError {
    /// The checkpoint cannot be made.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The key failed.
    #[error("the checkpoint could not be signed: {0}")]
    Sign(#[from] SignError),
}

impl<'a> Notary<'a> {
    /// A notary signing with `signer` for the log `trust` names.
    pub fn new(trust: &'a AuditTrust, signer: &'a (dyn Signer + Sync)) -> Self {
        Self { trust, signer }
    }

    /// The log's trust (for checking the checkpoint already there).
    pub fn trust(&self) -> &'a AuditTrust {
        self.trust
    }

    /// Signs the checkpoint for a tree of `size` entries with this root, written at `time`;
    /// returns it and its signed note.
    pub fn sign(
        &self,
        size: u64,
        root: Hash,
        time: i64,
    ) -> Result<(Checkpoint, String), NotaryError> {
        if !in_range(time) {
            return Err(CheckpointError::TimeOutOfRange(time).into());
        }
        let checkpoint = Checkpoint {
            origin: self.trust.origin.clone(),
            size,
            root,
            time,
        };
        let body = checkpoint.body();
        // ES256 as the Signer trait defines it: ECDSA P-256 over SHA-256(body), r‖s. The
        // signed-note ECDSA type carries it DER-encoded (ECDSA-Sig-Value).
        let sig = self.signer.try_sign(body.as_bytes())?;
        let key = NoteKey::new(*self.signer.verifying_key());
        let mut blob = key.id.to_vec();
        blob.extend_from_slice(sig.to_der().as_bytes());
        let note = format!(
            "{body}\n\u{2014} {} {}\n",
            self.trust.origin,
            B64.encode(blob)
        );
        Ok((checkpoint, note))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::signer::MemoryKey;
    use ct_merkle::mem_backed_tree::MemoryBackedTree;

    #[test]
    fn frontier_agrees_with_ct_merkle_for_roots_and_last_leaf_paths() {
        let mut reference = MemoryBackedTree::<Sha256, Vec<u8>>::new();
        let mut frontier = Frontier::new();
        // RFC 6962: the empty tree hashes to SHA-256 of nothing.
        assert_eq!(frontier.root()[..], Sha256::digest([])[..]);
        for i in 0..130u64 {
            let leaf = format!("entry {i}").into_bytes();
            let path = frontier.next_leaf_path();
            reference.push(leaf.clone());
            frontier.push(&leaf_hash(&leaf));
            let root = reference.root();
            assert_eq!(
                frontier.root()[..],
                root.as_bytes()[..],
                "root at {}",
                i + 1
            );
            let theirs = reference.prove_inclusion(i as usize);
            let ours: Vec<u8> = path.concat();
            assert_eq!(ours, theirs.as_bytes(), "path of leaf {i}");
            assert!(is_last_leaf(i + 1, &frontier.root(), &leaf, &path));
            assert!(!is_last_leaf(i + 1, &frontier.root(), b"other", &path));
            let rebuilt = Frontier::from_next_leaf_path(i, &path).unwrap();
            let mut again = rebuilt.clone();
            again.push(&leaf_hash(&leaf));
            assert_eq!(again, frontier);
        }
        assert!(Frontier::from_next_leaf_path(3, &[[0; 32]]).is_none());
        assert!(!is_last_leaf(u64::MAX, &[0; 32], b"x", &[]));
    }

    #[test]
    fn rfc6962_known_answer() {
        // MTH of the one empty leaf: SHA-256(0x00).
        let mut f = Frontier::new();
        f.push(&leaf_hash(b""));
        assert_eq!(
            hex::encode(f.root()),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    fn trust_and_key() -> (AuditTrust, MemoryKey) {
        let key = MemoryKey::generate();
        let trust = AuditTrust::new("issuer.example/hwpass-audit", [*key.verifying_key()]).unwrap();
        (trust, key)
    }

    #[test]
    fn notes_round_trip_and_every_change_is_refused() {
        let (trust, key) = trust_and_key();
        let notary = Notary::new(&trust, &key);
        let (cp, note) = notary.sign(3, [0xab; 32], 1_800_000_000).unwrap();
        assert!(note.starts_with(
            "issuer.example/hwpass-audit\n3\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\nTime: 2027-01-15T08:00:00Z\n\n\u{2014} issuer.example/hwpass-audit "
        ), "{note}");
        assert_eq!(trust.open(&note).unwrap(), cp);

        let changed = note.replacen("\n3\n", "\n4\n", 1);
        assert_eq!(trust.open(&changed), Err(CheckpointError::BadSignature));
        let other_log = AuditTrust::new("other/log", [*key.verifying_key()]).unwrap();
        assert!(matches!(
            other_log.open(&note),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        let stranger = MemoryKey::generate();
        let strangers = AuditTrust::new(trust.origin(), [*stranger.verifying_key()]).unwrap();
        assert_eq!(strangers.open(&note), Err(CheckpointError::UnknownKey));
        // A forger's own signature line (another key id) is ignored; without ours it fails.
        let (_, forged) = Notary::new(&strangers, &stranger)
            .sign(3, [0xab; 32], 1_800_000_000)
            .unwrap();
        assert_eq!(trust.open(&forged), Err(CheckpointError::UnknownKey));
        // Both signatures: ours verifies, the unknown one is ignored.
        let sig_line = forged.rsplit_once("\n\n").unwrap().1;
        assert_eq!(trust.open(&format!("{note}{sig_line}")).unwrap(), cp);
        for bad in [
            "",
            "\n\n",
            note.trim_end(),
            &note.replace("Time: ", "Time:"),
            &note.replacen("\n3\n", "\n03\n", 1),
            &note.replacen('\n', "\r\n", 1),
        ] {
            assert!(trust.open(bad).is_err(), "{bad:?}");
        }
        assert!(notary.sign(1, [0; 32], -1).is_err());
        assert!(AuditTrust::new("has space", []).is_err());
        assert!(AuditTrust::new("a+b", []).is_err());
        assert!(trust.verifier_keys()[0].starts_with("issuer.example/hwpass-audit+"));
    }
}
