//! What can go wrong on the desktop, as typed facts, and the exit code each maps to. What the
//! person should do about each is the front end's business (`hwpass`'s `error.rs`).

use std::path::PathBuf;

use super::device::software::SoftwareError;
#[cfg(feature = "tpm")]
use super::device::tpm::TpmError;
use super::state::DEVICE_FILE;
use crate::core::jws::TokenError;
use crate::core::signer::SignError;
use crate::core::time::{format_duration, format_time};

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

/// What kind of trouble a [`DesktopError`] is: the key a front end chooses its advice by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// No enrolment in the state directory.
    NotEnrolled,
    /// An enrolment is already there.
    AlreadyEnrolled,
    /// Enrolled, no pass installed.
    NoPass,
    /// The pass expired.
    Expired,
    /// The pass is not valid yet.
    NotYetValid,
    /// The pass (or trust bundle, or list) failed verification.
    Invalid,
    /// The pass belongs to another device.
    OtherDevice,
    /// The pass or device was revoked.
    Revoked,
    /// An older deny list was offered.
    StaleDenyList,
    /// The deny list could not be fetched.
    Fetch,
    /// The device key cannot be used here.
    KeyUnusable,
    /// The state belongs to another machine or was altered.
    Foreign,
    /// The clock is behind what this desktop has seen.
    Rollback,
    /// A state file is damaged.
    Damaged,
    /// The device (TPM) cannot be used right now.
    DeviceUnavailable,
    /// Bad input or a file problem.
    Input,
}

/// What went wrong on the desktop. Each variant maps to one exit code and one next step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The device key cannot be used (it proved a different key, or a signature failed).
    #[error("the device key cannot be used: {0}")]
    KeyUnusable(String),
    /// Signing with the device key failed; the backend's typed error is inside.
    #[error("the device key cannot be used: {0}")]
    Sign(SignError),
    /// The software key cannot be opened.
    #[error(transparent)]
    Software(#[from] SoftwareError),
    /// The TPM failed; its typed error keeps the response code.
    #[cfg(feature = "tpm")]
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The enrolment names a device backend this build does not include.
    #[error("this desktop was enrolled with the {name:?} device backend, which this build of hwpass does not include")]
    UnknownBackend {
        /// The backend's name in `device.json`.
        name: String,
    },
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
            | Self::Software(_)
            | Self::UnknownBackend { .. }
            | Self::Damaged { .. } => exit::WRONG_DEVICE,
            #[cfg(feature = "tpm")]
            Self::Tpm(e) => tpm_exit(e),
            Self::Sign(e) => sign_exit(e),
            Self::Rollback { .. } | Self::RollbackTpm { .. } => exit::ROLLBACK,
            Self::AlreadyEnrolled { .. } | Self::Input(_) | Self::Io { .. } | Self::Fetch(_) => {
                exit::OTHER
            }
        }
    }

    /// What kind of trouble this is, for a front end choosing its advice.
    pub fn reason(&self) -> Reason {
        match self {
            Self::NotEnrolled { .. } => Reason::NotEnrolled,
            Self::AlreadyEnrolled { .. } => Reason::AlreadyEnrolled,
            Self::NoPass => Reason::NoPass,
            Self::Token(TokenError::Expired { .. }) => Reason::Expired,
            Self::Token(TokenError::NotYetValid { .. }) => Reason::NotYetValid,
            Self::Token(_) => Reason::Invalid,
            Self::OtherDevice { .. } | Self::BindingMismatch { .. } => Reason::OtherDevice,
            Self::Revoked { .. } => Reason::Revoked,
            Self::StaleDenyList { .. } => Reason::StaleDenyList,
            Self::Fetch(_) => Reason::Fetch,
            Self::KeyUnusable(_) | Self::UnknownBackend { .. } => Reason::KeyUnusable,
            Self::Software(SoftwareError::Foreign) | Self::Foreign(_) => Reason::Foreign,
            Self::Software(_) => Reason::KeyUnusable,
            Self::Rollback { .. } | Self::RollbackTpm { .. } => Reason::Rollback,
            Self::Damaged { .. } => Reason::Damaged,
            #[cfg(feature = "tpm")]
            Self::Tpm(e) => tpm_reason(e),
            Self::Sign(e) => {
                #[cfg(feature = "tpm")]
                if let Some(t) = e.device_error::<TpmError>() {
                    return tpm_reason(t);
                }
                let _ = e;
                Reason::KeyUnusable
            }
            Self::Input(_) | Self::Io { .. } => Reason::Input,
        }
    }

    /// The TPM error inside, wherever it sits.
    #[cfg(feature = "tpm")]
    pub fn tpm(&self) -> Option<&TpmError> {
        match self {
            Self::Tpm(e) => Some(e),
            Self::Sign(s) => s.device_error::<TpmError>(),
            _ => None,
        }
    }
}

/// A TPM that refuses this desktop's key or state (another machine, cleared, damaged) is exit 6;
/// one that cannot be used right now (unreachable, stopped, lockout, no slots) is exit 1.
#[cfg(feature = "tpm")]
fn tpm_exit(e: &TpmError) -> i32 {
    if e.is_unusable_here() {
        exit::WRONG_DEVICE
    } else {
        exit::OTHER
    }
}

#[cfg(feature = "tpm")]
fn tpm_reason(e: &TpmError) -> Reason {
    match e {
        TpmError::Foreign | TpmError::Damaged(_) => Reason::Foreign,
        TpmError::KeyGone => Reason::KeyUnusable,
        _ => Reason::DeviceUnavailable,
    }
}

fn sign_exit(e: &SignError) -> i32 {
    #[cfg(feature = "tpm")]
    if let Some(t) = e.device_error::<TpmError>() {
        return tpm_exit(t);
    }
    let _ = e;
    exit::WRONG_DEVICE
}

impl From<SignError> for DesktopError {
    fn from(e: SignError) -> Self {
        Self::Sign(e)
    }
}
