//! The issuer's revocation register: which passes and device keys are revoked, by whom and why,
//! and the sequence number of the signed deny list made from it.
//!
//! One JSON file, rewritten atomically (temp file, fsync, rename) under an exclusive lock on a
//! sibling `.lock` file, so the CLI and a running service can revoke at the same time.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::denylist::{self, DenyList, RevokedPass};
use crate::fsutil::write_atomic;
use crate::keys::{KeyBackend, KeyError};
use crate::token::{Jwks, TrustParams};

/// Largest register file read.
const MAX_REGISTER: u64 = 16 * 1024 * 1024;

/// What went wrong with the register.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The file could not be read or written.
    #[error("revocation register {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a register.
    #[error("revocation register {path} is damaged: {detail}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The deny list could not be signed.
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// A revoked pass, as the register keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassEntry {
    /// Pass id.
    pub jti: String,
    /// Its expiry (after which it leaves the signed list).
    pub exp: i64,
    /// Its subject.
    pub sub: String,
    /// When it was revoked.
    pub time: i64,
    /// Who revoked it.
    pub by: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A revoked device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// RFC 7638 thumbprint of the device key.
    pub jkt: String,
    /// When it was revoked.
    pub time: i64,
    /// Who revoked it.
    pub by: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The register's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// Format version.
    pub v: u32,
    /// Sequence number of the newest deny list content.
    pub seq: u64,
    /// Key ids in the newest deny list (a change of keys is a new sequence number too).
    pub kids: Vec<String>,
    /// Revoked passes.
    pub passes: Vec<PassEntry>,
    /// Revoked device keys.
    pub devices: Vec<DeviceEntry>,
}

/// What to revoke.
#[derive(Debug, Clone)]
pub enum Target {
    /// One pass (its `exp` and `sub` from the audit log).
    Pass {
        /// Pass id.
        jti: String,
        /// Its expiry.
        exp: i64,
        /// Its subject.
        sub: String,
    },
    /// Every pass bound to a device key.
    Device {
        /// RFC 7638 thumbprint.
        jkt: String,
    },
}

/// The outcome of a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Revoked {
    /// The deny list sequence number that carries it.
    pub seq: u64,
    /// It was revoked before (nothing changed).
    pub already: bool,
}

/// The register at a path.
#[derive(Debug, Clone)]
pub struct RevocationStore {
    path: PathBuf,
}

impl RevocationStore {
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
    pub fn load(&self) -> Result<Register, RevocationError> {
        use std::io::Read as _;
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

    /// Runs `f` on the register under the lock and writes the result back atomically when `f`
    /// says it changed something.
    fn update<R>(&self, f: impl FnOnce(&mut Register) -> (bool, R)) -> Result<R, RevocationError> {
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::fsutil::create_private_dir(dir).map_err(|e| self.io(e))?;
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
        let mut reg = self.load()?;
        let (changed, out) = f(&mut reg);
        if changed {
            let bytes = serde_json::to_vec_pretty(&reg).map_err(|e| self.io(e.into()))?;
            write_atomic(&self.path, &bytes).map_err(|e| self.io(e))?;
        }
        Ok(out)
    }

    /// Revokes a pass or a device key; the deny list's sequence number goes up by one unless it
    /// was revoked already. Durable when this returns.
    pub fn revoke(
        &self,
        target: Target,
        by: &str,
        reason: Option<String>,
        now: i64,
    ) -> Result<Revoked, RevocationError> {
        self.update(|reg| {
            let already = match &target {
                Target::Pass { jti, .. } => reg.passes.iter().any(|p| &p.jti == jti),
                Target::Device { jkt } => reg.devices.iter().any(|d| &d.jkt == jkt),
            };
            if already {
                return (
                    false,
                    Revoked {
                        seq: reg.seq,
                        already,
                    },
                );
            }
            match target {
                Target::Pass { jti, exp, sub } => reg.passes.push(PassEntry {
                    jti,
                    exp,
                    sub,
                    time: now,
                    by: by.into(),
                    reason,
                }),
                Target::Device { jkt } => reg.devices.push(DeviceEntry {
                    jkt,
                    time: now,
                    by: by.into(),
                    reason,
                }),
            }
            reg.seq += 1;
            (
                true,
                Revoked {
                    seq: reg.seq,
                    already,
                },
            )
        })
    }

    /// Signs the current deny list: the register's revocations (passes already expired left
    /// out) and the trust bundle's keys. A change of keys since the last list raises the
    /// sequence number, so desktops take the new keys.
    pub fn publish(
        &self,
        bundle: &Jwks,
        signer: &dyn KeyBackend,
        now: i64,
    ) -> Result<String, RevocationError> {
        self.publish_seq(bundle, signer, now).map(|(_, list)| list)
    }

    /// [`Self::publish`], also returning the list's sequence number.
    pub fn publish_seq(
        &self,
        bundle: &Jwks,
        signer: &dyn KeyBackend,
        now: i64,
    ) -> Result<(u64, String), RevocationError> {
        // The set of keys matters, not their order (the signing key is listed first).
        let mut kids: Vec<String> = bundle.keys.iter().map(|(k, _)| k.clone()).collect();
        kids.sort();
        let reg = self.update(|reg| {
            let changed = reg.kids != kids;
            if changed {
                reg.kids = kids;
                reg.seq += 1;
            }
            (changed, reg.clone())
        })?;
        let params = bundle.hwpass.clone().unwrap_or(TrustParams {
            iss: String::new(),
            aud: String::new(),
        });
        let keys = match bundle.to_json().get("keys") {
            Some(serde_json::Value::Array(keys)) => keys.clone(),
            _ => Vec::new(),
        };
        let list = DenyList {
            iss: params.iss,
            aud: params.aud,
            seq: reg.seq,
            iat: now,
            keys,
            passes: reg
                .passes
                .iter()
                // Leeway: a desktop accepts a pass until exp + LEEWAY_SECS.
                .filter(|p| p.exp.saturating_add(crate::token::LEEWAY_SECS) > now)
                .map(|p| RevokedPass {
                    jti: p.jti.clone(),
                    exp: p.exp,
                })
                .collect(),
            devices: reg.devices.iter().map(|d| d.jkt.clone()).collect(),
        };
        Ok((list.seq, denylist::sign(&list, signer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MemoryKey;
    use crate::token::Jwk;

    #[test]
    fn sequence_rises_with_each_change_and_keys_change_and_expired_passes_leave_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = RevocationStore::new(dir.path().join("sub/revocations.json"));
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
        let store = RevocationStore::new(&path);
        assert!(matches!(store.load(), Err(RevocationError::Damaged { .. })));
        assert!(store
            .revoke(Target::Device { jkt: "d".into() }, "a", None, 1)
            .is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"v\":1,\"seq\":");
    }
}
