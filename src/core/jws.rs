//! ES256 compact JWS (RFC 7515/7518) for passes, requests and deny lists.
//!
//! Verification is strict (SPEC "Token formats"): exactly `alg` ES256, the expected `typ`, a
//! known `kid`, `exp`/`nbf` within [`LEEWAY_SECS`], the expected `aud`, no unknown header or
//! claim members, no duplicate JSON keys, canonical unpadded base64url, at most
//! [`MAX_TOKEN_LEN`] bytes, and low-S signatures only (every hwpass signer normalizes S, so a
//! high-S twin of a valid signature is refused instead of being a second valid encoding).

use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::core::b64::{b64url, b64url_decode};
use crate::core::claims::{
    check_text, PassClaims, RequestClaims, MAX_DEV_CHARS, MAX_SUB_CHARS, PASS_TYP, REQUEST_TYP,
};
use crate::core::error::TokenError;
use crate::core::json::check_strict;
use crate::core::jwk::{Jwk, Jwks};
use crate::core::signer::{SignError, Signer};
use crate::core::time::{in_range, MAX_TIME};

/// Largest token (pass or request) accepted, in bytes, checked before anything is parsed.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated on `exp`, `nbf` and a request's `iat`, in seconds.
pub const LEEWAY_SECS: i64 = 60;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    typ: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwk: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------------------------
// Signing

/// Signs a pass with the issuer key; `kid` is the key's thumbprint.
pub fn sign_pass(claims: &PassClaims, key: &dyn Signer) -> Result<String, SignError> {
    sign_pass_as(claims, &Jwk::new(*key.verifying_key()).thumbprint(), key)
}

/// [`sign_pass`] with the key's `kid` already computed (the issuer's hot path needs it for the
/// audit record too).
pub fn sign_pass_as(claims: &PassClaims, kid: &str, key: &dyn Signer) -> Result<String, SignError> {
    sign_as(PASS_TYP, claims, kid, key)
}

/// Signs any issuer document (a pass, a deny list) of type `typ` with the issuer key `kid`.
pub fn sign_as<C: Serialize>(
    typ: &str,
    claims: &C,
    kid: &str,
    key: &dyn Signer,
) -> Result<String, SignError> {
    let header = Header {
        alg: "ES256".into(),
        typ: typ.into(),
        kid: Some(kid.into()),
        jwk: None,
    };
    sign_compact(&header, claims, key)
}

/// Signs a request with the device key, embedding its public JWK (proof of possession).
pub fn sign_request(claims: &RequestClaims, key: &dyn Signer) -> Result<String, SignError> {
    let header = Header {
        alg: "ES256".into(),
        typ: REQUEST_TYP.into(),
        kid: None,
        jwk: Some(Jwk::new(*key.verifying_key()).to_json()),
    };
    sign_compact(&header, claims, key)
}

fn sign_compact<C: Serialize>(
    header: &Header,
    claims: &C,
    key: &dyn Signer,
) -> Result<String, SignError> {
    let mut out = format!("{}.{}", b64json(header), b64json(claims));
    let sig = key.try_sign(out.as_bytes())?;
    // RFC 7518 §3.4: the JWS signature is r‖s, 64 bytes, not DER.
    out.push('.');
    out.push_str(&b64url(&sig.to_bytes()));
    Ok(out)
}

fn b64json<T: Serialize>(value: &T) -> String {
    // Invariant: headers and claims hold only strings, integers and objects, which always
    // serialize.
    b64url(&serde_json::to_vec(value).unwrap_or_default())
}

/// Verifies an ES256 signature over `msg` given as raw r‖s, refusing high-S.
pub fn verify_es256(key: &VerifyingKey, msg: &[u8], sig: &[u8]) -> Result<(), TokenError> {
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|_| TokenError::SignatureLength(sig.len()))?;
    let parsed = Signature::from_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    if parsed.normalize_s().is_some() {
        return Err(TokenError::HighS);
    }
    // The verification itself runs in ring: measured ~4× faster than the pure-Rust p256
    // verifier, which dominated the issuer's profile (README "Performance").
    let point = key.to_encoded_point(false);
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        point.as_bytes(),
    )
    .verify(msg, &sig)
    .map_err(|_| TokenError::BadSignature)
}

// ---------------------------------------------------------------------------------------------
// Parsing and verification

/// A token split and decoded, not yet trusted.
#[derive(Debug)]
pub struct Decoded {
    header: Header,
    payload_bytes: Vec<u8>,
    signing_input_len: usize,
    signature: Vec<u8>,
}

