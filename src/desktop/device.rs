//! The device seam: where the desktop's key lives. A [`Backend`] creates, opens and probes
//! devices of one family and is registered in [`BACKENDS`], the one list of families (strongest
//! first); a [`Device`] is an opened one: its key, its proof of possession, the sealing of the
//! desktop state, and what a TPM can add (attestation evidence, credential activation).
//!
//! Adding a backend (Windows CNG, a macOS Secure Enclave, a YubiKey) is one new file beside
//! [`software`] implementing both traits, plus one line in [`BACKENDS`] — see the developer
//! docs, "Adding a device backend".

pub(crate) mod software;
#[cfg(feature = "tpm")]
pub(crate) mod tpm;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::DesktopError;
use crate::core::claims::BindingKind;
use crate::core::jwk::Jwk;
use crate::core::jws::verify_es256;
use crate::core::signer::{SignError, Signer};
use crate::core::tpm_wire::TpmClock;

/// Every device backend this build knows, strongest first: `--backend auto` takes the first
/// whose [`Backend::probe`] succeeds.
pub const BACKENDS: &[&dyn Backend] = &[
    #[cfg(feature = "tpm")]
    &tpm::TpmBackend,
    &software::SoftwareBackend,
];

/// The names `--backend` accepts besides `auto`.
pub fn backend_names() -> Vec<&'static str> {
    BACKENDS.iter().map(|b| b.name()).collect()
}

/// The backend registered under `name`.
pub(crate) fn backend(name: &str) -> Result<&'static dyn Backend, DesktopError> {
    BACKENDS
        .iter()
        .copied()
        .find(|b| b.name() == name)
        .ok_or_else(|| DesktopError::UnknownBackend { name: name.into() })
}

/// How to reach the device's key.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// TCTI for the TPM backend; `None` falls back to the environment and the default.
    pub tcti: Option<String>,
    /// The machine identity file for the software backend; `None` is `/etc/machine-id`.
    pub machine_id_file: Option<PathBuf>,
}

/// Which backend to enrol with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// The strongest backend that answers; falling back is announced.
    Auto,
    /// This backend (a name from [`backend_names`]) or fail.
    Named(String),
}

/// One family of devices that can hold a desktop's key.
pub trait Backend: Sync {
    /// Its name in `device.json` and on the command line (`tpm`, `software`).
    fn name(&self) -> &'static str;
    /// How a pass describes keys held this way (`hwb.kind`).
    fn kind(&self) -> BindingKind;
    /// Whether a device of this family can be used here now (one cheap round trip).
    fn probe(&self, opts: &DeviceOptions) -> Result<(), DesktopError>;
    /// Whether the person named this family's device explicitly (a TCTI on the command line or
    /// in the environment): then `--backend auto` must not fall back to another family.
    fn explicitly_requested(&self, _opts: &DeviceOptions) -> bool {
        false
    }
    /// Creates a device key (and whatever seals the state).
    fn create(&self, opts: &DeviceOptions) -> Result<Created, DesktopError>;
    /// Frees what an enrolment being replaced (`enroll --force`) holds in the device, if
    /// anything; best effort.
    fn retire(&self, _record: &serde_json::Value, _opts: &DeviceOptions) {}
    /// Opens the device an enrolment recorded; `jwk` is the public key recorded with it.
    fn open(
        &self,
        record: &serde_json::Value,
        jwk: &Jwk,
        opts: &DeviceOptions,
    ) -> Result<Box<dyn Device>, DesktopError>;
}

/// What [`Backend::create`] made.
#[derive(Debug)]
pub struct Created {
    /// The device.
    pub device: Box<dyn Device>,
    /// The record to store in `device.json` under the backend's name.
    pub record: serde_json::Value,
    /// Something the person must know about this enrolment (a weaker guarantee than usual).
    pub warning: Option<String>,
}

