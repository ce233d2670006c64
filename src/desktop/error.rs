//! What can go wrong on the desktop, as typed facts, and the exit code each maps to. What the
//! person should do about each is the front end's business (`hwpass`'s `error.rs`).

use std::path::PathBuf;

use crate::core::error::TokenError;
use crate::core::signer::SignError;
use crate::core::time::{format_duration, format_time};
use std::error::Error as StdError;

use crate::core::delivery::DeliveryError;
use crate::core::paste::DocKind;

/// The sealed state's file name, as messages name it.
const STATE_FILE_NAME: &str = "state.sealed";

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
    /// No device node.
    DeviceMissing,
    /// The device may not be used by this account.
    DevicePermission,
    /// The simulator or remote device is not listening.
    DeviceNotListening,
    /// The device is in dictionary-attack lockout.
    DeviceLockout,
    /// The device is in failure mode.
    DeviceFailure,
    /// A token damaged on its way (cut, re-encoded): not altered on purpose.
    Transit,
    /// A document of another kind was given (the kind given).
    WrongDocument(DocKind),
    /// An older copy of the sealed state was put back.
    StateRolledBack,
    /// Bad input or a file problem.
    Input,
    /// `request --server`: what the issuing service or the sign-in provider said (the kind).
    Online(OnlineReason),
}

/// What kind of trouble an [`OnlineError`] is (`hwpass request --server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnlineReason {
    /// A plain `http://` address that is not on this machine.
    InsecureUrl,
    /// The service could not be reached or did not answer as an issuing service does.
    Service,
    /// The service offers no self-service sign-in.
    NoSelfService,
    /// The sign-in provider could not be reached.
    IdpUnavailable,
    /// The sign-in provider cannot do device sign-in as configured.
    IdpConfig,
    /// Sign-in was turned down at the provider.
    Denied,
    /// The sign-in code expired.
    Expired,
    /// The service refused the ID token.
    TokenRefused,
    /// The person is in no group that may get passes.
    NoGroup,
    /// The person's passes per day are used up.
    RateLimited,
    /// `--subject` names someone else than the person who signed in.
    WrongSubject,
    /// The service refused the request (policy, attestation, the request itself).
    Refused,
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
    #[error("this computer's clock says {}, but this desktop already saw {} ({} later): either the clock was ahead then, or it has been turned back now; passes can be checked again after {}", format_time(*now), format_time(*high_water), format_duration(high_water.saturating_sub(*now)), format_time(*high_water))]
    Rollback {
        /// The wall time now.
        now: i64,
        /// The latest time recorded.
        high_water: i64,
    },
    /// The wall clock is behind what the TPM's own clock proves has passed.
    #[error("the TPM has been running for {} since {}, so it is at least {} now, but this computer's clock says {}: the clock has been turned back", format_duration(*tpm_elapsed), format_time(*since), format_time(since.saturating_add(*tpm_elapsed)), format_time(*now))]
    RollbackTpm {
        /// The wall time now.
        now: i64,
        /// The wall time recorded with the TPM clock.
        since: i64,
        /// TPM-clock seconds since then.
        tpm_elapsed: i64,
    },
    /// The sealed state is older than the device's counter: an earlier copy was put back.
    #[error("the sealed state is version {state}, but this TPM has counted to {device}: an older copy of {STATE_FILE_NAME} was put back")]
    StateRolledBack {
        /// The version the state file says.
        state: u64,
        /// The device's counter.
        device: u64,
    },
    /// A document of another kind where this one was expected.
    #[error("this is {}, not {}", found.describe(), expected.describe())]
    WrongDocument {
        /// What was given.
        found: DocKind,
        /// What was expected here.
        expected: DocKind,
    },
    /// A pass sealed to a TPM arrived damaged (cut or altered on its way).
    #[error("the sealed pass was damaged on its way here: {0}")]
    DeliveryDamaged(DeliveryError),
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
    /// `request --server` failed at the issuing service or the sign-in provider; nothing was
    /// installed.
    #[error(transparent)]
    Online(#[from] OnlineError),
}

/// Why `hwpass request --server` got no pass: what the issuing service or the sign-in
/// provider said. Nothing was written on the desktop in any of these cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OnlineError {
    /// A plain `http://` address that is not a loopback one: the ID token (a bearer
    /// credential) would cross the network readable by anyone on the way.
    #[error("{url} is plain http:// on the network, where the sign-in would travel readable by anyone on the way")]
    InsecureUrl {
        /// The address.
        url: String,
    },
    /// The service could not be reached, or did not answer as an issuing service does.
    #[error("{url}: {detail}")]
    Service {
        /// What was asked.
        url: String,
        /// What happened.
        detail: String,
    },
    /// The service has no self-service sign-in (`GET /v1/self` answered 404).
    #[error("{server} offers no sign-in for desktops: {detail}")]
    NoSelfService {
        /// The service.
        server: String,
        /// What it said.
        detail: String,
    },
    /// The sign-in provider could not be reached (by this desktop, or by the service).
    #[error("{detail}")]
    IdpUnavailable {
        /// The provider (its issuer URL).
        idp: String,
        /// What happened, and who could not reach it.
        detail: String,
    },
    /// The sign-in provider cannot do what the service asked of it (no device sign-in, an
    /// issuer that is not a URL, a refusal of this client).
    #[error("the sign-in provider {idp}: {detail}")]
    IdpConfig {
        /// The provider.
        idp: String,
        /// What is wrong.
        detail: String,
    },
    /// Sign-in was turned down at the provider (RFC 8628 `access_denied`).
    #[error("sign-in was turned down at the provider {idp} ({detail})")]
    Denied {
        /// The provider.
        idp: String,
        /// What it said.
        detail: String,
    },
    /// The sign-in code expired before sign-in was completed (RFC 8628 `expired_token`).
    #[error("the sign-in code expired ({} after it was shown) before sign-in was completed", format_duration(*lifetime))]
    Expired {
        /// How long the code was valid, in seconds.
        lifetime: i64,
    },
    /// The service refused the ID token from signing in (401).
    #[error("{server} refused the sign-in: {detail}")]
    TokenRefused {
        /// The service.
        server: String,
        /// Why, as it said.
        detail: String,
    },
    /// The person is in no group that may get passes (403 `no-group`).
    #[error("{detail}")]
    NoGroup {
        /// What the service said: the groups that would do.
        detail: String,
    },
    /// The person's group allows no more passes today (429 `rate-limited`).
    #[error("{detail}")]
    RateLimited {
        /// What the service said: when the next is possible.
        detail: String,
    },
    /// `--subject` names someone else than the person who signed in.
    #[error("you signed in as '{identity}', but --subject names '{subject}': a pass is only ever for the person who signed in")]
    WrongSubject {
        /// What `--subject` said.
        subject: String,
        /// Who signed in.
        identity: String,
    },
    /// The service refused the request (its problem type and detail).
    #[error("{server} refused the request ({problem}): {detail}")]
    Refused {
        /// The service.
        server: String,
        /// HTTP status.
        status: u16,
        /// The problem type's slug (`policy`, `not-yours`, `request-refused`, …).
        problem: String,
        /// What it said.
        detail: String,
    },
}