impl Decoded {
    /// `typ` of the header.
    pub fn typ(&self) -> &str {
        &self.header.typ
    }
    /// `alg` of the header.
    pub fn alg(&self) -> &str {
        &self.header.alg
    }
    /// `kid` of the header.
    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }
    /// The header as JSON.
    pub fn header_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.header).unwrap_or_default()
    }

    /// The payload as a JSON object. Verifiers call this only after the signature checked out.
    pub fn payload(&self) -> Result<serde_json::Value, TokenError> {
        check_strict(&self.payload_bytes).map_err(|detail| TokenError::Json {
            part: "payload",
            detail,
        })?;
        let payload: serde_json::Value =
            serde_json::from_slice(&self.payload_bytes).map_err(|e| TokenError::Json {
                part: "payload",
                detail: e.to_string(),
            })?;
        if !payload.is_object() {
            return Err(TokenError::Json {
                part: "payload",
                detail: "not a JSON object".into(),
            });
        }
        Ok(payload)
    }
}

/// Splits a compact JWS and decodes its header; the payload is decoded from base64url only.
pub fn decode(token: &str) -> Result<Decoded, TokenError> {
    decode_limited(token, MAX_TOKEN_LEN)
}

/// [`decode`] with another size limit (deny lists are larger than passes).
pub fn decode_limited(token: &str, max: usize) -> Result<Decoded, TokenError> {
    if token.len() > max {
        return Err(TokenError::TooLong {
            len: token.len(),
            max,
        });
    }
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenError::Segments(parts.len()));
    }
    let b64 = |s: &str, part| b64url_decode(s).ok_or(TokenError::Base64(part));
    let header_bytes = b64(parts[0], "header")?;
    let payload_bytes = b64(parts[1], "payload")?;
    let signature = b64(parts[2], "signature")?;
    check_strict(&header_bytes).map_err(|detail| TokenError::Json {
        part: "header",
        detail,
    })?;
    let header: Header = serde_json::from_slice(&header_bytes).map_err(|e| TokenError::Json {
        part: "header",
        detail: e.to_string(),
    })?;
    Ok(Decoded {
        header,
        payload_bytes,
        signing_input_len: parts[0].len() + 1 + parts[1].len(),
        signature,
    })
}

fn check_alg_typ(d: &Decoded, typ: &'static str) -> Result<(), TokenError> {
    if d.header.alg != "ES256" {
        return Err(TokenError::Alg(d.header.alg.clone()));
    }
    if d.header.typ != typ {
        return Err(TokenError::Typ {
            found: d.header.typ.clone(),
            expected: typ,
        });
    }
    Ok(())
}

fn claims<C: serde::de::DeserializeOwned>(d: &Decoded) -> Result<C, TokenError> {
    check_strict(&d.payload_bytes).map_err(|detail| TokenError::Json {
        part: "payload",
        detail,
    })?;
    // One strict JSON value: an object exactly when it opens with `{` (serde's derive would
    // also read a struct from an array).
    if d.payload_bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(TokenError::Json {
            part: "payload",
            detail: "not a JSON object".into(),
        });
    }
    // From the bytes, not the Value: serde's derive refuses duplicate keys only there.
    serde_json::from_slice(&d.payload_bytes).map_err(|e| TokenError::Json {
        part: "claims",
        detail: e.to_string(),
    })
}

/// What a desktop expects of a pass.
#[derive(Debug, Clone)]
pub struct PassExpectations<'a> {
    /// Trusted issuer keys.
    pub trust: &'a Jwks,
    /// Expected `iss`.
    pub iss: &'a str,
    /// Expected `aud`.
    pub aud: &'a str,
}

/// Verifies a pass fully: shape, header, signature by a trusted key, issuer, audience, validity.
pub fn verify_pass(
    token: &str,
    expect: &PassExpectations<'_>,
    now: i64,
) -> Result<PassClaims, TokenError> {
    let c: PassClaims = verify_issuer_doc(token, PASS_TYP, expect.trust, MAX_TOKEN_LEN)?;
    if c.iss != expect.iss {
        return Err(TokenError::Issuer {
            found: c.iss,
            expected: expect.iss.into(),
        });
    }
    if c.aud != expect.aud {
        return Err(TokenError::Audience {
            found: c.aud,
            expected: expect.aud.into(),
        });
    }
    check_pass_shape(&c)?;
    check_validity(c.nbf, c.exp, now)?;
    Ok(c)
}

