//! The software device backend: the weaker binding, for machines without a TPM.
//!
//! The P-256 device key is generated in memory and stored encrypted (AES-256-GCM) in the state
//! directory. The wrapping key is HKDF-SHA256 over the machine's `/etc/machine-id`, with a
//! random 32-byte salt stored beside the key. The desktop's sealed state uses a second key from
//! the same derivation (another HKDF `info`).
//!
//! What this protects against: the state directory copied *alone* to another machine (a
//! backup, a synced folder, an e-mailed archive) cannot be opened there, and no key material
//! sits in plaintext on disk. What it does not protect against: anyone who can read this
//! user's files *and* `/etc/machine-id` (world-readable) on this machine — the user, root,
//! malware — nor a full disk image, which carries the machine-id. A TPM-bound key has none of
//! these weaknesses; passes record the binding as `software` so issuers can treat them as
//! weaker.

use std::path::Path;

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{Backend, Created, Device, DeviceOptions};
use crate::core::b64::{b64url, b64url_decode};
use crate::core::claims::BindingKind;
use crate::core::jwk::Jwk;
use crate::core::signer::{MemoryKey, SignError, Signer};
use crate::desktop::error::{DesktopError, DeviceFault, FaultKind};
use crate::desktop::state;

/// Environment variable the `hwpass` binary reads to override the machine identity file.
/// Meant for tests that model "another machine"; it grants nothing, since the real machine-id
/// is world-readable anyway.
pub const MACHINE_ID_ENV: &str = "HWPASS_MACHINE_ID_FILE";

const KDF_NAME: &str = "hkdf-sha256:machine-id";
const INFO_KEY: &[u8] = b"hwpass/software/key-wrap/v1";
const INFO_STATE: &[u8] = b"hwpass/software/state/v1";

type Key32 = Zeroizing<[u8; 32]>;

/// The encrypted device key as stored in `device.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftwareKeyFile {
    /// How the wrapping key is derived.
    pub kdf: String,
    /// HKDF salt, base64url.
    pub salt: String,
    /// AES-GCM nonce, base64url.
    pub nonce: String,
    /// AES-256-GCM ciphertext of the 32-byte private scalar, base64url.
    pub ct: String,
}

/// Why the software key could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SoftwareError {
    /// No machine secret.
    #[error("cannot read the machine identity {path}: {reason}")]
    MachineId {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Decryption failed: another machine, or a damaged file.
    #[error("the software key cannot be decrypted on this machine: the state directory belongs to another machine or is damaged")]
    Foreign,
    /// The stored key does not match the recorded public key, or fields are malformed.
    #[error("the software key file is damaged: {0}")]
    Damaged(&'static str),
    /// A key operation failed.
    #[error(transparent)]
    Key(#[from] SignError),
}

/// An opened software device key with its state-sealing key.
#[derive(Debug)]
pub struct SoftwareDevice {
    key: MemoryKey,
    state_key: Zeroizing<[u8; 32]>,
}

/// Reads the machine secret: the file `machine_id` if given (tests model "another machine"
/// with it), else the platform's machine identity through the `machine-uid` crate (Linux: the
/// systemd/D-Bus machine id; Windows: `MachineGuid`; macOS: the platform UUID).
fn machine_secret(machine_id: Option<&Path>) -> Result<Zeroizing<Vec<u8>>, SoftwareError> {
    let (source, id) = match machine_id {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| e.to_string()),
        ),
        None => (
            "this machine's identity".to_string(),
            machine_uid::get().map_err(|e| e.to_string()),
        ),
    };
    match id {
        Ok(s) if !s.trim().is_empty() => Ok(Zeroizing::new(s.trim().as_bytes().to_vec())),
        Ok(_) => Err(SoftwareError::MachineId {
            path: source,
            reason: "it is empty".into(),
        }),
        Err(reason) => Err(SoftwareError::MachineId {
            path: source,
            reason,
        }),
    }
}

fn derive(salt: &[u8], machine_id: Option<&Path>) -> Result<(Key32, Key32), SoftwareError> {
    let secret = machine_secret(machine_id)?;
    let hk = Hkdf::<Sha256>::new(Some(salt), &secret);
    let mut wrap = Zeroizing::new([0u8; 32]);
    let mut state = Zeroizing::new([0u8; 32]);
    // Invariant: 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
    hk.expand(INFO_KEY, &mut wrap[..])
        .map_err(|_| SoftwareError::Damaged("kdf"))?;
    hk.expand(INFO_STATE, &mut state[..])
        .map_err(|_| SoftwareError::Damaged("kdf"))?;
    Ok((wrap, state))
}

fn aad(jkt: &str) -> Vec<u8> {
    format!("hwpass-software-key-v1:{jkt}").into_bytes()
}

