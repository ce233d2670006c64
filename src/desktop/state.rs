//! The state directory and the sealed state in it.
//!
//! - `device.json` (0600): the device's public key, its backend and the backend's record (the
//!   software key encrypted; TPM blobs that only that TPM can load).
//! - `state.sealed` (0600): AES-256-GCM of the trust bundle, the installed pass, the deny list
//!   and the time high-water mark, under a key the device backend keeps (sealed to the TPM, or
//!   derived for the software backend). The AAD names the device key, so one device's state
//!   cannot be passed off as another's.

use std::path::Path;

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::DesktopError;
use crate::core::b64::{b64url, b64url_decode};
use crate::core::signer::SignError;

/// Device record file name.
pub const DEVICE_FILE: &str = "device.json";
/// Sealed state file name.
pub const STATE_FILE: &str = "state.sealed";
/// Largest state file read, in bytes.
const MAX_STATE_FILE: u64 = 256 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFile {
    v: u32,
    nonce: String,
    ct: String,
}

/// The sealed desktop state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DesktopState {
    pub(crate) v: u32,
    pub(crate) trust: serde_json::Value,
    pub(crate) iss: String,
    pub(crate) aud: String,
    #[serde(default)]
    pub(crate) pass: Option<String>,
    /// The latest wall time recorded by install, check or refresh (clock-rollback detection):
    /// an expiry once seen stays seen.
    pub(crate) high_water: i64,
    /// The TPM clock when the state was last written, and the wall time then: the TPM clock
    /// persists across reboots, so the time it has counted since is a lower bound on the time
    /// that has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) clock_mark: Option<ClockMark>,
    /// The version of this state: the TPM NV counter value it was written for, or (without a
    /// counter) a generation raised at every write. Requests carry it (see `StateMark`).
    #[serde(default)]
    pub(crate) n: u64,
    /// Written by hwpass before 0.6 (the TPM clock within one reset epoch); read, not used.
    #[serde(default, skip_serializing)]
    #[serde(rename = "tpm_clock")]
    pub(crate) _tpm_clock: Option<serde_json::Value>,
    /// Sequence number of the installed deny list (0: none yet).
    #[serde(default)]
    pub(crate) denylist_seq: u64,
    /// Revoked pass ids, from the deny list.
    #[serde(default)]
    pub(crate) revoked_passes: Vec<String>,
    /// Revoked device key thumbprints, from the deny list.
    #[serde(default)]
    pub(crate) revoked_devices: Vec<String>,
    /// The issuing service `refresh --server` last used, for a bare `refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<String>,
    /// The CA file it was given with `--ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca: Option<std::path::PathBuf>,
}

impl DesktopState {
    /// A fresh state for an enrolment at `now`.
    pub(crate) fn new(trust: serde_json::Value, iss: String, aud: String, now: i64) -> Self {
        Self {
            v: 1,
            trust,
            iss,
            aud,
            pass: None,
            high_water: now,
            clock_mark: None,
            n: 0,
            _tpm_clock: None,
            denylist_seq: 0,
            revoked_passes: Vec::new(),
            revoked_devices: Vec::new(),
            server: None,
            ca: None,
        }
    }
}

/// The TPM clock (milliseconds the TPM has been powered, kept across reboots) at a wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClockMark {
    pub(crate) clock: u64,
    pub(crate) wall: i64,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DesktopError + '_ {
    move |source| DesktopError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn read_limited(path: &Path) -> Result<Vec<u8>, DesktopError> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    f.take(MAX_STATE_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > MAX_STATE_FILE {
        return Err(DesktopError::Damaged {
            path: path.into(),
            detail: "file is far too large".into(),
        });
    }
    Ok(buf)
}

fn state_aad(jkt: &str) -> Vec<u8> {
    format!("hwpass-state-v1:{jkt}").into_bytes()
}

/// Opens a sealed state file's bytes with the state key of the device whose key thumbprint is
/// `jkt`, returning the plaintext. This reads untrusted files (a fuzz target drives it).
pub fn open_sealed(
    bytes: &[u8],
    key: &[u8; 32],
    jkt: &str,
) -> Result<Zeroizing<Vec<u8>>, DesktopError> {
    let damaged = |detail: &str| DesktopError::Damaged {
        path: STATE_FILE.into(),
        detail: detail.into(),
    };
    let file: SealedFile =
        serde_json::from_slice(bytes).map_err(|_| damaged("not a sealed state file"))?;
    let nonce: [u8; 12] = b64url_decode(&file.nonce)
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| damaged("bad nonce"))?;
    let ct = b64url_decode(&file.ct).ok_or_else(|| damaged("bad ciphertext encoding"))?;
    let plain = Aes256Gcm::new(key.into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &ct,
                aad: &state_aad(jkt),
            },
        )
        .map_err(|_| {
            DesktopError::Foreign("the sealed state cannot be opened with this key".into())
        })?;
    Ok(Zeroizing::new(plain))
}

/// Seals plaintext the way the desktop writes `state.sealed`.
pub fn seal(plain: &[u8], key: &[u8; 32], jkt: &str) -> Result<Vec<u8>, DesktopError> {
    let mut nonce = [0u8; 12];
    getrandom::getrandom(&mut nonce).map_err(|_| DesktopError::from(SignError::Rng))?;
    let ct = Aes256Gcm::new(key.into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plain,
                aad: &state_aad(jkt),
            },
        )
        .map_err(|_| DesktopError::Input("state encryption failed".into()))?;
    let file = SealedFile {
        v: 1,
        nonce: b64url(&nonce),
        ct: b64url(&ct),
    };
    serde_json::to_vec(&file).map_err(|e| DesktopError::Input(e.to_string()))
}

/// Checks that decrypted state content is a valid desktop state (a fuzz entry point).
#[cfg(fuzzing)]
pub fn check_state_content(plain: &[u8]) -> Result<(), DesktopError> {
    parse_state(plain).map(|_| ())
}

pub(crate) fn parse_state(plain: &[u8]) -> Result<DesktopState, DesktopError> {
    serde_json::from_slice(plain).map_err(|e| DesktopError::Damaged {
        path: STATE_FILE.into(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_state_opens_only_with_its_key_and_device() {
        let key = [3u8; 32];
        let sealed = seal(b"{\"v\":1}", &key, "device-a").unwrap();
        assert_eq!(
            &open_sealed(&sealed, &key, "device-a").unwrap()[..],
            b"{\"v\":1}"
        );
        assert!(matches!(
            open_sealed(&sealed, &key, "device-b"),
            Err(DesktopError::Foreign(_))
        ));
        assert!(matches!(
            open_sealed(&sealed, &[4u8; 32], "device-a"),
            Err(DesktopError::Foreign(_))
        ));
        assert!(matches!(
            open_sealed(b"not json", &key, "device-a"),
            Err(DesktopError::Damaged { .. })
        ));
        assert!(parse_state(b"{}").is_err());
    }
}
