//! Issuer-side verification of TPM attestation evidence, and the sealed delivery of a pass to
//! the attested TPM. Pure: TPM wire structures come from [`crate::core::tpm_wire`], every
//! primitive from RustCrypto; no TPM is needed on the issuer.
//!
//! What a verified request proves: the device key named in the request is a fixedTPM,
//! fixedParent, sensitiveDataOrigin signing key (`TPM2_Certify` by an attestation key whose
//! attributes say it is a restricted, fixedTPM signing key), and the pass delivered with
//! `TPM2_MakeCredential` can only be opened by the TPM holding the endorsement key that a
//! trusted manufacturer CA certified (`ek-cert`) or that the admin allow-listed
//! (`ek-allowlist`), and only with that attestation key loaded.

use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use rsa::pkcs1v15;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use rsa::RsaPublicKey;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use x509_cert::der::{Decode as _, Encode as _};
use x509_cert::Certificate;
use zeroize::Zeroizing;

use super::credential::{self, MadeCredential};
use crate::core::b64::b64url_decode;
use crate::core::claims::{Attestation, EvidenceClaims};
use crate::core::delivery;
use crate::core::jwk::Jwk;
use crate::core::tpm_wire::{
    attr, device_key_public, has, parse_certify, parse_public, qualifying_data, WireError,
};

/// Why evidence was refused. Each is a distinct, clear refusal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttestError {
    /// A `tpm` request without evidence, where the policy requires it.
    #[error("the request claims a TPM-held key but carries no attestation evidence, which this issuer requires")]
    Missing,
    /// Evidence on a software request.
    #[error("a software-bound request carries TPM attestation evidence")]
    Unexpected,
    /// A field is not decodable.
    #[error("attestation evidence is malformed: {0}")]
    Malformed(&'static str),
    /// The EK certificate does not chain to a configured root.
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: {0}")]
    UntrustedEk(String),
    /// The EK (no certificate) is not on the allow-list.
    #[error("the endorsement key {0} has no certificate and is not on the allow-list")]
    NotAllowListed(String),
    /// The AK is not a restricted fixedTPM signing key.
    #[error("the attestation key is not a restricted, fixedTPM, fixedParent signing key")]
    BadAk,
    /// The certify structure is not a TPM-made certification.
    #[error("the certification is not a TPM-generated TPM2_Certify structure: {0}")]
    BadCertify(&'static str),
    /// The certify signature does not verify with the AK.
    #[error("the certification is not signed by the attestation key")]
    BadCertifySignature,
    /// The certified object is not the key described.
    #[error("the certified key is not the key whose public area the request carries")]
    NameMismatch,
    /// The key is not TPM-resident as required.
    #[error("the device key was not created inside the TPM as a non-exportable key (needs fixedTPM, fixedParent, sensitiveDataOrigin, sign)")]
    KeyNotInTpm,
    /// The key public area is not the request's key.
    #[error("the attested key is not the key that signed the request")]
    KeyMismatch,
    /// The certification was made for another request key.
    #[error("the certification was made for another key (qualifying data differs)")]
    WrongQualifyingData,
    /// MakeCredential failed.
    #[error("cannot seal the pass to the TPM: {0}")]
    Credential(String),
}

impl From<WireError> for AttestError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::BadCertify(d) => Self::BadCertify(d),
            WireError::BadSignature => Self::BadCertifySignature,
            WireError::NameMismatch => Self::NameMismatch,
            WireError::WrongQualifyingData => Self::WrongQualifyingData,
            WireError::Malformed(d) => Self::Malformed(d),
        }
    }
}

/// What the issuer trusts.
#[derive(Debug, Clone, Default)]
pub struct AttestationPolicy {
    /// Refuse `tpm` requests without evidence.
    pub require: bool,
    /// Trusted manufacturer CA certificates (roots and intermediates).
    pub roots: Vec<Certificate>,
    /// Allowed EK names (hex of nameAlg ‖ SHA-256(TPMT_PUBLIC)), for TPMs without a certificate.
    pub allowlist: Vec<String>,
}

impl AttestationPolicy {
    /// Whether the admin configured any way to trust an EK. An issuer that did not (and does
    /// not require attestation) ignores evidence and issues `att: none` passes as before.
    pub fn configured(&self) -> bool {
        self.require || !self.roots.is_empty() || !self.allowlist.is_empty()
    }
}