impl SoftwareDevice {
    /// Generates a new key and its encrypted file.
    pub fn create(machine_id: Option<&Path>) -> Result<(Self, SoftwareKeyFile), SoftwareError> {
        let key = MemoryKey::generate();
        let mut salt = [0u8; 32];
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut salt).map_err(|_| SignError::Rng)?;
        getrandom::getrandom(&mut nonce).map_err(|_| SignError::Rng)?;
        let (wrap, state_key) = derive(&salt, machine_id)?;
        let jkt = Jwk::new(*key.verifying_key()).thumbprint();
        let secret = key.secret_bytes();
        let ct = Aes256Gcm::new((&*wrap).into())
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &secret[..],
                    aad: &aad(&jkt),
                },
            )
            .map_err(|_| SoftwareError::Damaged("encryption failed"))?;
        let file = SoftwareKeyFile {
            kdf: KDF_NAME.into(),
            salt: b64url(&salt),
            nonce: b64url(&nonce),
            ct: b64url(&ct),
        };
        Ok((Self { key, state_key }, file))
    }

    /// Decrypts the key; `jwk` is the public key recorded at enrolment, which it must match.
    pub fn open(
        file: &SoftwareKeyFile,
        jwk: &Jwk,
        machine_id: Option<&Path>,
    ) -> Result<Self, SoftwareError> {
        if file.kdf != KDF_NAME {
            return Err(SoftwareError::Damaged("unknown key derivation"));
        }
        let field = |s: &str, what| b64url_decode(s).ok_or(SoftwareError::Damaged(what));
        let salt = field(&file.salt, "salt is not base64url")?;
        let nonce: [u8; 12] = field(&file.nonce, "nonce is not base64url")?
            .try_into()
            .map_err(|_| SoftwareError::Damaged("nonce is not 12 bytes"))?;
        let ct = field(&file.ct, "ciphertext is not base64url")?;
        let (wrap, state_key) = derive(&salt, machine_id)?;
        let secret = Zeroizing::new(
            Aes256Gcm::new((&*wrap).into())
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: &ct,
                        aad: &aad(&jwk.thumbprint()),
                    },
                )
                .map_err(|_| SoftwareError::Foreign)?,
        );
        let key = MemoryKey::from_bytes(&secret)?;
        if key.verifying_key() != jwk.verifying_key() {
            return Err(SoftwareError::Damaged(
                "private key does not match the enrolled public key",
            ));
        }
        Ok(Self { key, state_key })
    }

    /// The device key.
    pub fn key(&self) -> &dyn Signer {
        &self.key
    }
}

impl From<SoftwareError> for DesktopError {
    fn from(e: SoftwareError) -> Self {
        let kind = match e {
            SoftwareError::Foreign => FaultKind::Foreign,
            _ => FaultKind::KeyGone,
        };
        Self::Device(DeviceFault::new(kind, e))
    }
}

impl Device for SoftwareDevice {
    fn key(&self) -> &dyn Signer {
        SoftwareDevice::key(self)
    }
    fn seal(&self, plain: &[u8], jkt: &str) -> Result<Vec<u8>, DesktopError> {
        state::seal(plain, &self.state_key, jkt)
    }
    fn unseal(&self, sealed: &[u8], jkt: &str) -> Result<Zeroizing<Vec<u8>>, DesktopError> {
        state::open_sealed(sealed, &self.state_key, jkt)
    }
}

/// The software [`Backend`]: always available, the weaker binding.
#[derive(Debug)]
pub struct SoftwareBackend;

impl Backend for SoftwareBackend {
    fn name(&self) -> &'static str {
        "software"
    }

    fn kind(&self) -> BindingKind {
        BindingKind::Software
    }

    fn probe(&self, _: &DeviceOptions) -> Result<(), DesktopError> {
        Ok(())
    }

    fn create(&self, opts: &DeviceOptions) -> Result<Created, DesktopError> {
        let (device, file) = SoftwareDevice::create(opts.machine_id_file.as_deref())?;
        let record = serde_json::to_value(file).map_err(|e| DesktopError::Input(e.to_string()))?;
        Ok(Created {
            device: Box::new(device),
            record,
            warning: None,
        })
    }

    fn open(
        &self,
        record: &serde_json::Value,
        jwk: &Jwk,
        opts: &DeviceOptions,
    ) -> Result<Box<dyn Device>, DesktopError> {
        let file = SoftwareKeyFile::deserialize(record)
            .map_err(|_| SoftwareError::Damaged("the software key record is not valid"))?;
        Ok(Box::new(SoftwareDevice::open(
            &file,
            jwk,
            opts.machine_id_file.as_deref(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine_id(dir: &Path, name: &str, id: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, id).unwrap();
        p
    }

    #[test]
    fn key_opens_only_with_its_machine_and_seals_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let here = machine_id(dir.path(), "here", "0123456789abcdef0123456789abcdef\n");
        let there = machine_id(dir.path(), "there", "fedcba9876543210fedcba9876543210");
        let opts = DeviceOptions {
            tcti: None,
            machine_id_file: Some(here.clone()),
        };
        let Created { device, record, .. } = SoftwareBackend.create(&opts).unwrap();
        let jwk = Jwk::new(*device.key().verifying_key());
        let sealed = device.seal(b"state", "jkt").unwrap();

        let again = SoftwareBackend.open(&record, &jwk, &opts).unwrap();
        assert_eq!(&again.unseal(&sealed, "jkt").unwrap()[..], b"state");
        assert!(again.unseal(&sealed, "other").is_err());
        assert!(again.prove(&jwk).unwrap().is_none());

        let elsewhere = DeviceOptions {
            tcti: None,
            machine_id_file: Some(there),
        };
        let err = SoftwareBackend.open(&record, &jwk, &elsewhere).unwrap_err();
        assert!(
            matches!(
                err.device_cause::<SoftwareError>(),
                Some(SoftwareError::Foreign)
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 6);

        let other_key = Jwk::new(*MemoryKey::generate().verifying_key());
        assert!(SoftwareBackend.open(&record, &other_key, &opts).is_err());
        assert!(SoftwareBackend
            .open(&serde_json::json!({"kdf": 1}), &jwk, &opts)
            .is_err());
    }
}
