//! The claims of passes and requests (SPEC "Token formats") and their wire enums.

use serde::{Deserialize, Serialize};

/// Longest `sub`, in characters.
pub const MAX_SUB_CHARS: usize = 256;
/// Longest `dev`, in characters.
pub const MAX_DEV_CHARS: usize = 128;
/// Most CA certificates a request may carry to help chain its EK certificate
/// ([`EvidenceClaims::eki`]).
pub const MAX_EK_INTERMEDIATES: usize = 4;
/// Largest certificate (EK certificate or carried intermediate) accepted in evidence, in DER
/// bytes (EK and TPM-vendor CA certificates are 0.5–2 KiB).
pub const MAX_EVIDENCE_CERT_LEN: usize = 4096;

/// Why a text claim (`sub`, `dev`) was refused: it is shown to people, written to logs and
/// audit records, and must not be able to mislead them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TextProblem {
    /// Empty or only spaces.
    #[error("is empty")]
    Empty,
    /// Longer than allowed.
    #[error("is {chars} characters long, more than {max}")]
    TooLong {
        /// Its length in characters.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// A control, bidirectional-override or invisible character.
    #[error("contains {what} (U+{code:04X}) at character {position}")]
    Forbidden {
        /// What kind of character.
        what: &'static str,
        /// Its code point.
        code: u32,
        /// 1-based position in characters.
        position: usize,
    },
}

/// What `c` is, if it must not appear in a text claim: control characters (C0, DEL, C1,
/// including NUL, ESC, CR and LF), line and paragraph separators, bidirectional controls and
/// invisible (zero-width) characters.
fn forbidden(c: char) -> Option<&'static str> {
    match c {
        c if c.is_control() => Some("a control character"),
        '\u{2028}' | '\u{2029}' => Some("a line separator"),
        '\u{061C}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}' => Some("a bidirectional control"),
        '\u{00AD}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200D}'
        | '\u{2060}'..='\u{2064}'
        | '\u{FEFF}' => Some("an invisible character"),
        _ => None,
    }
}

/// Checks a text claim: not empty, at most `max` characters, no control, line-separator,
/// bidirectional-control or invisible character.
pub fn check_text(value: &str, max: usize) -> Result<(), TextProblem> {
    if value.trim().is_empty() {
        return Err(TextProblem::Empty);
    }
    if let Some((i, (c, what))) = value
        .chars()
        .enumerate()
        .find_map(|(i, c)| forbidden(c).map(|w| (i, (c, w))))
    {
        return Err(TextProblem::Forbidden {
            what,
            code: u32::from(c),
            position: i + 1,
        });
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(TextProblem::TooLong { chars, max });
    }
    Ok(())
}

/// `typ` of an access pass.
pub const PASS_TYP: &str = "hwpass+jwt";
/// `typ` of a pass request.
pub const REQUEST_TYP: &str = "hwpass-req+jwt";
/// `typ` of a signed deny list (see [`crate::denylist`]).
pub const DENYLIST_TYP: &str = "hwpass-deny+jwt";

/// How the device key is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindingKind {
    /// Non-exportable key in a TPM 2.0.
    Tpm,
    /// Software key encrypted at rest: the weaker binding.
    Software,
}

impl BindingKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tpm => "tpm",
            Self::Software => "software",
        }
    }
}

/// How the issuer knows the device key is held as claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attestation {
    /// EK certificate chained to a trusted manufacturer CA.
    #[serde(rename = "ek-cert")]
    EkCert,
    /// EK public key on the issuer's allow-list.
    #[serde(rename = "ek-allowlist")]
    EkAllowlist,
    /// No evidence: the request's word only.
    #[serde(rename = "none")]
    None,
}

impl Attestation {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EkCert => "ek-cert",
            Self::EkAllowlist => "ek-allowlist",
            Self::None => "none",
        }
    }
}

/// `cnf` (RFC 7800 §3.1, RFC 9449 §6.1 `jkt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// RFC 7638 thumbprint of the device public key.
    pub jkt: String,
}

/// `hwb`: the hardware binding of the pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareBinding {
    /// How the key is held.
    pub kind: BindingKind,
    /// How the issuer knows.
    pub att: Attestation,
}

/// The claims of an access pass (SPEC "Token formats").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Random, 128 bits, base64url.
    pub jti: String,
    pub cnf: Confirmation,
    pub hwb: HardwareBinding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// The desktop state the request was made at, echoed from the request: it lets this pass
    /// (and no pass requested earlier) reset that desktop's time mark (SPEC "Desktop
    /// guarantees").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stm: Option<StateMark>,
}

/// A desktop's state when it made a request: the version of its sealed state (a TPM NV
/// counter value, or a generation) and the latest time it had seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateMark {
    /// The sealed state's version.
    pub n: u64,
    /// The time mark: the latest wall time the desktop had recorded, Unix seconds.
    pub hw: i64,
}

/// The claims of a pass request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestClaims {
    pub sub: String,
    pub iat: i64,
    pub kind: BindingKind,
    /// Requested lifetime in seconds, if the person asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// TPM attestation evidence for the key (see `attest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub att: Option<EvidenceClaims>,
    /// The desktop's state when it made the request (echoed into the pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stm: Option<StateMark>,
}

/// Evidence as carried in a request's `att` claim (all base64url).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceClaims {
    /// EK certificate (DER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ekc: Option<String>,
    /// EK TPMT_PUBLIC, when there is no certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ekp: Option<String>,
    /// CA certificates (DER) that help chain `ekc` to one of the issuer's trust anchors, at most
    /// [`MAX_EK_INTERMEDIATES`] of at most [`MAX_EVIDENCE_CERT_LEN`] bytes each. Never
    /// trusted by themselves: the issuer uses them only to build a path to its own anchors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eki: Option<Vec<String>>,
    /// AK TPMT_PUBLIC.
    pub ak: String,
    /// Device key TPMT_PUBLIC; absent when it is exactly [`crate::device_key_public`] of the
    /// request's key (the usual case), which keeps requests small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// TPMS_ATTEST of TPM2_Certify.
    pub cert: String,
    /// AK signature over it, r‖s.
    pub sig: String,
}
