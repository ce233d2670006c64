//! The signed deny list: revoked passes and device keys, plus the issuer keys desktops trust.
//!
//! One ES256 JWS (`typ` [`DENYLIST_TYP`]), signed by the issuer's current HSM key and
//! sequence-numbered. It carries the trust bundle's keys too, so one signed, monotonic document
//! moves both revocations and key rotations to desktops — over `GET /v1/denylist`, or as a file
//! on paste or USB. A desktop accepts a list only if a key it already trusts signed it, for its
//! issuer and audience, with a sequence number above the one it holds: an old list cannot be
//! replayed to un-revoke a pass.
//!
//! Pure code: no files, no clock.

use serde::{Deserialize, Serialize};

use crate::core::claims::DENYLIST_TYP;
use crate::core::error::TokenError;
use crate::core::jwk::{Jwk, Jwks, TrustParams};
use crate::core::jws::{self, LEEWAY_SECS};
use crate::core::signer::{SignError, Signer};

/// Largest deny list accepted, in bytes (about 4 000 revoked passes).
pub const MAX_DENYLIST_LEN: usize = 256 * 1024;

/// A revoked pass: its `jti`, and its `exp` so the list can drop it once it has expired anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedPass {
    /// The pass id.
    pub jti: String,
    /// When the pass expires (Unix seconds).
    pub exp: i64,
}

/// The claims of a deny list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyList {
    /// The issuer (`iss` of its passes).
    pub iss: String,
    /// The audience of its passes.
    pub aud: String,
    /// Sequence number: higher replaces lower, never the other way.
    pub seq: u64,
    /// When this copy was signed.
    pub iat: i64,
    /// The issuer keys desktops trust from now on (current and next; RFC 7517 JWKs).
    pub keys: Vec<serde_json::Value>,
    /// Revoked passes not yet expired.
    pub passes: Vec<RevokedPass>,
    /// Revoked device keys (RFC 7638 thumbprints): no pass bound to them is accepted.
    pub devices: Vec<String>,
}

impl DenyList {
    /// The keys as a trust bundle with the issuer parameters.
    pub fn trust(&self) -> Result<Jwks, TokenError> {
        let keys = self
            .keys
            .iter()
            .map(Jwk::from_json)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(TokenError::Claims("deny list lists no issuer keys"));
        }
        for (value, key) in self.keys.iter().zip(&keys) {
            if value
                .get("kid")
                .is_some_and(|k| k.as_str() != Some(&key.thumbprint()))
            {
                return Err(TokenError::BadJwk(
                    "kid is not the key's RFC 7638 thumbprint",
                ));
            }
        }
        Ok(Jwks::new(
            keys,
            Some(TrustParams {
                iss: self.iss.clone(),
                aud: self.aud.clone(),
            }),
        ))
    }

    /// Whether a pass with this `jti`, bound to the device key `jkt`, is revoked.
    pub fn revokes(&self, jti: &str, jkt: &str) -> bool {
        self.passes.iter().any(|p| p.jti == jti) || self.devices.iter().any(|d| d == jkt)
    }
}

/// Signs a deny list with the issuer key.
pub fn sign(list: &DenyList, key: &dyn Signer) -> Result<String, SignError> {
    let kid = Jwk::new(*key.verifying_key()).thumbprint();
    jws::sign_as(DENYLIST_TYP, list, &kid, key)
}

/// Verifies a deny list against the keys a desktop trusts now and its issuer parameters.
/// The sequence number is the caller's to compare.
pub fn verify(
    text: &str,
    trust: &Jwks,
    expect: &TrustParams,
    now: i64,
) -> Result<DenyList, TokenError> {
    let list: DenyList =
        jws::verify_issuer_doc(text.trim(), DENYLIST_TYP, trust, MAX_DENYLIST_LEN)?;
    if list.iss != expect.iss {
        return Err(TokenError::Issuer {
            found: list.iss,
            expected: expect.iss.clone(),
        });
    }
    if list.aud != expect.aud {
        return Err(TokenError::Audience {
            found: list.aud,
            expected: expect.aud.clone(),
        });
    }
    if !crate::core::time::in_range(list.iat) {
        return Err(TokenError::TimeRange {
            claim: "iat",
            value: list.iat,
        });
    }
    if list.iat > now.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::NotYetValid { now, nbf: list.iat });
    }
    list.trust()?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::signer::MemoryKey;

    fn list(key: &MemoryKey, seq: u64) -> DenyList {
        DenyList {
            iss: "corp".into(),
            aud: "app".into(),
            seq,
            iat: 1_000,
            keys: vec![Jwk::new(*key.verifying_key()).to_json()],
            passes: vec![RevokedPass {
                jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
                exp: 2_000,
            }],
            devices: vec!["dev".into()],
        }
    }

    #[test]
    fn signed_list_verifies_only_with_a_trusted_key_and_matching_issuer() {
        let key = MemoryKey::generate();
        let other = MemoryKey::generate();
        let trust = Jwks::new([Jwk::new(*key.verifying_key())], None);
        let expect = TrustParams {
            iss: "corp".into(),
            aud: "app".into(),
        };
        let text = sign(&list(&key, 7), &key).unwrap();
        let got = verify(&text, &trust, &expect, 1_000).unwrap();
        assert_eq!(got.seq, 7);
        assert!(got.revokes("AAAAAAAAAAAAAAAAAAAAAA", "x"));
        assert!(got.revokes("other", "dev"));
        assert!(!got.revokes("other", "x"));

        let forged = sign(&list(&key, 8), &other).unwrap();
        assert!(matches!(
            verify(&forged, &trust, &expect, 1_000),
            Err(TokenError::UnknownKid(_))
        ));
        let wrong_iss = TrustParams {
            iss: "elsewhere".into(),
            aud: "app".into(),
        };
        assert!(matches!(
            verify(&text, &trust, &wrong_iss, 1_000),
            Err(TokenError::Issuer { .. })
        ));
        assert!(matches!(
            verify(&text, &trust, &expect, 1_000 - 3_600),
            Err(TokenError::NotYetValid { .. })
        ));
        // A pass is not a deny list, even when signed by the same key.
        let pass_typed =
            jws::sign_as(crate::core::claims::PASS_TYP, &list(&key, 9), "k", &key).unwrap();
        assert!(matches!(
            verify(&pass_typed, &trust, &expect, 1_000),
            Err(TokenError::Typ { .. })
        ));
    }

    #[test]
    fn list_without_keys_is_refused() {
        let key = MemoryKey::generate();
        let trust = Jwks::new([Jwk::new(*key.verifying_key())], None);
        let expect = TrustParams {
            iss: "corp".into(),
            aud: "app".into(),
        };
        let mut l = list(&key, 1);
        l.keys.clear();
        let text = sign(&l, &key).unwrap();
        assert_eq!(
            verify(&text, &trust, &expect, 1_000).unwrap_err(),
            TokenError::Claims("deny list lists no issuer keys")
        );
    }
}
