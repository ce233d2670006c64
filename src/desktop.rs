//! The desktop: enrolment, requests, installing and checking passes, all offline.
//!
//! State directory (0700):
//! - `device.json` (0600): the device's public key, its binding kind and the backend's key
//!   blobs (the software key encrypted; TPM blobs that only that TPM can load).
//! - `state.sealed` (0600): AES-256-GCM of the trust bundle, the installed pass and the time
//!   high-water mark, under a key the device backend keeps (sealed to the TPM, or derived for
//!   the software backend). The AAD names the device key, so one device's state cannot be
//!   passed off as another's.
//!
//! [`check`] is the library call an application makes; `hwpass check --json` prints the same
//! [`Verdict`].

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::attest::TpmClock;
use crate::fsutil::{create_private_dir, write_atomic};
use crate::keys::{prove_possession, KeyBackend, KeyError};
use crate::software::{SoftwareDevice, SoftwareError, SoftwareKeyFile};
use crate::token::{
    self, b64url, b64url_decode, Attestation, BindingKind, Jwk, Jwks, PassClaims, PassExpectations,
    RequestClaims, TokenError, TrustParams,
};
use crate::tpm::{self, TpmDevice, TpmError, TpmKeyFile};
use crate::util::{format_duration, format_time};

/// Device record file name.
pub const DEVICE_FILE: &str = "device.json";
/// Sealed state file name.
pub const STATE_FILE: &str = "state.sealed";
/// How far the wall clock may fall behind the recorded high-water mark before a check is
/// refused as a clock rollback, in seconds.
pub const ROLLBACK_TOLERANCE_SECS: i64 = 300;
/// Largest state file read, in bytes.
const MAX_STATE_FILE: u64 = 256 * 1024;

/// `hwpass check` exit codes (SPEC).
pub mod exit {
    /// The pass is valid.
    pub const VALID: i32 = 0;
    /// Other error.
    pub const OTHER: i32 = 1;
    /// No pass installed (or not enrolled).
    pub const NO_PASS: i32 = 3;
    /// Invalid pass: format, signature, issuer.
    pub const INVALID: i32 = 4;
    /// Expired or not yet valid.
    pub const EXPIRED: i32 = 5;
    /// Bound to another device, or the device key is unusable.
    pub const WRONG_DEVICE: i32 = 6;
    /// Clock rollback detected.
    pub const ROLLBACK: i32 = 7;
    /// Revoked.
    pub const REVOKED: i32 = 8;
}

