//! Issuer-side verification of TPM attestation evidence, and the sealed delivery of a pass to
//! the attested TPM. Pure: TPM wire structures come from [`crate::core::tpm_wire`], X.509 path
//! validation from rustls-webpki (`ek_cert`), every other primitive from RustCrypto; no TPM is
//! needed on the issuer.
//!
//! What a verified request proves: the device key named in the request is a fixedTPM,
//! fixedParent, sensitiveDataOrigin signing key (`TPM2_Certify` by an attestation key whose
//! attributes say it is a restricted, fixedTPM signing key), and the pass delivered with
//! `TPM2_MakeCredential` can only be opened by the TPM holding the endorsement key that a
//! trusted manufacturer CA certified (`ek-cert`: an RSA 2048, ECC P-256 or ECC P-384 EK whose
//! certificate chains to a configured root and meets the TCG EK profile) or that the admin
//! allow-listed (`ek-allowlist`), and only with that attestation key loaded.

mod ek_cert;

use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use sha2::{Digest as _, Sha256};
use x509_cert::Certificate;
use zeroize::Zeroizing;

pub use self::ek_cert::{display_name, normalize_manufacturer, CertRef, EkCertError, TpmIdentity};
use super::credential::{self, EkPublic, MadeCredential};
use crate::core::b64::b64url_decode;
use crate::core::claims::{
    Attestation, EvidenceClaims, MAX_EK_INTERMEDIATES, MAX_EVIDENCE_CERT_LEN,
};
use crate::core::delivery;
use crate::core::jwk::Jwk;
use crate::core::tpm_wire::{
    attr, device_key_public, has, parse_certify, parse_public, qualifying_data, EkKind, WireError,
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
    /// The EK certificate was refused: the certificate and the rule it breaks.
    #[error(transparent)]
    EkCertificate(#[from] EkCertError),
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

/// What the issuer trusts (`[attestation]` in the config).
#[derive(Debug, Clone, Default)]
pub struct AttestationPolicy {
    /// Refuse `tpm` requests without evidence.
    pub require: bool,
    /// Trust anchors: TPM manufacturers' self-signed root CA certificates (`ek_roots`).
    pub roots: Vec<Certificate>,
    /// CA certificates that may help build a path from an EK certificate to a root
    /// (`ek_intermediates`): never trusted by themselves.
    pub intermediates: Vec<Certificate>,
    /// Allowed EK names (hex of nameAlg ‖ SHA-256(TPMT_PUBLIC)), for TPMs without a certificate.
    pub allowlist: Vec<String>,
    /// Accept EK certificates without an extended key usage extension (some vendors omit
    /// tcg-kp-EKCertificate); one with an EKU that lacks it is refused regardless.
    pub allow_missing_ek_eku: bool,
    /// TPM manufacturers allowed (`id:` and 8 upper-case hex digits, as the config normalizes
    /// them); empty allows every manufacturer a root vouches for.
    pub manufacturers: Vec<String>,
}

impl AttestationPolicy {
    /// Whether the admin configured any way to trust an EK. An issuer that did not (and does
    /// not require attestation) ignores evidence and issues `att: none` passes as before.
    pub fn configured(&self) -> bool {
        self.require || !self.roots.is_empty() || !self.allowlist.is_empty()
    }
}

/// The result of a successful verification: how the key is vouched for, what the EK
/// certificate says about the TPM, and where to send the pass.
#[derive(Debug, Clone)]
pub struct Verified {
    /// `ek-cert` or `ek-allowlist`.
    pub att: Attestation,
    /// The EK to encrypt the credential to.
    pub ek: EkPublic,
    /// The AK's name, which the credential is bound to.
    pub ak_name: Vec<u8>,
    /// The TPM's manufacturer, model and firmware version from the EK certificate's
    /// subjectAltName (`ek-cert` only), for the audit record and the review page.
    pub tpm: Option<TpmIdentity>,
    /// The validated path above the EK certificate (`ek-cert` only): the subjects of the
    /// intermediates, then of the trust anchor.
    pub chain: Vec<String>,
}

impl Verified {
    /// The kind of endorsement key the pass is sealed to.
    pub fn ek_kind(&self) -> EkKind {
        self.ek.kind()
    }
}

/// Parses PEM text holding one or more certificates.
pub fn parse_pem_certificates(text: &str) -> Result<Vec<Certificate>, String> {
    Certificate::load_pem_chain(text.as_bytes()).map_err(|e| format!("not PEM certificates: {e}"))
}

/// Checks a certificate configured in `ek_roots` (see [`ek_cert`]): a CA certificate that may
/// sign certificates.
pub fn check_anchor(cert: &Certificate) -> Result<(), String> {
    ek_cert::check_anchor(cert)
}

/// Whether a certificate is self-issued (subject = issuer): a root, not an intermediate.
pub fn is_self_issued(cert: &Certificate) -> bool {
    ek_cert::is_self_issued(cert)
}

/// Verifies evidence for a request signed by `jwk`.
pub fn verify(
    ev: &EvidenceClaims,
    jwk: &Jwk,
    policy: &AttestationPolicy,
    now: i64,
) -> Result<Verified, AttestError> {
    let field = |s: &str, what| b64url_decode(s).ok_or(AttestError::Malformed(what));

    // The endorsement key, and how it is vouched for.
    let (att, ek, tpm, chain) = match (&ev.ekc, &ev.ekp) {
        (Some(der), None) => {
            let der = field(der, "EK certificate encoding")?;
            let carried = carried_intermediates(ev)?;
            if der.len() > MAX_EVIDENCE_CERT_LEN {
                return Err(EkCertError::Malformed {
                    cert: CertRef::Ek,
                    detail: format!("{} bytes, more than {MAX_EVIDENCE_CERT_LEN}", der.len()),
                }
                .into());
            }
            let facts = ek_cert::verify_ek_certificate(
                &der,
                &carried,
                ek_cert::EkPolicy {
                    roots: &policy.roots,
                    intermediates: &policy.intermediates,
                    allow_missing_eku: policy.allow_missing_ek_eku,
                    manufacturers: &policy.manufacturers,
                },
                now,
            )?;
            (Attestation::EkCert, facts.key, Some(facts.tpm), facts.chain)
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
            if ev.eki.is_some() {
                return Err(AttestError::Malformed(
                    "CA certificates come with an EK certificate only",
                ));
            }
            let (modulus, exponent) = public.rsa.ok_or(AttestError::Malformed("EK is not RSA"))?;
            let ek = credential::rsa_ek(&modulus, Some(exponent))
                .map_err(|e| AttestError::Credential(e.to_string()))?;
            (
                Attestation::EkAllowlist,
                EkPublic::Rsa2048(ek),
                None,
                Vec::new(),
            )
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
        tpm,
        chain,
    })
}

/// The CA certificates a request carries, decoded and bounded.
fn carried_intermediates(ev: &EvidenceClaims) -> Result<Vec<Vec<u8>>, AttestError> {
    let Some(list) = &ev.eki else {
        return Ok(Vec::new());
    };
    if list.len() > MAX_EK_INTERMEDIATES {
        return Err(EkCertError::TooManyIntermediates {
            count: list.len(),
            max: MAX_EK_INTERMEDIATES,
        }
        .into());
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let der = b64url_decode(c).ok_or(AttestError::Malformed("CA certificate encoding"))?;
            if der.len() > MAX_EVIDENCE_CERT_LEN {
                return Err(EkCertError::Malformed {
                    cert: CertRef::Intermediate {
                        subject: format!("#{} carried by the request", i + 1),
                    },
                    detail: format!("{} bytes, more than {MAX_EVIDENCE_CERT_LEN}", der.len()),
                }
                .into());
            }
            Ok(der)
        })
        .collect()
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
