//! What can go wrong on the desktop, as typed facts, and the exit code each maps to. What the
//! person should do about each is the front end's business (`hwpass`'s `error.rs`).

use std::path::PathBuf;

use crate::core::error::TokenError;
use crate::core::signer::SignError;
use crate::core::time::{format_duration, format_time};
use std::error::Error as StdError;

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
    #[error("this desktop is not enrolled (no {})", record.display())]
    NotEnrolled {
        /// The device record that is missing.
        record: PathBuf,
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
    /// Signing with the device key failed outside the device (no randomness, a malformed
    /// answer).
    #[error("the device key cannot be used: {0}")]
    Sign(SignError),
    /// The device (a TPM, the software key) failed; its typed error is inside.
    #[error(transparent)]
    Device(#[from] DeviceFault),
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
            | Self::Sign(_)
            | Self::UnknownBackend { .. }
            | Self::Damaged { .. } => exit::WRONG_DEVICE,
            Self::Device(f) if f.kind == FaultKind::Unavailable => exit::OTHER,
            Self::Device(_) => exit::WRONG_DEVICE,
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
            Self::Foreign(_) => Reason::Foreign,
            Self::Device(f) => match f.kind {
                FaultKind::Foreign => Reason::Foreign,
                FaultKind::KeyGone => Reason::KeyUnusable,
                FaultKind::Unavailable => Reason::DeviceUnavailable,
            },
            Self::Sign(_) => Reason::KeyUnusable,
            Self::Rollback { .. } | Self::RollbackTpm { .. } => Reason::Rollback,
            Self::Damaged { .. } => Reason::Damaged,
            Self::Input(_) | Self::Io { .. } => Reason::Input,
        }
    }

    /// The device's own error of type `E` (e.g. the TPM's, with its response code), if that
    /// is what failed.
    pub fn device_cause<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            Self::Device(f) => f.cause(),
            _ => None,
        }
    }
}

/// How a device failure bears on the person: what a backend says when it reports one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// The device cannot be used right now (not reachable, stopped, locked out, busy): trying
    /// again later may work (exit 1).
    Unavailable,
    /// The device refuses this desktop's key or state: it belongs to another machine or is
    /// damaged (exit 6).
    Foreign,
    /// The device no longer holds what the enrolment needs (cleared, re-provisioned) (exit 6).
    KeyGone,
}

/// A device backend's failure: how it bears on the person, and the backend's own typed error
/// (the TPM's, with its response code), reachable through [`DeviceFault::cause`].
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct DeviceFault {
    /// How it bears on the person.
    pub kind: FaultKind,
    source: Box<dyn StdError + Send + Sync>,
}

impl DeviceFault {
    /// A failure of `kind`, caused by the backend's error `source`.
    pub fn new(kind: FaultKind, source: impl StdError + Send + Sync + 'static) -> Self {
        Self {
            kind,
            source: Box::new(source),
        }
    }

    /// The backend's error, if it is of type `E`.
    pub fn cause<E: StdError + 'static>(&self) -> Option<&E> {
        self.source.downcast_ref::<E>()
    }
}

impl From<SignError> for DesktopError {
    /// A device's signing failure arrives as a [`DeviceFault`] inside the [`SignError`]; it is
    /// taken out again so its kind decides the exit code.
    fn from(e: SignError) -> Self {
        match e {
            SignError::Device(inner) => match inner.downcast::<DeviceFault>() {
                Ok(fault) => Self::Device(*fault),
                Err(other) => Self::Sign(SignError::Device(other)),
            },
            other => Self::Sign(other),
        }
    }
}