/// What went wrong on the desktop. Each variant maps to one exit code and one next step.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// No `device.json`.
    #[error("this desktop is not enrolled (no {DEVICE_FILE} in {dir})")]
    NotEnrolled {
        /// The state directory.
        dir: PathBuf,
    },
    /// `enroll` over an existing enrolment.
    #[error("{dir} already holds an enrolment; enrolling again would discard its key and pass")]
    AlreadyEnrolled {
        /// The state directory.
        dir: PathBuf,
    },
    /// Enrolled, but no pass installed.
    #[error("no pass is installed")]
    NoPass,
    /// The pass (or trust bundle) failed verification.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The pass is for another device key.
    #[error("this pass is bound to another device (key {pass_jkt}, this device has {device_jkt})")]
    OtherDevice {
        /// `cnf.jkt` of the pass.
        pass_jkt: String,
        /// This device's key thumbprint.
        device_jkt: String,
    },
    /// The pass claims another binding kind than this device has.
    #[error("the pass says its key is held by {pass}, but this device's key is {device}")]
    BindingMismatch {
        /// `hwb.kind` of the pass.
        pass: &'static str,
        /// This device's kind.
        device: &'static str,
    },
    /// The issuer revoked the pass (or this device's key), per the installed deny list.
    #[error("pass {jti} has been revoked by the issuer (deny list #{seq})")]
    Revoked {
        /// The pass id.
        jti: String,
        /// The deny list that says so.
        seq: u64,
    },
    /// A deny list older than the one installed: refused, so revocations cannot be undone by
    /// replaying an old list.
    #[error(
        "this deny list is #{offered}, older than #{installed} already installed; it is refused"
    )]
    StaleDenyList {
        /// Its sequence number.
        offered: u64,
        /// The installed one's.
        installed: u64,
    },
    /// The deny list could not be fetched.
    #[error("{0}")]
    Fetch(String),
    /// The device key cannot be used (signing failed or proved the wrong key).
    #[error("the device key cannot be used: {0}")]
    KeyUnusable(String),
    /// The sealed state or key cannot be opened here: another machine, or damaged.
    #[error("{0}")]
    Foreign(String),
    /// The clock is behind what this desktop has already seen.
    #[error("the clock is at {}, behind {} already seen on this desktop: clock rollback", format_time(*now), format_time(*high_water))]
    Rollback {
        /// The wall time now.
        now: i64,
        /// The largest time seen.
        high_water: i64,
    },
    /// The wall clock advanced less than the TPM's own clock since the last check.
    #[error("the clock advanced {} since the last check, but the TPM has been running for {} since then: clock rollback", format_duration(*wall_elapsed), format_duration(*tpm_elapsed))]
    RollbackTpm {
        /// Wall-clock seconds since the last check.
        wall_elapsed: i64,
        /// TPM-clock seconds since the last check.
        tpm_elapsed: i64,
    },
    /// A state file is damaged (not foreign: unreadable structure).
    #[error("{path} is damaged: {detail}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The TPM cannot be used at all right now.
    #[error("{0}")]
    Tpm(String),
    /// Bad input from the person (not a token problem).
    #[error("{0}")]
    Input(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl DesktopError {
    /// The exit code (SPEC "hwpass check exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotEnrolled { .. } | Self::NoPass => exit::NO_PASS,
            Self::Token(TokenError::Expired { .. } | TokenError::NotYetValid { .. }) => {
                exit::EXPIRED
            }
            Self::Token(_) | Self::StaleDenyList { .. } => exit::INVALID,
            Self::Revoked { .. } => exit::REVOKED,
            Self::OtherDevice { .. }
            | Self::BindingMismatch { .. }
            | Self::KeyUnusable(_)
            | Self::Foreign(_)
            | Self::Damaged { .. } => exit::WRONG_DEVICE,
            Self::Rollback { .. } | Self::RollbackTpm { .. } => exit::ROLLBACK,
            Self::AlreadyEnrolled { .. }
            | Self::Tpm(_)
            | Self::Input(_)
            | Self::Io { .. }
            | Self::Fetch(_) => exit::OTHER,
        }
    }

    /// What the person should do next.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::NotEnrolled { .. } => "run `hwpass enroll --trust issuer.jwks`, then request a pass",
            Self::AlreadyEnrolled { .. } => "use the existing enrolment, or pass --force to replace it (its pass is lost)",
            Self::NoPass => "run `hwpass request --subject you@corp`, send the request to your admin and `hwpass install` the pass you get back",
            Self::Token(TokenError::Expired { .. }) => "request a new pass",
            Self::Token(TokenError::NotYetValid { .. }) => "check the computer's clock, or wait until the pass becomes valid",
            Self::Token(_) => "ask your admin for a new pass; this one was damaged, altered or is from an issuer this desktop does not trust",
            Self::OtherDevice { .. } | Self::BindingMismatch { .. } => "this pass belongs to another machine: request a pass from this one",
            Self::Revoked { .. } => "ask your admin why; if you should still have access, request a new pass",
            Self::StaleDenyList { .. } => "nothing to do: this desktop already has a newer list; get the current one (`hwpass refresh --server URL`)",
            Self::Fetch(_) => "check the server address and your network, or bring the list over by file (`hwpass-issuer denylist`, then `hwpass refresh --file`)",
            Self::KeyUnusable(_) => "enrol this desktop again (`hwpass enroll --force`) and request a new pass",
            Self::Foreign(_) => "this state belongs to another machine or was damaged: enrol again (`hwpass enroll --force`) and request a new pass",
            Self::Rollback { .. } | Self::RollbackTpm { .. } => {
                "set the computer's clock to the correct time and check again"
            }
            Self::Damaged { .. } => "restore the file from a backup, or enrol again (`hwpass enroll --force`)",
            Self::Tpm(_) => "check that the TPM is reachable (--tcti, HWPASS_TCTI) and try again",
            Self::Input(_) | Self::Io { .. } => "fix the problem above and try again",
        }
    }
}