/// The result of a successful verification: how the key is vouched for, and where to send
/// the pass.
#[derive(Debug, Clone)]
pub struct Verified {
    /// `ek-cert` or `ek-allowlist`.
    pub att: Attestation,
    /// The EK to encrypt the credential to.
    pub ek: RsaPublicKey,
    /// The AK's name, which the credential is bound to.
    pub ak_name: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// X.509 EK certificate chains

/// Parses PEM text holding one or more certificates.
pub fn parse_pem_certificates(text: &str) -> Result<Vec<Certificate>, String> {
    Certificate::load_pem_chain(text.as_bytes()).map_err(|e| format!("not PEM certificates: {e}"))
}

fn verify_signed_by(cert: &Certificate, issuer: &Certificate) -> Result<(), String> {
    let tbs = cert.tbs_certificate.to_der().map_err(|e| e.to_string())?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or("signature has unused bits")?;
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?;
    let oid = cert.signature_algorithm.oid.to_string();
    let bad = |_| "signature does not verify".to_string();
    match oid.as_str() {
        "1.2.840.113549.1.1.11" | "1.2.840.113549.1.1.12" | "1.2.840.113549.1.1.13" => {
            let key =
                RsaPublicKey::from_public_key_der(&spki).map_err(|_| "issuer key is not RSA")?;
            let sig = pkcs1v15::Signature::try_from(sig).map_err(|_| "bad RSA signature")?;
            match oid.as_str() {
                "1.2.840.113549.1.1.11" => pkcs1v15::VerifyingKey::<Sha256>::new(key)
                    .verify(&tbs, &sig)
                    .map_err(bad),
                "1.2.840.113549.1.1.12" => pkcs1v15::VerifyingKey::<Sha384>::new(key)
                    .verify(&tbs, &sig)
                    .map_err(bad),
                _ => pkcs1v15::VerifyingKey::<Sha512>::new(key)
                    .verify(&tbs, &sig)
                    .map_err(bad),
            }
        }
        "1.2.840.10045.4.3.2" => {
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
                .map_err(|_| "issuer key is not P-256")?;
            let sig = p256::ecdsa::Signature::from_der(sig).map_err(|_| "bad ECDSA signature")?;
            key.verify_prehash(&Sha256::digest(&tbs), &sig).map_err(bad)
        }
        "1.2.840.10045.4.3.3" => {
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(&spki)
                .map_err(|_| "issuer key is not P-384")?;
            let sig = p384::ecdsa::Signature::from_der(sig).map_err(|_| "bad ECDSA signature")?;
            key.verify_prehash(&Sha384::digest(&tbs), &sig).map_err(bad)
        }
        other => Err(format!("unsupported signature algorithm {other}")),
    }
}

fn check_validity(cert: &Certificate, now: i64) -> Result<(), String> {
    let v = &cert.tbs_certificate.validity;
    let secs = |t: x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
    if now < secs(v.not_before) || now > secs(v.not_after) {
        return Err(format!(
            "certificate {} is not valid now",
            cert.tbs_certificate.subject
        ));
    }
    Ok(())
}

/// Verifies that `ek_cert` chains, through the configured certificates, to a self-signed
/// configured root, every certificate valid at `now`.
fn verify_chain(ek_cert: &Certificate, trusted: &[Certificate], now: i64) -> Result<(), String> {
    if trusted.is_empty() {
        return Err("no EK roots are configured ([attestation] ek_roots)".into());
    }
    check_validity(ek_cert, now)?;
    let mut current = ek_cert;
    for _ in 0..4 {
        let issuer = trusted
            .iter()
            .filter(|c| c.tbs_certificate.subject == current.tbs_certificate.issuer)
            .find(|c| verify_signed_by(current, c).is_ok())
            .ok_or_else(|| {
                format!(
                    "no trusted CA certificate signed {}",
                    current.tbs_certificate.subject
                )
            })?;
        check_validity(issuer, now)?;
        if issuer.tbs_certificate.subject == issuer.tbs_certificate.issuer {
            return Ok(());
        }
        current = issuer;
    }
    Err("the chain is longer than 4 certificates".into())
}

// ---------------------------------------------------------------------------------------------

/// Verifies evidence for a request signed by `jwk`.
pub fn verify(
    ev: &EvidenceClaims,
    jwk: &Jwk,
    policy: &AttestationPolicy,
    now: i64,
) -> Result<Verified, AttestError> {
    let field = |s: &str, what| b64url_decode(s).ok_or(AttestError::Malformed(what));

    // The endorsement key, and how it is vouched for.
    let (att, ek) = match (&ev.ekc, &ev.ekp) {
        (Some(der), None) => {
            let der = field(der, "EK certificate encoding")?;
            let cert = Certificate::from_der(&der)
                .map_err(|_| AttestError::Malformed("EK certificate is not DER X.509"))?;
            verify_chain(&cert, &policy.roots, now).map_err(AttestError::UntrustedEk)?;
            let spki = cert
                .tbs_certificate
                .subject_public_key_info
                .to_der()
                .map_err(|_| AttestError::Malformed("EK certificate key"))?;
            let ek = RsaPublicKey::from_public_key_der(&spki)
                .map_err(|_| AttestError::Malformed("EK certificate key is not RSA"))?;
            (Attestation::EkCert, ek)
        }
        (None, Some(public)) => {
            let public = parse_public(&field(public, "EK public encoding")?)?;
            let name = hex::encode(&public.name);
            if !policy
                .allowlist
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&name))
            {
                return Err(AttestError::NotAllowListed(name));
            }
            let (modulus, exponent) = public.rsa.ok_or(AttestError::Malformed("EK is not RSA"))?;
            let ek = credential::rsa_ek(&modulus, Some(exponent))
                .map_err(|e| AttestError::Credential(e.to_string()))?;
            (Attestation::EkAllowlist, ek)
        }
        _ => {
            return Err(AttestError::Malformed(
                "give exactly one of an EK certificate or an EK public key",
            ))
        }
    };

    // The attestation key: restricted, so its signature over a TPM_GENERATED structure means
    // the TPM made that structure.
    let ak = parse_public(&field(&ev.ak, "AK public encoding")?)?;
    let ak_ok = has(
        ak.attributes,
        attr::RESTRICTED | attr::SIGN | attr::FIXED_TPM | attr::FIXED_PARENT,
    ) && !has(ak.attributes, attr::DECRYPT);
    let (ak_x, ak_y) = match (ak_ok, ak.ecc) {
        (true, Some(point)) => point,
        _ => return Err(AttestError::BadAk),
    };
    let ak_key = p256::ecdsa::VerifyingKey::from_encoded_point(
        &p256::EncodedPoint::from_affine_coordinates(&ak_x.into(), &ak_y.into(), false),
    )
    .map_err(|_| AttestError::Malformed("AK point"))?;

    // The certification and its signature.
    let certify_bytes = field(&ev.cert, "certification encoding")?;
    let sig = field(&ev.sig, "certification signature encoding")?;
    let certify = parse_certify(&certify_bytes)?;
    let sig =
        p256::ecdsa::Signature::from_slice(&sig).map_err(|_| AttestError::BadCertifySignature)?;
    ak_key
        .verify_prehash(&Sha256::digest(&certify_bytes), &sig)
        .map_err(|_| AttestError::BadCertifySignature)?;
    if certify.extra_data != qualifying_data(&jwk.thumbprint()) {
        return Err(AttestError::WrongQualifyingData);
    }

    // The device key: the certified object, created in the TPM, and the request's key.
    let key = match &ev.key {
        Some(k) => parse_public(&field(k, "key public encoding")?)?,
        None => parse_public(&device_key_public(jwk))?,
    };
    if certify.certified_name != key.name.as_slice() {
        return Err(AttestError::NameMismatch);
    }
    let resident = attr::FIXED_TPM | attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN | attr::SIGN;
    if !has(key.attributes, resident) || has(key.attributes, attr::DECRYPT) {
        return Err(AttestError::KeyNotInTpm);
    }
    let point = jwk.verifying_key().to_encoded_point(false);
    match key.ecc {
        Some((x, y))
            if point.x().map(|v| &v[..]) == Some(&x[..])
                && point.y().map(|v| &v[..]) == Some(&y[..]) => {}
        _ => return Err(AttestError::KeyMismatch),
    }
    Ok(Verified {
        att,
        ek,
        ak_name: ak.name,
    })
}

/// Seals `pass` so that only the attested TPM, with the attested AK, can open it
/// ([`crate::core::delivery`]).
pub fn seal_delivery(pass: &str, to: &Verified) -> Result<String, AttestError> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut key[..])
        .map_err(|_| AttestError::Credential("no randomness".into()))?;
    let MadeCredential {
        id_object,
        encrypted_secret,
    } = credential::make_credential(&to.ek, &to.ak_name, &key[..])
        .map_err(|e| AttestError::Credential(e.to_string()))?;
    delivery::seal(pass, &key, &id_object, &encrypted_secret)
        .map_err(|e| AttestError::Credential(e.to_string()))
}
