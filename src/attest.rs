//! Issuer-side verification of TPM attestation evidence, and the sealed delivery of a pass to
//! the attested TPM. Pure: parses TPM wire structures itself (TPM 2.0 Part 2) and uses
//! RustCrypto for every primitive; no TPM is needed on the issuer.
//!
//! What a verified request proves: the device key named in the request is a fixedTPM,
//! fixedParent, sensitiveDataOrigin signing key (`TPM2_Certify` by an attestation key whose
//! attributes say it is a restricted, fixedTPM signing key), and the pass delivered with
//! `TPM2_MakeCredential` can only be opened by the TPM holding the endorsement key that a
//! trusted manufacturer CA certified (`ek-cert`) or that the admin allow-listed
//! (`ek-allowlist`), and only with that attestation key loaded.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use rsa::pkcs1v15;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use rsa::RsaPublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use x509_cert::der::{Decode as _, Encode as _};
use x509_cert::Certificate;
use zeroize::Zeroizing;

use crate::credential::{self, MadeCredential};
use crate::token::{b64url, b64url_decode, Attestation, Jwk};

/// Why evidence was refused. Each is a distinct, clear refusal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    /// AK TPMT_PUBLIC.
    pub ak: String,
    /// Device key TPMT_PUBLIC; absent when it is exactly [`device_key_public`] of the
    /// request's key (the usual case), which keeps requests small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// TPMS_ATTEST of TPM2_Certify.
    pub cert: String,
    /// AK signature over it, r‖s.
    pub sig: String,
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

/// The TPMT_PUBLIC of an hwpass TPM device key with this public point: ECC P-256,
/// ECDSA-SHA256, nameAlg SHA-256, `fixedTPM | fixedParent | sensitiveDataOrigin |
/// userWithAuth | noDA | sign`, no auth policy (the template in `tpm`).
pub fn device_key_public(jwk: &Jwk) -> Vec<u8> {
    let point = jwk.verifying_key().to_encoded_point(false);
    let attributes = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::USER_WITH_AUTH
        | attr::NO_DA
        | attr::SIGN;
    let mut out = Vec::with_capacity(88);
    for v in [TPM_ALG_ECC, TPM_ALG_SHA256] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&attributes.to_be_bytes());
    // authPolicy (empty), symmetric NULL, scheme ECDSA/SHA-256, curve P-256, kdf NULL.
    for v in [
        0,
        TPM_ALG_NULL,
        TPM_ALG_ECDSA,
        TPM_ALG_SHA256,
        TPM_ECC_NIST_P256,
        TPM_ALG_NULL,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for coordinate in [point.x(), point.y()] {
        out.extend_from_slice(&32u16.to_be_bytes());
        // Invariant: an uncompressed point has both 32-byte coordinates.
        out.extend_from_slice(coordinate.map(|c| &c[..]).unwrap_or(&[0u8; 32]));
    }
    out
}

/// The certify qualifying data for a device key: binds the evidence to this request's key.
pub fn qualifying_data(jkt: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"hwpass-certify-v1:")
        .chain_update(jkt.as_bytes())
        .finalize()
        .into()
}

// ---------------------------------------------------------------------------------------------
// TPM 2.0 Part 2 structures

const TPM_ALG_RSA: u16 = 0x0001;
const TPM_ALG_SHA256: u16 = 0x000b;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ECC_NIST_P256: u16 = 0x0003;
const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;

/// TPMA_OBJECT bits (Part 2 §8.3).
mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const NO_DA: u32 = 1 << 10;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AttestError> {
        if self.b.len() < n {
            return Err(AttestError::Malformed("TPM structure is truncated"));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, AttestError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, AttestError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], AttestError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn alg_with_param(&mut self) -> Result<(u16, Option<u16>), AttestError> {
        let alg = self.u16()?;
        Ok((
            alg,
            if alg == TPM_ALG_NULL {
                None
            } else {
                Some(self.u16()?)
            },
        ))
    }
    fn end(&self) -> Result<(), AttestError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(AttestError::Malformed("TPM structure has trailing bytes"))
        }
    }
}

/// The parts of a TPMT_PUBLIC hwpass looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TpmPublic {
    attributes: u32,
    /// ECC P-256 ECDSA-SHA256 key: its point.
    ecc: Option<([u8; 32], [u8; 32])>,
    /// RSA key: modulus and exponent.
    rsa: Option<(Vec<u8>, u32)>,
    /// nameAlg ‖ SHA-256(TPMT_PUBLIC).
    name: Vec<u8>,
}

