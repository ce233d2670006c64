//! The desktop: enrolment, requests, installing and checking passes, all offline.
//!
//! [`check`] is the library call an application makes; `hwpass check --json` prints the same
//! [`Verdict`] (with the front end's `hint` added).
//!
//! One seam, [`Device`]: where the key lives ([`BACKENDS`]: the TPM, then the software key),
//! with the sealed state ([`STATE_FILE`]) under a key that device keeps. It never imports
//! `issuer`; both share only `core`.

mod clock;
mod commands;
mod device;
mod enrolment;
mod error;
mod fetch;
mod online;
mod platform;
mod state;
mod verdict;

pub use clock::{MARK_EVERY_SECS, ROLLBACK_TOLERANCE_SECS, TPM_RATE_SLACK_PERCENT};
pub use commands::{check, enroll, install, refresh, remembered_server, request, status};
pub use device::software::{SoftwareError, MACHINE_ID_ENV};
#[cfg(feature = "tpm")]
pub use device::tpm::{TpmError, DEFAULT_TCTI};
pub use device::{
    backend_names, prove_possession, Backend, BackendChoice, Created, Device, DeviceOptions,
    Evidence, BACKENDS,
};
pub use error::{exit, DesktopError, DeviceFault, FaultKind, OnlineError, OnlineReason, Reason};
pub use fetch::denylist as fetch_denylist;
pub use online::{
    request_online, OnlineReport, OnlineRequest, SignInCode, SignInPrompt, SignedIn, Stage,
};
pub use platform::{default_state_dir, host_name};
pub use state::{DEVICE_FILE, STATE_FILE};
pub use verdict::{
    renew_soon, EnrollReport, PassState, PassSummary, RefreshReport, StatusReport, Verdict,
};

/// Items for this crate's own tests and fuzz targets: not part of the API.
#[doc(hidden)]
pub mod internal {
    #[cfg(feature = "tpm")]
    pub use super::device::tpm::{key_blobs, TpmDevice, TpmKeyFile};
    #[cfg(fuzzing)]
    pub use super::state::{check_state_content, open_sealed, seal};
}
