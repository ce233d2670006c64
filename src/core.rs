//! The pure core: the formats both sides speak. No files, no terminal, no environment, no
//! network, no clock — `now` is always a parameter.
//!
//! - [`jws`]: compact JWS (ES256) signing and strict verification of passes and requests.
//! - [`jwk`]: public JWKs, trust bundles (JWK Sets) and RFC 7638 thumbprints.
//! - [`claims`]: the claims of passes and requests and their wire enums.
//! - [`denylist`]: the signed deny list document.
//! - [`tpm_wire`]: the TPM 2.0 structures both sides read (public areas, certifications).
//! - [`delivery`]: a pass sealed to a TPM (`hwpass-dlv1.…`).
//! - [`signer`]: the one seam every signing key sits behind, and the in-memory key.
//! - [`time`] and [`b64`]: durations, time stamps and base64url.
//!
//! It imports nothing from `issuer` or `desktop`.

pub(crate) mod b64;
pub(crate) mod claims;
pub(crate) mod delivery;
pub(crate) mod denylist;
pub(crate) mod error;
pub(crate) mod json;
pub(crate) mod jwk;
pub(crate) mod jws;
pub(crate) mod paste;
pub(crate) mod signer;
pub(crate) mod time;
pub(crate) mod tpm_wire;

#[cfg(test)]
mod tests;