fn parse_public(bytes: &[u8]) -> Result<TpmPublic, AttestError> {
    let mut r = Reader { b: bytes };
    let kind = r.u16()?;
    if r.u16()? != TPM_ALG_SHA256 {
        return Err(AttestError::Malformed("object nameAlg is not SHA-256"));
    }
    let attributes = r.u32()?;
    r.tpm2b()?; // authPolicy
    let mut out = TpmPublic {
        attributes,
        ecc: None,
        rsa: None,
        name: Vec::new(),
    };
    // symmetric: algorithm, then keyBits and mode unless NULL.
    let sym = r.u16()?;
    if sym != TPM_ALG_NULL {
        r.u16()?;
        r.u16()?;
    }
    match kind {
        TPM_ALG_ECC => {
            let scheme = r.alg_with_param()?;
            let curve = r.u16()?;
            r.alg_with_param()?; // kdf
            let x = r.tpm2b()?;
            let y = r.tpm2b()?;
            if curve == TPM_ECC_NIST_P256
                && matches!(scheme, (TPM_ALG_ECDSA, Some(TPM_ALG_SHA256)))
                && x.len() <= 32
                && y.len() <= 32
            {
                let pad = |v: &[u8]| {
                    let mut a = [0u8; 32];
                    a[32 - v.len()..].copy_from_slice(v);
                    a
                };
                out.ecc = Some((pad(x), pad(y)));
            }
        }
        TPM_ALG_RSA => {
            r.alg_with_param()?; // scheme
            r.u16()?; // keyBits
            let exponent = r.u32()?;
            let modulus = r.tpm2b()?;
            out.rsa = Some((modulus.to_vec(), exponent));
        }
        _ => return Err(AttestError::Malformed("object is neither ECC nor RSA")),
    }
    r.end()?;
    out.name = [
        &TPM_ALG_SHA256.to_be_bytes()[..],
        &Sha256::digest(bytes)[..],
    ]
    .concat();
    Ok(out)
}

/// The parts of a TPMS_ATTEST for TPM2_Certify hwpass checks.
struct CertifyInfo<'a> {
    extra_data: &'a [u8],
    certified_name: &'a [u8],
    clock: TpmClock,
}

/// TPMS_CLOCK_INFO as a TPM signed it. For keys outside the endorsement hierarchy the TPM
/// obfuscates `reset_count` and `restart_count`, consistently for one key, so they can be
/// compared between two certifications by the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmClock {
    /// Milliseconds the TPM has been powered, kept across resets.
    pub clock: u64,
    /// TPM resets (reboots), obfuscated.
    pub reset_count: u32,
    /// TPM restarts (resume from hibernation), obfuscated.
    pub restart_count: u32,
}

fn parse_certify(bytes: &[u8]) -> Result<CertifyInfo<'_>, AttestError> {
    let mut r = Reader { b: bytes };
    if r.u32()? != TPM_GENERATED_VALUE {
        return Err(AttestError::BadCertify("magic is not TPM_GENERATED_VALUE"));
    }
    if r.u16()? != TPM_ST_ATTEST_CERTIFY {
        return Err(AttestError::BadCertify("type is not TPM_ST_ATTEST_CERTIFY"));
    }
    r.tpm2b()?; // qualifiedSigner
    let extra_data = r.tpm2b()?;
    let clock = r.take(8)?;
    let clock = TpmClock {
        clock: u64::from_be_bytes(
            clock
                .try_into()
                .map_err(|_| AttestError::Malformed("clock"))?,
        ),
        reset_count: r.u32()?,
        restart_count: r.u32()?,
    };
    r.take(1)?; // safe
    r.take(8)?; // firmwareVersion
    let certified_name = r.tpm2b()?;
    r.tpm2b()?; // qualifiedName
    r.end()?;
    Ok(CertifyInfo {
        extra_data,
        certified_name,
        clock,
    })
}

