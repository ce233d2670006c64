//! What the desktop commands report: the verdict of a check (as `hwpass check --json` prints
//! it) and the reports of enroll, refresh and status.

use std::path::PathBuf;

use serde::Serialize;

use super::error::{exit, DesktopError, Reason};
use crate::core::claims::{Attestation, BindingKind, PassClaims};
use crate::core::time::{format_duration, format_time};

/// What `enroll` did.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollReport {
    /// The binding kind chosen.
    pub kind: BindingKind,
    /// The device key thumbprint.
    pub jkt: String,
    /// Whether an older copy of the sealed state is refused (a TPM NV counter versions it).
    pub rollback_protected: bool,
    /// What the person must know: `auto` fell back to a weaker key, or the TPM could not give
    /// rollback protection.
    pub warnings: Vec<String>,
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

/// The outcome of a check, as `hwpass check --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `valid`, `no-pass`, `invalid`, `expired`, `wrong-device`, `rollback`, `revoked`, `error`.
    pub status: &'static str,
    /// The process exit code for this verdict.
    pub exit_code: i32,
    /// One sentence.
    pub message: String,
    /// What to do next, when not valid. The library leaves it empty; front ends (the `hwpass`
    /// binary) fill it in from their own advice for `reason`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Valid, but less than [`renew_soon`]'s margin is left: renew before going offline.
    pub renew: bool,
    /// What to do about it, when `renew` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
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
    /// What kind of trouble, when not valid (the key for a front end's advice).
    #[serde(skip)]
    pub reason: Option<Reason>,
}

impl Verdict {
    pub(crate) fn valid(c: &PassClaims, now: i64) -> Self {
        let remaining = c.exp.saturating_sub(now);
        let renew = renew_soon(c, now);
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
            renew,
            warning: renew.then(|| {
                format!(
                    "renew before you go offline: this pass expires in {} ({}); `hwpass request` and install the new pass while you can reach your admin",
                    format_duration(remaining.max(0)),
                    format_time(c.exp)
                )
            }),
            subject: Some(c.sub.clone()),
            issuer: Some(c.iss.clone()),
            expires_at: Some(c.exp),
            expires: Some(format_time(c.exp)),
            remaining_seconds: Some(remaining),
            binding: Some(c.hwb.kind),
            attestation: Some(c.hwb.att),
            jti: Some(c.jti.clone()),
            reason: None,
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
            hint: None,
            renew: false,
            warning: None,
            subject: None,
            issuer: None,
            expires_at: None,
            expires: None,
            remaining_seconds: None,
            binding: None,
            attestation: None,
            jti: None,
            reason: Some(e.reason()),
        }
    }

    /// Whether the pass is valid.
    pub fn is_valid(&self) -> bool {
        self.exit_code == exit::VALID
    }
}

/// Whether a pass valid at `now` should be renewed before going offline: less than the larger
/// of 24 hours and a fifth of its lifetime is left.
pub fn renew_soon(c: &PassClaims, now: i64) -> bool {
    let lifetime = c.exp.saturating_sub(c.nbf);
    let margin = (24 * 3600).max(lifetime / 5);
    c.exp.saturating_sub(now) < margin
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The state directory.
    pub state_dir: PathBuf,
    /// Binding kind.
    pub binding: BindingKind,
    /// The device backend (`tpm`, `software`).
    pub backend: String,
    /// Device key thumbprint.
    pub device_key: String,
    /// Enrolment time, Unix seconds.
    pub enrolled_at: i64,
    /// Expected issuer (unknown while the device cannot open the state).
    pub issuer: Option<String>,
    /// Expected audience.
    pub audience: Option<String>,
    /// Trusted issuer key ids.
    pub trusted_keys: Vec<String>,
    /// Sequence number of the installed deny list (0: none).
    pub denylist_seq: Option<u64>,
    /// Whether an older copy of the sealed state is refused (a TPM NV counter).
    pub rollback_protected: Option<bool>,
    /// The issuing service a bare `hwpass refresh` uses.
    pub server: Option<String>,
    /// The installed pass, decoded without a proof of possession (run `check` for that).
    pub pass: Option<PassSummary>,
    /// Why the sealed state could not be read: the device is unreachable right now.
    pub device_error: Option<String>,
}

impl StatusReport {
    /// A report that knows nothing yet but where the state lives.
    pub(crate) fn empty(dir: &std::path::Path) -> Self {
        Self {
            state_dir: dir.into(),
            binding: BindingKind::Software,
            backend: String::new(),
            device_key: String::new(),
            enrolled_at: 0,
            issuer: None,
            audience: None,
            trusted_keys: Vec::new(),
            denylist_seq: None,
            rollback_protected: None,
            server: None,
            pass: None,
            device_error: None,
        }
    }
}

/// A pass's state now, as `status` tells it (without proving possession).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PassState {
    /// Within its validity and not revoked.
    Valid,
    /// Past its expiry.
    Expired,
    /// Before its start.
    NotYetValid,
    /// On the installed deny list.
    Revoked,
    /// The computer's clock is behind what this desktop has seen.
    ClockBehind,
}

impl PassState {
    /// As a person reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Expired => "expired",
            Self::NotYetValid => "not yet valid",
            Self::Revoked => "revoked",
            Self::ClockBehind => "cannot tell: the clock is behind what this desktop has seen",
        }
    }
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
    /// Its state now.
    pub state: PassState,
    /// The pass itself (bound to this device, so useless elsewhere).
    pub token: String,
}
