//! hwpass: hardware-backed offline access passes.
//!
//! An issuer signs short-lived passes with a key inside a PKCS#11 HSM; a desktop verifies them
//! offline and proves, on every check, that it holds the device key the pass is bound to (in a
//! TPM 2.0, or a clearly weaker software key). The contract is `SPEC.md`; the README explains
//! the threat model.
//!
//! Three rooms:
//! - `core` (private; its formats are re-exported here): pure token formats — compact JWS,
//!   claims, JWK/JWKS, the deny list, TPM wire structures, the delivery format. No files, no
//!   clock, no environment.
//! - [`issuer`] (feature `issuer`): config, policy, attestation, signing, the service, with
//!   two seams — [`issuer::KeyManager`] (keys by URI scheme) and [`issuer::AuditStore`] /
//!   [`issuer::RevocationStore`].
//! - [`desktop`] (feature `desktop`, TPM backend with feature `tpm`): the commands, the sealed
//!   state, with one seam — [`desktop::Device`].
//!
//! `issuer` and `desktop` never import each other.

#![forbid(unsafe_code)]

mod core;
#[cfg(feature = "desktop")]
pub mod desktop;
#[cfg(feature = "issuer")]
pub mod issuer;
#[cfg(any(feature = "desktop", feature = "issuer"))]
mod oidc;
#[cfg(any(feature = "desktop", feature = "issuer"))]
mod sys;

pub use crate::core::b64::{b64url, b64url_decode};
pub use crate::core::claims::{
    check_text, Attestation, BindingKind, Confirmation, EvidenceClaims, HardwareBinding,
    PassClaims, RequestClaims, TextProblem, DENYLIST_TYP, MAX_DEV_CHARS, MAX_EK_INTERMEDIATES,
    MAX_EVIDENCE_CERT_LEN, MAX_SUB_CHARS, PASS_TYP, REQUEST_TYP,
};
pub use crate::core::delivery::{Delivery, DeliveryError, DELIVERY_PREFIX};
pub use crate::core::denylist::{DenyList, RevokedPass, MAX_DENYLIST_LEN};
pub use crate::core::error::TokenError;
pub use crate::core::json::check_strict;
pub use crate::core::jwk::{Jwk, Jwks, TrustParams};
pub use crate::core::jws::{
    check_validity, decode, decode_limited, sign_as, sign_pass, sign_pass_as, sign_request,
    verify_es256, verify_issuer_doc, verify_pass, verify_request, Decoded, PassExpectations,
    VerifiedRequest, LEEWAY_SECS, MAX_TOKEN_LEN,
};
pub use crate::core::paste::{clean as clean_paste, identify, DocKind};
pub use crate::core::signer::{random_jti, signature_from_scalars, MemoryKey, SignError, Signer};
pub use crate::core::time::{
    format_duration, format_time, in_range, parse_duration, MAX_TIME, MIN_TIME,
};
pub use crate::core::tpm_wire::{
    device_key_public, qualifying_data, verify_self_certify, EkKind, TpmClock, WireError,
};

/// The signed deny list: sign and verify.
pub mod denylist {
    pub use crate::core::denylist::{sign, verify};
}

/// The clock and standard input as the binaries read them.
#[cfg(any(feature = "desktop", feature = "issuer"))]
pub mod os {
    pub use crate::sys::{
        now, read_document, read_stdin, read_token_arg, write_atomic, FAKE_NOW_ENV,
    };
}

/// Fuzz entry points for parsers of untrusted input that are not public API (`cargo fuzz`
/// builds with `--cfg fuzzing`).
#[cfg(all(fuzzing, feature = "desktop", feature = "issuer"))]
pub mod fuzz {
    pub use crate::desktop::internal::{check_state_content, open_sealed, seal};
    pub use crate::issuer::internal::{fuzz_audit_log, verify_evidence};
    pub use crate::issuer::AttestationPolicy;
}