/// An opened device: the key, and the sealing of the desktop state.
pub trait Device: std::fmt::Debug {
    /// The device signing key.
    fn key(&self) -> &dyn Signer;
    /// Encrypts the desktop state so that only this device opens it; `jkt` (the device key's
    /// thumbprint) is bound in as associated data.
    fn seal(&self, plain: &[u8], jkt: &str) -> Result<Vec<u8>, DesktopError>;
    /// Opens what [`Self::seal`] wrote.
    fn unseal(&self, sealed: &[u8], jkt: &str) -> Result<Zeroizing<Vec<u8>>, DesktopError>;
    /// The device's monotonic counter, if it has one (a TPM NV counter): the sealed state
    /// records the value it was written for, so an older copy of the state is recognised.
    fn counter(&self) -> Result<Option<u64>, DesktopError> {
        Ok(None)
    }
    /// Advances the counter by one (one write to the device) and returns the new value.
    fn advance(&self) -> Result<u64, DesktopError> {
        Err(DesktopError::Input(
            "this device has no monotonic counter".into(),
        ))
    }
    /// Proves, with a fresh challenge, that this device holds the enrolled key `jwk` right now.
    /// A TPM also returns its signed clock, for clock-rollback detection.
    fn prove(&self, jwk: &Jwk) -> Result<Option<TpmClock>, DesktopError> {
        if prove_possession(self.key(), jwk)? {
            Ok(None)
        } else {
            Err(DesktopError::KeyUnusable(
                "it signed the challenge with a different key than the one enrolled".into(),
            ))
        }
    }
    /// Attestation evidence for the key, where the backend can give any.
    fn evidence(&self, _qualifying_data: &[u8]) -> Result<Option<Evidence>, DesktopError> {
        Ok(None)
    }
    /// Releases a credential the issuer sealed to this device's TPM.
    fn activate(
        &self,
        _id_object: &[u8],
        _secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DesktopError> {
        Err(DesktopError::Foreign(
            "this pass was delivered sealed to a TPM, and this desktop's key is not in one".into(),
        ))
    }
}

/// Attestation evidence for the device key (TPM wire formats, unparsed).
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The EK certificate (DER), when the TPM has one: RSA 2048, else ECC P-256, else P-384.
    pub ek_cert: Option<Vec<u8>>,
    /// The EK TPMT_PUBLIC, when there is no certificate.
    pub ek_public: Option<Vec<u8>>,
    /// The AK TPMT_PUBLIC.
    pub ak_public: Vec<u8>,
    /// The device key TPMT_PUBLIC.
    pub key_public: Vec<u8>,
    /// TPMS_ATTEST of TPM2_Certify(device key) by the AK.
    pub certify: Vec<u8>,
    /// The AK's ECDSA signature over it, r‖s.
    pub signature: [u8; 64],
}

/// Signs a fresh random challenge with `key` and verifies it against `expected`: proof that
/// the caller can use the private half of `expected` right now.
pub fn prove_possession(key: &dyn Signer, expected: &Jwk) -> Result<bool, SignError> {
    let mut challenge = [0u8; 48];
    challenge[..16].copy_from_slice(b"hwpass-pop-v1\0\0\0");
    getrandom::getrandom(&mut challenge[16..]).map_err(|_| SignError::Rng)?;
    let sig = key.try_sign(&challenge)?;
    Ok(verify_es256(expected.verifying_key(), &challenge, &sig.to_bytes()).is_ok())
}

/// `device.json`: the device's public key, its backend, and that backend's record under the
/// backend's name (one tagged record; the layout hwpass has always written).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeviceRecord {
    pub(crate) v: u32,
    pub(crate) backend: String,
    pub(crate) jwk: serde_json::Value,
    pub(crate) created: i64,
    #[serde(flatten)]
    records: serde_json::Map<String, serde_json::Value>,
}

impl DeviceRecord {
    pub(crate) fn new(backend: &str, jwk: &Jwk, created: i64, record: serde_json::Value) -> Self {
        let mut records = serde_json::Map::new();
        records.insert(backend.into(), record);
        Self {
            v: 1,
            backend: backend.into(),
            jwk: jwk.to_json(),
            created,
            records,
        }
    }

    /// The backend's record: exactly one member besides the common ones, named after it.
    pub(crate) fn record(&self) -> Result<&serde_json::Value, String> {
        match self.records.get(&self.backend) {
            Some(r) if self.records.len() == 1 => Ok(r),
            Some(_) => Err("it holds more than one backend record".into()),
            None => Err(format!("the {} record is missing", self.backend)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::signer::MemoryKey;

    #[test]
    fn possession_is_proved_only_by_the_key_itself() {
        let key = MemoryKey::generate();
        let jwk = Jwk::new(*key.verifying_key());
        assert!(prove_possession(&key, &jwk).unwrap());
        let other = MemoryKey::generate();
        assert!(!prove_possession(&other, &jwk).unwrap());
    }

    #[test]
    fn device_record_keeps_the_layout_and_holds_one_backend_record() {
        let key = MemoryKey::generate();
        let jwk = Jwk::new(*key.verifying_key());
        let rec = DeviceRecord::new("software", &jwk, 7, serde_json::json!({"kdf": "x"}));
        let text = serde_json::to_string(&rec).unwrap();
        assert!(
            text.starts_with(r#"{"v":1,"backend":"software","jwk":"#)
                && text.ends_with(r#","created":7,"software":{"kdf":"x"}}"#),
            "{text}"
        );
        let back: DeviceRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.record().unwrap()["kdf"], "x");
        let two: DeviceRecord =
            serde_json::from_str(&text.replace(r#""software":"#, r#""tpm":{},"software":"#))
                .unwrap();
        assert!(two.record().is_err());
        let renamed: DeviceRecord =
            serde_json::from_str(&text.replace(r#""backend":"software""#, r#""backend":"tpm""#))
                .unwrap();
        assert!(renamed.record().is_err());
    }

    #[test]
    fn every_backend_is_registered_once() {
        let names = backend_names();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique);
        assert!(names.contains(&"software"));
        assert!(backend("no-such").is_err());
    }
}
