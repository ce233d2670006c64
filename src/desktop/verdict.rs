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
    /// Set when `auto` fell back to software: say so to the person.
    pub notice: Option<String>,
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