impl OnlineReason {
    /// A stable name for scripts (`hwpass request --server --json` prints it as `failure`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsecureUrl => "insecure-url",
            Self::Service => "service",
            Self::NoSelfService => "no-self-service",
            Self::IdpUnavailable => "idp-unavailable",
            Self::IdpConfig => "idp-config",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::TokenRefused => "token-refused",
            Self::NoGroup => "no-group",
            Self::RateLimited => "rate-limited",
            Self::WrongSubject => "wrong-subject",
            Self::Refused => "refused",
        }
    }
}

impl OnlineError {
    /// What kind of trouble this is.
    pub fn reason(&self) -> OnlineReason {
        match self {
            Self::InsecureUrl { .. } => OnlineReason::InsecureUrl,
            Self::Service { .. } => OnlineReason::Service,
            Self::NoSelfService { .. } => OnlineReason::NoSelfService,
            Self::IdpUnavailable { .. } => OnlineReason::IdpUnavailable,
            Self::IdpConfig { .. } => OnlineReason::IdpConfig,
            Self::Denied { .. } => OnlineReason::Denied,
            Self::Expired { .. } => OnlineReason::Expired,
            Self::TokenRefused { .. } => OnlineReason::TokenRefused,
            Self::NoGroup { .. } => OnlineReason::NoGroup,
            Self::RateLimited { .. } => OnlineReason::RateLimited,
            Self::WrongSubject { .. } => OnlineReason::WrongSubject,
            Self::Refused { .. } => OnlineReason::Refused,
        }
    }
}

impl DesktopError {
    /// The exit code (SPEC "hwpass check exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotEnrolled { .. } | Self::NoPass => exit::NO_PASS,
            Self::StateRolledBack { .. } => exit::ROLLBACK,
            Self::WrongDocument { .. } | Self::DeliveryDamaged(_) => exit::INVALID,
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
            Self::Device(f) if f.kind.is_now() => exit::OTHER,
            Self::Device(_) => exit::WRONG_DEVICE,
            Self::Rollback { .. } | Self::RollbackTpm { .. } => exit::ROLLBACK,
            Self::AlreadyEnrolled { .. }
            | Self::Input(_)
            | Self::Io { .. }
            | Self::Fetch(_)
            | Self::Online(_) => exit::OTHER,
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
            Self::Token(t) if t.is_transport_damage() => Reason::Transit,
            Self::Token(_) => Reason::Invalid,
            Self::DeliveryDamaged(_) => Reason::Transit,
            Self::WrongDocument { found, .. } => Reason::WrongDocument(*found),
            Self::StateRolledBack { .. } => Reason::StateRolledBack,
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
                FaultKind::Missing => Reason::DeviceMissing,
                FaultKind::Permission => Reason::DevicePermission,
                FaultKind::NotListening => Reason::DeviceNotListening,
                FaultKind::Lockout => Reason::DeviceLockout,
                FaultKind::Failure => Reason::DeviceFailure,
            },
            Self::Sign(_) => Reason::KeyUnusable,
            Self::Rollback { .. } | Self::RollbackTpm { .. } => Reason::Rollback,
            Self::Damaged { .. } => Reason::Damaged,
            Self::Input(_) | Self::Io { .. } => Reason::Input,
            Self::Online(o) => Reason::Online(o.reason()),
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
    /// The device cannot be used right now (stopped answering, busy, out of slots): trying
    /// again later may work (exit 1).
    Unavailable,
    /// There is no such device (no device node) (exit 1).
    Missing,
    /// The device exists but this account may not use it (exit 1).
    Permission,
    /// A simulator or remote device is not listening at its address (exit 1).
    NotListening,
    /// The device is in dictionary-attack lockout (exit 1).
    Lockout,
    /// The device reports an internal failure (failure mode) (exit 1).
    Failure,
    /// The device refuses this desktop's key or state: it belongs to another machine or is
    /// damaged (exit 6).
    Foreign,
    /// The device no longer holds what the enrolment needs (cleared, re-provisioned) (exit 6).
    KeyGone,
}

impl FaultKind {
    /// Whether this is trouble with the device right now (exit 1), as opposed to a refusal of
    /// this desktop's key or state (exit 6).
    pub fn is_now(self) -> bool {
        !matches!(self, Self::Foreign | Self::KeyGone)
    }
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