impl From<TpmError> for DesktopError {
    fn from(e: TpmError) -> Self {
        match e {
            TpmError::Foreign | TpmError::Damaged(_) => Self::Foreign(e.to_string()),
            TpmError::KeyGone => Self::KeyUnusable(e.to_string()),
            TpmError::Unreachable { .. }
            | TpmError::Stopped { .. }
            | TpmError::Lockout { .. }
            | TpmError::NoSlots
            | TpmError::Device { .. } => Self::Tpm(e.to_string()),
        }
    }
}

impl From<KeyError> for DesktopError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Unavailable { message } => Self::Tpm(message),
            other => Self::KeyUnusable(other.to_string()),
        }
    }
}

impl From<SoftwareError> for DesktopError {
    fn from(e: SoftwareError) -> Self {
        match e {
            SoftwareError::Foreign => Self::Foreign(e.to_string()),
            SoftwareError::Key(k) => Self::KeyUnusable(k.to_string()),
            other => Self::KeyUnusable(other.to_string()),
        }
    }
}

/// Which key backend to enrol with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The TPM if one answers, else software with a notice.
    Auto,
    /// The TPM or fail.
    Tpm,
    /// Software only.
    Software,
}

/// How to reach the device's key.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// TCTI for the TPM backend; `None` falls back to the environment and the default.
    pub tcti: Option<String>,
    /// The machine identity file for the software backend; `None` is `/etc/machine-id`.
    pub machine_id_file: Option<PathBuf>,
}