fn has(attributes: u32, bits: u32) -> bool {
    attributes & bits == bits
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

/// Checks a TPM2_Certify of the device key by itself over a fresh `challenge`: a proof that
/// the TPM holding `jwk`'s key signed just now, which also carries the TPM's clock.
pub fn verify_self_certify(
    certify_bytes: &[u8],
    signature: &p256::ecdsa::Signature,
    jwk: &Jwk,
    challenge: &[u8],
) -> Result<TpmClock, AttestError> {
    jwk.verifying_key()
        .verify_prehash(&Sha256::digest(certify_bytes), signature)
        .map_err(|_| AttestError::BadCertifySignature)?;
    let info = parse_certify(certify_bytes)?;
    if info.extra_data != challenge {
        return Err(AttestError::WrongQualifyingData);
    }
    if info.certified_name != parse_public(&device_key_public(jwk))?.name.as_slice() {
        return Err(AttestError::NameMismatch);
    }
    Ok(info.clock)
}

/// Prefix of a pass delivered sealed to a TPM.
pub const DELIVERY_PREFIX: &str = "hwpass-dlv1";

/// Seals `pass` so that only the attested TPM, with the attested AK, can open it:
/// `hwpass-dlv1.<ID object>.<encrypted seed>.<nonce>.<AES-256-GCM(pass)>`, one line.
pub fn seal_delivery(pass: &str, to: &Verified) -> Result<String, AttestError> {
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 12];
    getrandom::getrandom(&mut key[..])
        .map_err(|_| AttestError::Credential("no randomness".into()))?;
    getrandom::getrandom(&mut nonce)
        .map_err(|_| AttestError::Credential("no randomness".into()))?;
    let MadeCredential {
        id_object,
        encrypted_secret,
    } = credential::make_credential(&to.ek, &to.ak_name, &key[..])
        .map_err(|e| AttestError::Credential(e.to_string()))?;
    let ct = Aes256Gcm::new((&*key).into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: pass.as_bytes(),
                aad: DELIVERY_PREFIX.as_bytes(),
            },
        )
        .map_err(|_| AttestError::Credential("encryption failed".into()))?;
    Ok(format!(
        "{DELIVERY_PREFIX}.{}.{}.{}.{}",
        b64url(&id_object),
        b64url(&encrypted_secret),
        b64url(&nonce),
        b64url(&ct)
    ))
}

/// The parts of a delivery string.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// TPM2B_ID_OBJECT contents.
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents.
    pub encrypted_secret: Vec<u8>,
    nonce: [u8; 12],
    ct: Vec<u8>,
}

impl Delivery {
    /// Parses `hwpass-dlv1.…`; `None` if `text` is not a delivery.
    pub fn parse(text: &str) -> Option<Result<Self, AttestError>> {
        let rest = text.strip_prefix(DELIVERY_PREFIX)?.strip_prefix('.')?;
        let parts: Vec<&str> = rest.split('.').collect();
        let bad = AttestError::Malformed("delivery is not five dot-separated parts");
        Some((|| {
            let [a, b, c, d] = parts.as_slice() else {
                return Err(bad);
            };
            let dec = |s: &str| {
                b64url_decode(s).ok_or(AttestError::Malformed("delivery is not base64url"))
            };
            Ok(Self {
                id_object: dec(a)?,
                encrypted_secret: dec(b)?,
                nonce: dec(c)?
                    .try_into()
                    .map_err(|_| AttestError::Malformed("delivery nonce"))?,
                ct: dec(d)?,
            })
        })())
    }

    /// Opens the delivery with the credential the TPM released.
    pub fn open(&self, credential: &[u8]) -> Result<String, AttestError> {
        let key: [u8; 32] = credential
            .try_into()
            .map_err(|_| AttestError::Malformed("credential length"))?;
        let key = Zeroizing::new(key);
        let plain = Aes256Gcm::new((&*key).into())
            .decrypt(
                &Nonce::from(self.nonce),
                Payload {
                    msg: &self.ct,
                    aad: DELIVERY_PREFIX.as_bytes(),
                },
            )
            .map_err(|_| {
                AttestError::Malformed("delivery does not decrypt with the released credential")
            })?;
        String::from_utf8(plain).map_err(|_| AttestError::Malformed("delivered pass is not text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_key_public_parses_back_to_its_point_and_attributes() {
        let key = crate::keys::MemoryKey::generate();
        let jwk = Jwk::new(*crate::keys::KeyBackend::verifying_key(&key));
        let bytes = device_key_public(&jwk);
        let p = parse_public(&bytes).unwrap();
        assert_eq!(
            p.attributes, 0x0004_0472,
            "the attributes tpm2_readpublic shows for hwpass keys"
        );
        let point = jwk.verifying_key().to_encoded_point(false);
        assert_eq!(
            p.ecc.map(|(x, _)| x.to_vec()),
            point.x().map(|x| x.to_vec())
        );
        assert_eq!(p.name.len(), 34);
    }

    #[test]
    fn malformed_structures_are_refused() {
        assert!(parse_public(&[]).is_err());
        let key = crate::keys::MemoryKey::generate();
        let mut bytes = device_key_public(&Jwk::new(*crate::keys::KeyBackend::verifying_key(&key)));
        bytes.push(0);
        assert_eq!(
            parse_public(&bytes).unwrap_err(),
            AttestError::Malformed("TPM structure has trailing bytes")
        );
        assert!(matches!(
            parse_certify(&[0xff, 0x54, 0x43, 0x47, 0x80, 0x18]),
            Err(AttestError::BadCertify(_))
        ));
        assert!(matches!(
            parse_certify(&[0, 0, 0, 0]),
            Err(AttestError::BadCertify(_))
        ));
        assert!(Delivery::parse("hwpass-dlv1.a.b").unwrap().is_err());
        assert!(Delivery::parse("eyJhbGciOi").is_none());
    }
}