/// Verifies an issuer document of type `typ` (at most `max` bytes): header, and the signature
/// by the trusted key its `kid` names; then parses its claims strictly. Claim checks beyond the
/// structure are the caller's.
pub fn verify_issuer_doc<C: serde::de::DeserializeOwned>(
    token: &str,
    typ: &'static str,
    trust: &Jwks,
    max: usize,
) -> Result<C, TokenError> {
    let d = decode_limited(token, max)?;
    check_alg_typ(&d, typ)?;
    if d.header.jwk.is_some() {
        return Err(TokenError::EmbeddedJwk);
    }
    let kid = d
        .header
        .kid
        .as_deref()
        .ok_or(TokenError::MissingHeader("kid"))?;
    let key = trust
        .find(kid)
        .ok_or_else(|| TokenError::UnknownKid(kid.into()))?;
    verify_es256(
        key.verifying_key(),
        &token.as_bytes()[..d.signing_input_len],
        &d.signature,
    )?;
    claims(&d)
}

/// Refuses a time stamp outside 1970…9999, before any arithmetic on it.
fn check_time(claim: &'static str, value: i64) -> Result<(), TokenError> {
    if in_range(value) {
        Ok(())
    } else {
        Err(TokenError::TimeRange { claim, value })
    }
}

/// Refuses a `sub` or `dev` that a person or a log could be misled by.
fn check_texts(sub: &str, dev: Option<&str>) -> Result<(), TokenError> {
    check_text(sub, MAX_SUB_CHARS).map_err(|problem| TokenError::Text {
        field: "sub",
        problem,
    })?;
    if let Some(dev) = dev {
        check_text(dev, MAX_DEV_CHARS).map_err(|problem| TokenError::Text {
            field: "dev",
            problem,
        })?;
    }
    Ok(())
}

fn check_pass_shape(c: &PassClaims) -> Result<(), TokenError> {
    check_time("iat", c.iat)?;
    check_time("nbf", c.nbf)?;
    check_time("exp", c.exp)?;
    check_texts(&c.sub, c.dev.as_deref())?;
    if c.exp <= c.nbf {
        return Err(TokenError::Claims("exp is not after nbf"));
    }
    let jti = b64url_decode(&c.jti).ok_or(TokenError::Claims("jti is not base64url"))?;
    if jti.len() < 16 {
        return Err(TokenError::Claims("jti has fewer than 128 bits"));
    }
    let jkt = b64url_decode(&c.cnf.jkt).ok_or(TokenError::Claims("cnf.jkt is not base64url"))?;
    if jkt.len() != 32 {
        return Err(TokenError::Claims("cnf.jkt is not a SHA-256 thumbprint"));
    }
    Ok(())
}

/// `nbf - leeway <= now < exp + leeway`.
pub fn check_validity(nbf: i64, exp: i64, now: i64) -> Result<(), TokenError> {
    if now < nbf.saturating_sub(LEEWAY_SECS) {
        return Err(TokenError::NotYetValid { now, nbf });
    }
    if now >= exp.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::Expired { now, exp });
    }
    Ok(())
}

/// A request whose self-signature verified.
#[derive(Debug, Clone)]
pub struct VerifiedRequest {
    /// The device public key it carries (and was signed with).
    pub jwk: Jwk,
    /// Its claims.
    pub claims: RequestClaims,
}

/// Verifies a request's proof of possession: signed by the key it carries. Freshness of `iat`
/// against a maximum age is the issuer policy's business; here only "not from the future".
pub fn verify_request(token: &str, now: i64) -> Result<VerifiedRequest, TokenError> {
    let d = decode(token)?;
    check_alg_typ(&d, REQUEST_TYP)?;
    if d.header.kid.is_some() {
        return Err(TokenError::Claims("a request names no issuer kid"));
    }
    let jwk_value = d
        .header
        .jwk
        .as_ref()
        .ok_or(TokenError::MissingHeader("jwk"))?;
    let jwk = Jwk::from_json(jwk_value)?;
    verify_es256(
        jwk.verifying_key(),
        &token.as_bytes()[..d.signing_input_len],
        &d.signature,
    )?;
    let claims: RequestClaims = claims(&d)?;
    check_time("iat", claims.iat)?;
    if claims.iat > now.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::NotYetValid {
            now,
            nbf: claims.iat,
        });
    }
    if claims.sub.trim().is_empty() {
        return Err(TokenError::Claims("sub is empty"));
    }
    check_texts(&claims.sub, claims.dev.as_deref())?;
    if matches!(claims.ttl, Some(t) if t <= 0) {
        return Err(TokenError::Claims("requested lifetime is not positive"));
    }
    if matches!(claims.ttl, Some(t) if t > MAX_TIME) {
        return Err(TokenError::Claims(
            "requested lifetime is longer than any date",
        ));
    }
    Ok(VerifiedRequest { jwk, claims })
}