/// A device key plus the key that seals the desktop state.
pub trait Device: std::fmt::Debug {
    /// The device signing key.
    fn key(&self) -> &dyn KeyBackend;
    /// The state-sealing key.
    fn state_key(&self) -> Result<Zeroizing<[u8; 32]>, DesktopError>;
    /// Proves, with a fresh challenge, that this device holds the enrolled key `jwk` right now.
    /// A TPM also returns its signed clock, for clock-rollback detection.
    fn prove(&self, jwk: &Jwk) -> Result<Option<TpmClock>, DesktopError> {
        if prove_possession(self.key(), jwk.verifying_key())? {
            Ok(None)
        } else {
            Err(DesktopError::KeyUnusable(
                "it signed the challenge with a different key than the one enrolled".into(),
            ))
        }
    }
    /// Attestation evidence for the key, where the backend can give any.
    fn evidence(&self, _qualifying_data: &[u8]) -> Result<Option<tpm::Evidence>, DesktopError> {
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

impl Device for TpmDevice {
    fn key(&self) -> &dyn KeyBackend {
        self
    }
    fn state_key(&self) -> Result<Zeroizing<[u8; 32]>, DesktopError> {
        Ok(TpmDevice::state_key(self)?)
    }
    fn evidence(&self, qualifying_data: &[u8]) -> Result<Option<tpm::Evidence>, DesktopError> {
        Ok(Some(TpmDevice::evidence(self, qualifying_data)?))
    }
    fn prove(&self, jwk: &Jwk) -> Result<Option<TpmClock>, DesktopError> {
        // TPM2_Certify of the key by itself over a fresh challenge: a signature by the key
        // (proof of possession) over a TPM-made structure that also carries the TPM clock.
        let mut challenge = [0u8; 32];
        getrandom::getrandom(&mut challenge)
            .map_err(|_| DesktopError::KeyUnusable(KeyError::Rng.to_string()))?;
        let (certify, signature) = self.certify_self(&challenge)?;
        crate::attest::verify_self_certify(&certify, &signature, jwk, &challenge)
            .map(Some)
            .map_err(|e| {
                DesktopError::KeyUnusable(format!(
                    "the TPM's proof does not verify against the enrolled key ({e})"
                ))
            })
    }
    fn activate(
        &self,
        id_object: &[u8],
        secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DesktopError> {
        TpmDevice::activate(self, id_object, secret).map_err(|e| match e {
            TpmError::Device { .. } | TpmError::Foreign => DesktopError::Foreign(
                "this delivery was sealed to another machine's TPM (or another enrolment); request a pass from this desktop".into(),
            ),
            other => other.into(),
        })
    }
}

impl Device for SoftwareDevice {
    fn key(&self) -> &dyn KeyBackend {
        SoftwareDevice::key(self)
    }
    fn state_key(&self) -> Result<Zeroizing<[u8; 32]>, DesktopError> {
        Ok(SoftwareDevice::state_key(self))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceRecord {
    v: u32,
    backend: BindingKind,
    jwk: serde_json::Value,
    created: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    software: Option<SoftwareKeyFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm: Option<TpmKeyFile>,
}

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
struct DesktopState {
    v: u32,
    trust: serde_json::Value,
    iss: String,
    aud: String,
    #[serde(default)]
    pass: Option<String>,
    /// The largest wall time seen by install or check (clock-rollback detection).
    high_water: i64,
    /// The TPM clock at the last successful install or check, and the wall time then.
    #[serde(default)]
    tpm_clock: Option<ClockMark>,
    /// Sequence number of the installed deny list (0: none yet).
    #[serde(default)]
    denylist_seq: u64,
    /// Revoked pass ids, from the deny list.
    #[serde(default)]
    revoked_passes: Vec<String>,
    /// Revoked device key thumbprints, from the deny list.
    #[serde(default)]
    revoked_devices: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockMark {
    tpm: TpmClock,
    wall: i64,
}

/// An opened enrolment.
#[derive(Debug)]
struct Enrolment {
    dir: PathBuf,
    record: DeviceRecord,
    jwk: Jwk,
    device: Box<dyn Device>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DesktopError + '_ {
    move |source| DesktopError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, DesktopError> {
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
/// `jkt`, returning the plaintext. Public for the fuzzer (`fuzz/`): this reads untrusted files.
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

/// Seals plaintext the way the desktop writes `state.sealed`. Public for the fuzzer.
pub fn seal(plain: &[u8], key: &[u8; 32], jkt: &str) -> Result<Vec<u8>, DesktopError> {
    let mut nonce = [0u8; 12];
    getrandom::getrandom(&mut nonce)
        .map_err(|_| DesktopError::KeyUnusable(KeyError::Rng.to_string()))?;
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

/// Checks that decrypted state content is a valid desktop state. Public for the fuzzer.
pub fn check_state_content(plain: &[u8]) -> Result<(), DesktopError> {
    parse_state(plain).map(|_| ())
}

fn parse_state(plain: &[u8]) -> Result<DesktopState, DesktopError> {
    serde_json::from_slice(plain).map_err(|e| DesktopError::Damaged {
        path: STATE_FILE.into(),
        detail: e.to_string(),
    })
}

impl Enrolment {
    fn open(dir: &Path, opts: &DeviceOptions) -> Result<Self, DesktopError> {
        let path = dir.join(DEVICE_FILE);
        if !path.exists() {
            return Err(DesktopError::NotEnrolled { dir: dir.into() });
        }
        let damaged = |detail: String| DesktopError::Damaged {
            path: path.clone(),
            detail,
        };
        let bytes = read_limited(&path)?;
        let record: DeviceRecord =
            serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        let jwk = Jwk::from_json(&record.jwk).map_err(|e| damaged(e.to_string()))?;
        let device: Box<dyn Device> = match record.backend {
            BindingKind::Software => {
                let file = record
                    .software
                    .as_ref()
                    .ok_or_else(|| damaged("software key missing".into()))?;
                Box::new(SoftwareDevice::open(
                    file,
                    &jwk,
                    opts.machine_id_file.as_deref(),
                )?)
            }
            BindingKind::Tpm => {
                let file = record
                    .tpm
                    .as_ref()
                    .ok_or_else(|| damaged("TPM key blobs missing".into()))?;
                let tcti = tpm::requested_tcti(opts.tcti.as_deref());
                Box::new(TpmDevice::open(file, tcti.as_deref())?)
            }
        };
        Ok(Self {
            dir: dir.into(),
            record,
            jwk,
            device,
        })
    }

    fn jkt(&self) -> String {
        self.jwk.thumbprint()
    }

    fn load_state(&self) -> Result<DesktopState, DesktopError> {
        let path = self.dir.join(STATE_FILE);
        if !path.exists() {
            return Err(DesktopError::Damaged {
                path,
                detail: "missing; the enrolment is incomplete".into(),
            });
        }
        let bytes = read_limited(&path)?;
        let key = self.device.state_key()?;
        let plain = open_sealed(&bytes, &key, &self.jkt()).map_err(|e| match e {
            DesktopError::Damaged { detail, .. } => DesktopError::Damaged { path: path.clone(), detail },
            DesktopError::Foreign(_) => DesktopError::Foreign(format!(
                "the sealed state {} cannot be opened with this device's key: it belongs to another machine or was altered",
                path.display()
            )),
            other => other,
        })?;
        parse_state(&plain).map_err(|_| DesktopError::Damaged {
            path,
            detail: "sealed content is not valid".into(),
        })
    }

    fn save_state(&self, state: &DesktopState) -> Result<(), DesktopError> {
        let path = self.dir.join(STATE_FILE);
        let plain = Zeroizing::new(
            serde_json::to_vec(state).map_err(|e| DesktopError::Input(e.to_string()))?,
        );
        let key = self.device.state_key()?;
        let bytes = seal(&plain, &key, &self.jkt())?;
        write_atomic(&path, &bytes).map_err(io_err(&path))
    }

    fn trust(&self, state: &DesktopState) -> Result<Jwks, DesktopError> {
        Ok(Jwks::from_json(&state.trust.to_string())?)
    }

    /// Verifies a pass for this device: signature and claims, binding, proof of possession.
    /// On success, advances the state's clock marks (the caller saves the state).
    fn verify(
        &self,
        state: &mut DesktopState,
        pass: &str,
        now: i64,
    ) -> Result<PassClaims, DesktopError> {
        if now < state.high_water - ROLLBACK_TOLERANCE_SECS {
            return Err(DesktopError::Rollback {
                now,
                high_water: state.high_water,
            });
        }
        let trust = self.trust(state)?;
        let expect = PassExpectations {
            trust: &trust,
            iss: &state.iss,
            aud: &state.aud,
        };
        let claims = token::verify_pass(pass, &expect, now)?;
        let device_jkt = self.jkt();
        if claims.cnf.jkt != device_jkt {
            return Err(DesktopError::OtherDevice {
                pass_jkt: claims.cnf.jkt,
                device_jkt,
            });
        }
        if claims.hwb.kind != self.record.backend {
            return Err(DesktopError::BindingMismatch {
                pass: claims.hwb.kind.as_str(),
                device: self.record.backend.as_str(),
            });
        }
        if state.revoked_passes.contains(&claims.jti) || state.revoked_devices.contains(&device_jkt)
        {
            return Err(DesktopError::Revoked {
                jti: claims.jti,
                seq: state.denylist_seq,
            });
        }
        // Proof of possession: the device signs a fresh challenge, checked against the key the
        // pass is bound to (whose thumbprint equals cnf.jkt, checked above).
        let tpm_clock = self.device.prove(&self.jwk)?;
        // The TPM's clock runs only while it is powered, so the wall clock must have advanced
        // at least as much since the last check (compared within one TPM reset epoch).
        if let (Some(mark), Some(clock)) = (state.tpm_clock, tpm_clock) {
            if mark.tpm.reset_count == clock.reset_count && clock.clock >= mark.tpm.clock {
                let tpm_elapsed = ((clock.clock - mark.tpm.clock) / 1000) as i64;
                let wall_elapsed = now - mark.wall;
                if wall_elapsed + ROLLBACK_TOLERANCE_SECS < tpm_elapsed {
                    return Err(DesktopError::RollbackTpm {
                        wall_elapsed,
                        tpm_elapsed,
                    });
                }
            }
        }
        state.high_water = state.high_water.max(now);
        if let Some(tpm) = tpm_clock {
            state.tpm_clock = Some(ClockMark { tpm, wall: now });
        }
        Ok(claims)
    }
}

/// What `enroll` did.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollReport {
    /// The binding kind chosen.
    pub kind: BindingKind,
    /// The device key thumbprint.
    pub jkt: String,
    /// Set when `auto` fell back to software: say so to the person.
    pub notice: Option<String>,
}

/// Enrols: creates the device key and the sealed state holding the trust bundle.
pub fn enroll(
    dir: &Path,
    trust_text: &str,
    choice: BackendChoice,
    force: bool,
    opts: &DeviceOptions,
    now: i64,
) -> Result<EnrollReport, DesktopError> {
    let trust = Jwks::from_json(trust_text)?;
    let params = trust.hwpass.clone().ok_or_else(|| {
        DesktopError::Input(
            "the trust bundle lacks the hwpass issuer parameters; export it with `hwpass-issuer jwks`".into(),
        )
    })?;
    if dir.join(DEVICE_FILE).exists() && !force {
        return Err(DesktopError::AlreadyEnrolled { dir: dir.into() });
    }
    create_private_dir(dir).map_err(io_err(dir))?;
    let tcti = tpm::resolve_tcti(opts.tcti.as_deref());
    let use_tpm = match choice {
        BackendChoice::Tpm => Ok(()),
        BackendChoice::Software => Err(None),
        BackendChoice::Auto => tpm::probe(&tcti).map_err(Some),
    };
    let (device, record_tail, notice): (Box<dyn Device>, _, _) = match use_tpm {
        Ok(()) => {
            let device = TpmDevice::create(&tcti)?;
            let file = device.file().clone();
            (Box::new(device), (BindingKind::Tpm, None, Some(file)), None)
        }
        Err(why) => {
            let (device, file) = SoftwareDevice::create(opts.machine_id_file.as_deref())?;
            let notice = why.map(|e| {
                format!("no TPM answered ({e}): using the weaker software key instead (see README, \"Threat model\")")
            });
            (
                Box::new(device),
                (BindingKind::Software, Some(file), None),
                notice,
            )
        }
    };
    let jwk = Jwk::new(*device.key().verifying_key());
    let (backend, software, tpm) = record_tail;
    let record = DeviceRecord {
        v: 1,
        backend,
        jwk: jwk.to_json(),
        created: now,
        software,
        tpm,
    };
    let enrolment = Enrolment {
        dir: dir.into(),
        record,
        jwk,
        device,
    };
    let state = DesktopState {
        v: 1,
        trust: trust.to_json(),
        iss: params.iss,
        aud: params.aud,
        pass: None,
        high_water: now,
        tpm_clock: None,
        denylist_seq: 0,
        revoked_passes: Vec::new(),
        revoked_devices: Vec::new(),
    };
    // The state first, then the record: an interrupted enrolment leaves no device.json, so it
    // reads as "not enrolled" rather than as an enrolment without state.
    enrolment.save_state(&state)?;
    let path = dir.join(DEVICE_FILE);
    let bytes = serde_json::to_vec_pretty(&enrolment.record)
        .map_err(|e| DesktopError::Input(e.to_string()))?;
    write_atomic(&path, &bytes).map_err(io_err(&path))?;
    Ok(EnrollReport {
        kind: enrolment.record.backend,
        jkt: enrolment.jkt(),
        notice,
    })
}

/// Makes a request: signed by the device key, carrying its public key.
pub fn request(
    dir: &Path,
    opts: &DeviceOptions,
    subject: &str,
    ttl: Option<i64>,
    dev: Option<String>,
    now: i64,
) -> Result<String, DesktopError> {
    if subject.trim().is_empty() || subject.len() > 256 {
        return Err(DesktopError::Input(
            "the subject must be 1 to 256 characters".into(),
        ));
    }
    let e = Enrolment::open(dir, opts)?;
    let att = e
        .device
        .evidence(&crate::attest::qualifying_data(&e.jkt()))?
        .map(|ev| crate::attest::EvidenceClaims {
            ekc: ev.ek_cert.as_deref().map(b64url),
            ekp: ev.ek_public.as_deref().map(b64url),
            ak: b64url(&ev.ak_public),
            // Left out when the issuer can rebuild it from the request's key (hwpass's template).
            key: (ev.key_public != crate::attest::device_key_public(&e.jwk))
                .then(|| b64url(&ev.key_public)),
            cert: b64url(&ev.certify),
            sig: b64url(&ev.signature),
        });
    let claims = RequestClaims {
        sub: subject.into(),
        iat: now,
        kind: e.record.backend,
        ttl,
        dev,
        att,
    };
    Ok(token::sign_request(&claims, e.device.key())?)
}

/// Verifies a pass against the trust bundle and this device, then stores it sealed.
pub fn install(
    dir: &Path,
    opts: &DeviceOptions,
    pass: &str,
    now: i64,
) -> Result<Verdict, DesktopError> {
    let e = Enrolment::open(dir, opts)?;
    let mut state = e.load_state()?;
    // A pass delivered sealed to this TPM: ActivateCredential releases the key that opens it.
    let opened;
    let pass = match crate::attest::Delivery::parse(pass) {
        Some(delivery) => {
            let delivery = delivery.map_err(|err| DesktopError::Input(err.to_string()))?;
            let credential = e
                .device
                .activate(&delivery.id_object, &delivery.encrypted_secret)?;
            opened = delivery
                .open(&credential)
                .map_err(|err| DesktopError::Foreign(err.to_string()))?;
            opened.as_str()
        }
        None => pass,
    };
    let claims = e.verify(&mut state, pass, now)?;
    state.pass = Some(pass.into());
    e.save_state(&state)?;
    Ok(Verdict::valid(&claims, now))
}

/// What `refresh` did.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshReport {
    /// The deny list's sequence number.
    pub seq: u64,
    /// The one installed before.
    pub previous_seq: u64,
    /// Whether anything changed (false: this list was installed already).
    pub updated: bool,
    /// Trusted issuer key ids now.
    pub trusted_keys: Vec<String>,
    /// Revoked passes listed.
    pub revoked_passes: usize,
    /// Revoked device keys listed.
    pub revoked_devices: usize,
    /// Whether the installed pass is now revoked.
    pub installed_pass_revoked: bool,
}

/// Installs a signed deny list: verified against the issuer keys trusted now, for this
/// desktop's issuer and audience, and only if its sequence number is higher than the installed
/// one (the same number is "already up to date"; a lower one is refused). Replaces the trusted
/// keys with the list's (key rotation) and the revocations with its.
pub fn refresh(
    dir: &Path,
    opts: &DeviceOptions,
    text: &str,
    now: i64,
) -> Result<RefreshReport, DesktopError> {
    let e = Enrolment::open(dir, opts)?;
    let mut state = e.load_state()?;
    let trust = e.trust(&state)?;
    let params = TrustParams {
        iss: state.iss.clone(),
        aud: state.aud.clone(),
    };
    let list = crate::denylist::verify(text, &trust, &params, now)?;
    let previous_seq = state.denylist_seq;
    if list.seq < previous_seq {
        return Err(DesktopError::StaleDenyList {
            offered: list.seq,
            installed: previous_seq,
        });
    }
    let updated = list.seq > previous_seq;
    let trust = if updated { list.trust()? } else { trust };
    if updated {
        state.trust = trust.to_json();
        state.denylist_seq = list.seq;
        state.revoked_passes = list.passes.iter().map(|p| p.jti.clone()).collect();
        state.revoked_devices = list.devices.clone();
        e.save_state(&state)?;
    }
    let installed_jti = state
        .pass
        .as_deref()
        .and_then(|p| token::decode(p).ok())
        .and_then(|d| d.payload().ok())
        .and_then(|v| v.get("jti").and_then(|j| j.as_str()).map(String::from));
    let installed_pass_revoked = state.revoked_devices.contains(&e.jkt())
        || installed_jti.is_some_and(|j| state.revoked_passes.contains(&j));
    Ok(RefreshReport {
        seq: list.seq,
        previous_seq,
        updated,
        trusted_keys: trust.keys.into_iter().map(|(k, _)| k).collect(),
        revoked_passes: state.revoked_passes.len(),
        revoked_devices: state.revoked_devices.len(),
        installed_pass_revoked,
    })
}

/// Checks the installed pass offline, with a fresh proof of possession. Never panics; every
/// failure is a verdict with its exit code.
pub fn check(dir: &Path, opts: &DeviceOptions, now: i64) -> Verdict {
    match check_inner(dir, opts, now) {
        Ok(v) => v,
        Err(e) => Verdict::from_error(&e),
    }
}

fn check_inner(dir: &Path, opts: &DeviceOptions, now: i64) -> Result<Verdict, DesktopError> {
    let e = Enrolment::open(dir, opts)?;
    let mut state = e.load_state()?;
    let pass = state.pass.clone().ok_or(DesktopError::NoPass)?;
    let claims = e.verify(&mut state, &pass, now)?;
    e.save_state(&state)?;
    Ok(Verdict::valid(&claims, now))
}

/// The outcome of a check, as `hwpass check --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `valid`, `no-pass`, `invalid`, `expired`, `wrong-device`, `rollback`, `revoked`, `error`.
    pub status: &'static str,
    /// The process exit code for this verdict.
    pub exit_code: i32,
    /// One sentence.
    pub message: String,
    /// What to do next, when not valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
    /// Pass subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Pass issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Expiry, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Expiry, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Seconds left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_seconds: Option<i64>,
    /// Binding kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<BindingKind>,
    /// How the binding was vouched for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation: Option<Attestation>,
    /// Pass id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl Verdict {
    fn valid(c: &PassClaims, now: i64) -> Self {
        let remaining = c.exp - now;
        Self {
            status: "valid",
            exit_code: exit::VALID,
            message: format!(
                "pass for {} is valid until {} ({} left)",
                c.sub,
                format_time(c.exp),
                format_duration(remaining.max(0))
            ),
            hint: None,
            subject: Some(c.sub.clone()),
            issuer: Some(c.iss.clone()),
            expires_at: Some(c.exp),
            expires: Some(format_time(c.exp)),
            remaining_seconds: Some(remaining),
            binding: Some(c.hwb.kind),
            attestation: Some(c.hwb.att),
            jti: Some(c.jti.clone()),
        }
    }

    /// The verdict for an error.
    pub fn from_error(e: &DesktopError) -> Self {
        let exit_code = e.exit_code();
        let status = match exit_code {
            exit::NO_PASS => "no-pass",
            exit::INVALID => "invalid",
            exit::EXPIRED => "expired",
            exit::WRONG_DEVICE => "wrong-device",
            exit::ROLLBACK => "rollback",
            exit::REVOKED => "revoked",
            _ => "error",
        };
        Self {
            status,
            exit_code,
            message: e.to_string(),
            hint: Some(e.hint()),
            subject: None,
            issuer: None,
            expires_at: None,
            expires: None,
            remaining_seconds: None,
            binding: None,
            attestation: None,
            jti: None,
        }
    }

    /// Whether the pass is valid.
    pub fn is_valid(&self) -> bool {
        self.exit_code == exit::VALID
    }
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The state directory.
    pub state_dir: PathBuf,
    /// Binding kind.
    pub binding: BindingKind,
    /// Device key thumbprint.
    pub device_key: String,
    /// Enrolment time, Unix seconds.
    pub enrolled_at: i64,
    /// Expected issuer.
    pub issuer: String,
    /// Expected audience.
    pub audience: String,
    /// Trusted issuer key ids.
    pub trusted_keys: Vec<String>,
    /// Sequence number of the installed deny list (0: none).
    pub denylist_seq: u64,
    /// The installed pass, decoded without a proof of possession (run `check` for that).
    pub pass: Option<PassSummary>,
}

/// The installed pass as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PassSummary {
    /// Subject.
    pub subject: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// Expiry, RFC 3339.
    pub expires: String,
    /// Pass id.
    pub jti: String,
    /// The pass itself (bound to this device, so useless elsewhere).
    pub token: String,
}

/// Shows the enrolment and the installed pass.
pub fn status(dir: &Path, opts: &DeviceOptions) -> Result<StatusReport, DesktopError> {
    let e = Enrolment::open(dir, opts)?;
    let state = e.load_state()?;
    let trust = e.trust(&state)?;
    let pass = match &state.pass {
        Some(p) => {
            let d = token::decode(p)?;
            let c: PassClaims =
                serde_json::from_value(d.payload()?).map_err(|err| TokenError::Json {
                    part: "claims",
                    detail: err.to_string(),
                })?;
            Some(PassSummary {
                subject: c.sub,
                expires_at: c.exp,
                expires: format_time(c.exp),
                jti: c.jti,
                token: p.clone(),
            })
        }
        None => None,
    };
    Ok(StatusReport {
        state_dir: dir.into(),
        binding: e.record.backend,
        device_key: e.jkt(),
        enrolled_at: e.record.created,
        issuer: state.iss,
        audience: state.aud,
        trusted_keys: trust.keys.iter().map(|(k, _)| k.clone()).collect(),
        denylist_seq: state.denylist_seq,
        pass,
    })
}
