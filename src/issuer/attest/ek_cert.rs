//! EK certificates validated by the book.
//!
//! - **Path validation** (RFC 5280 §6) is rustls-webpki's: signatures (RSA PKCS#1 v1.5 and
//!   PSS, ECDSA P-256/P-384, through *ring*), validity at `now` (GeneralizedTime, so the EK
//!   profile's `99991231235959Z` "no expiry" notAfter is an ordinary date), basicConstraints
//!   `cA` on every issuer, pathLenConstraint, name chaining, and unknown critical extensions
//!   refused. Only the configured `ek_roots` are trust anchors; configured `ek_intermediates`
//!   and the certificates a request carries are a pool to build paths from, never trusted by
//!   themselves.
//! - **What webpki leaves out, added here:** keyUsage. webpki ignores the extension
//!   ("BasicConstraints.cA makes KeyUsage redundant"); RFC 5280 §6.1.4 (n) requires
//!   keyCertSign on an issuer that has the extension, so every intermediate of the path found
//!   is checked (anchors are checked when the config is loaded).
//! - **The TCG EK Credential Profile** (2.x, §3.2): the extended key usage
//!   `tcg-kp-EKCertificate` (2.23.133.8.1) must be present on the EK certificate (webpki's
//!   `KeyUsage::required_if_present` refuses an EKU without it on any certificate of the
//!   path, so intermediates with an EKU must allow it too; presence on the EK certificate is
//!   checked here, unless the admin sets `allow_missing_ek_eku`); the subjectAltName's
//!   directoryName carries the TPM manufacturer (2.23.133.2.1), model (2.23.133.2.2) and
//!   firmware version (2.23.133.2.3), all three required.
//! - **The profile's quirks**, checked against swtpm_setup's certificates and the tests'
//!   own: an empty subject is fine (webpki never reads it for an end entity; chaining uses
//!   the issuer field); the critical subjectAltName with a directoryName is an extension
//!   webpki understands, and it only looks inside it for name constraints, which EK CAs do
//!   not set; the RSA EK's keyUsage of keyEncipherment alone (keyAgreement for an ECC EK) is
//!   not read for an end entity, and hwpass only encrypts to the key, as the profile intends.
//!
//! A refusal names the certificate and the rule it breaks. webpki reports the rule; which
//! certificate broke it is found afterwards by following the names from the EK certificate
//! through the pool (a diagnosis only: the decision is webpki's).

use std::cell::RefCell;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use serde::Serialize;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::referenced::OwnedToRef as _;
use x509_cert::der::{Decode as _, Encode as _, Tag, Tagged as _};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::Certificate;

use crate::core::time::format_time;
use crate::issuer::credential::{rsa_ek, EkPublic};

/// `tcg-kp-EKCertificate` (TCG EK Credential Profile §3.2.16).
pub const TCG_KP_EK_CERTIFICATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.8.1");
/// Its DER contents (the OID without tag and length), as webpki compares them.
const TCG_KP_EK_CERTIFICATE_DER: &[u8] = &[0x67, 0x81, 0x05, 0x08, 0x01];
/// `tcg-at-tpmManufacturer` (TCG EK Credential Profile §3.1.2).
pub const TCG_AT_TPM_MANUFACTURER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.2.1");
/// `tcg-at-tpmModel`.
pub const TCG_AT_TPM_MODEL: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.2.2");
/// `tcg-at-tpmVersion`.
pub const TCG_AT_TPM_VERSION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.2.3");

const ID_CE_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const ID_CE_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const ID_CE_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const ID_CE_NAME_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.30");
const ID_CE_CRL_DISTRIBUTION_POINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.31");
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// The extensions webpki understands (and so accepts marked critical); any other critical
/// extension is refused (`webpki::Error::UnsupportedCriticalExtension`).
const UNDERSTOOD: [ObjectIdentifier; 6] = [
    ID_CE_KEY_USAGE,
    ID_CE_SUBJECT_ALT_NAME,
    ID_CE_BASIC_CONSTRAINTS,
    ID_CE_NAME_CONSTRAINTS,
    ID_CE_CRL_DISTRIBUTION_POINTS,
    ID_CE_EXT_KEY_USAGE,
];

/// Signature algorithms accepted on certificates of an EK chain.
static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// The TPM an EK certificate describes: the TPM attributes of its subjectAltName
/// directoryName (TCG EK Credential Profile §3.2.9), as the certificate spells them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TpmIdentity {
    /// `tcg-at-tpmManufacturer`: "id:" and the TCG vendor ID in hex, e.g. `id:494E5443`.
    pub manufacturer: String,
    /// `tcg-at-tpmModel`: the vendor's model name.
    pub model: String,
    /// `tcg-at-tpmVersion`: "id:" and the firmware version in hex.
    pub version: String,
}

impl TpmIdentity {
    /// The vendor ID as ASCII when it is printable (`id:494E5443` → `INTC`, `id:49465800` →
    /// `IFX`), the short name of the TCG Vendor ID Registry.
    pub fn vendor(&self) -> Option<String> {
        let hex = self.manufacturer.strip_prefix("id:")?;
        let bytes = hex::decode(hex).ok()?;
        let text: String = bytes
            .iter()
            .filter(|&&b| b != 0)
            .map(|&b| b as char)
            .collect();
        (!text.is_empty() && text.chars().all(|c| c.is_ascii_graphic())).then_some(text)
    }
}

/// Normalizes a manufacturer as the config lists it: `id:` and 8 hex digits, upper case.
pub fn normalize_manufacturer(value: &str) -> Option<String> {
    let hex = value.trim().strip_prefix("id:")?;
    (hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("id:{}", hex.to_ascii_uppercase()))
}

/// Which certificate of a chain a refusal is about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertRef {
    /// The EK certificate.
    Ek,
    /// A CA certificate below the anchor (configured or carried by the request).
    Intermediate {
        /// Its subject (RFC 4514, control characters replaced).
        subject: String,
    },
    /// A self-signed certificate that is not one of the configured anchors.
    Root {
        /// Its subject.
        subject: String,
    },
}

impl std::fmt::Display for CertRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ek => f.write_str("the EK certificate"),
            Self::Intermediate { subject } => write!(f, "intermediate '{subject}'"),
            Self::Root { subject } => write!(f, "root '{subject}'"),
        }
    }
}

/// Why an EK certificate was refused: the certificate and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EkCertError {
    /// No trust anchors are configured.
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: no EK roots are configured ([attestation] ek_roots)")]
    NoAnchors,
    /// A certificate is not DER X.509, or too large.
    #[error("the EK certificate chain is malformed: {cert}: {detail}")]
    Malformed {
        /// Which certificate.
        cert: CertRef,
        /// What is wrong.
        detail: String,
    },
    /// The request carries more CA certificates than allowed.
    #[error("the request carries {count} CA certificates for its EK chain, more than {max}")]
    TooManyIntermediates {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An issuer in the path is not a CA (basicConstraints cA is absent or FALSE).
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: {cert} is not a CA (basicConstraints cA is not TRUE)")]
    NotCa {
        /// Which certificate.
        cert: CertRef,
    },
    /// An issuer in the path has a keyUsage without keyCertSign.
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: {cert} may not sign certificates (its keyUsage lacks keyCertSign)")]
    NoKeyCertSign {
        /// Which certificate.
        cert: CertRef,
    },
    /// A pathLenConstraint is exceeded.
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: {cert} allows {allowed} CA certificates below it (pathLenConstraint), the chain has {below}")]
    PathLength {
        /// The certificate whose constraint is exceeded.
        cert: CertRef,
        /// Its pathLenConstraint.
        allowed: u8,
        /// CA certificates below it in the chain.
        below: usize,
    },
    /// A certificate is outside its validity period.
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: {cert} {}", validity_text(*.not_before, *.not_after, *.now))]
    Validity {
        /// Which certificate.
        cert: CertRef,
        /// Its notBefore, Unix seconds.
        not_before: i64,
        /// Its notAfter, Unix seconds.
        not_after: i64,
        /// The time of the check.
        now: i64,
    },
    /// A critical extension the validator does not understand.
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: {cert} has an unknown critical extension {oid}")]
    UnknownCriticalExtension {
        /// Which certificate.
        cert: CertRef,
        /// The extension's OID.
        oid: ObjectIdentifier,
    },
    /// A signature does not verify with the issuer's key.
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: the signature on {cert} does not verify with the key of '{issuer}'")]
    BadSignature {
        /// The signed certificate.
        cert: CertRef,
        /// The certificate whose key was tried.
        issuer: String,
    },
    /// A signature algorithm that is not accepted (SHA-1, an unknown OID, a key that does
    /// not match it).
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: {cert} is signed with an algorithm hwpass does not accept ({detail})")]
    UnsupportedSignature {
        /// Which certificate.
        cert: CertRef,
        /// The algorithm, as webpki describes it.
        detail: String,
    },
    /// The chain ends at a self-signed certificate that is not a configured anchor.
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: {cert} is not one of the configured EK roots (only ek_roots are trusted)")]
    UntrustedRoot {
        /// The root.
        cert: CertRef,
    },
    /// No configured or carried certificate issued the top of the chain.
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: no configured root or intermediate is the issuer '{issuer}' of {cert}")]
    UnknownIssuer {
        /// The highest certificate reached.
        cert: CertRef,
        /// Its issuer's name.
        issuer: String,
    },
    /// The EK certificate is a CA certificate.
    #[error("the EK certificate is a CA certificate (basicConstraints cA is TRUE)")]
    EkIsCa,
    /// A certificate's extended key usage excludes tcg-kp-EKCertificate.
    #[error("the EK certificate breaks the TCG EK profile: the extended key usage of {cert} does not include tcg-kp-EKCertificate (2.23.133.8.1)")]
    WrongEku {
        /// Which certificate.
        cert: CertRef,
    },
    /// The EK certificate has no extended key usage extension.
    #[error("the EK certificate breaks the TCG EK profile: it has no extended key usage tcg-kp-EKCertificate (2.23.133.8.1) ([attestation] allow_missing_ek_eku allows that for vendors known to omit it)")]
    MissingEku,
    /// A TPM attribute is missing from the subjectAltName.
    #[error("the EK certificate breaks the TCG EK profile: its subjectAltName has no {0} (TPM manufacturer, model and version are required)")]
    MissingTpmAttribute(&'static str),
    /// A TPM attribute is repeated or not a printable string.
    #[error("the EK certificate breaks the TCG EK profile: its {0} attribute is repeated, too long or not printable text")]
    BadTpmAttribute(&'static str),
    /// The TPM manufacturer is not on the configured list.
    #[error("the EK certificate's TPM manufacturer {manufacturer} is not among the allowed manufacturers ([attestation] manufacturers)")]
    ManufacturerNotAllowed {
        /// The manufacturer the certificate names.
        manufacturer: String,
    },
    /// The EK is not RSA 2048, ECC P-256 or ECC P-384.
    #[error("the EK certificate's key is not a supported endorsement key (RSA 2048, ECC P-256 or ECC P-384): {0}")]
    UnsupportedKey(String),
    /// Any other path validation failure, as webpki reports it.
    #[error("the EK certificate does not chain to a trusted TPM manufacturer CA: {0}")]
    Invalid(String),
}

fn validity_text(not_before: i64, not_after: i64, now: i64) -> String {
    if now < not_before {
        format!(
            "is not valid before {} (now {})",
            format_time(not_before),
            format_time(now)
        )
    } else {
        format!(
            "expired at {} (now {})",
            format_time(not_after),
            format_time(now)
        )
    }
}

/// What a valid EK certificate tells.
#[derive(Debug, Clone)]
pub struct EkFacts {
    /// The EK to deliver to.
    pub key: EkPublic,
    /// The TPM it names.
    pub tpm: TpmIdentity,
    /// Subjects of the path above the EK certificate: intermediates, then the anchor.
    pub chain: Vec<String>,
}

/// The policy parts this module applies.
#[derive(Debug, Clone, Copy)]
pub struct EkPolicy<'a> {
    /// Trust anchors.
    pub roots: &'a [Certificate],
    /// Configured intermediates (untrusted).
    pub intermediates: &'a [Certificate],
    /// Accept an EK certificate without an EKU extension.
    pub allow_missing_eku: bool,
    /// Allowed manufacturers (normalized); empty allows all.
    pub manufacturers: &'a [String],
}

/// A subject as messages and audit records show it: RFC 4514, control characters replaced,
/// at most 200 characters.
pub fn display_name(name: &x509_cert::name::Name) -> String {
    let text = name.to_string();
    let text = if text.is_empty() {
        "(empty subject)".to_string()
    } else {
        text
    };
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect()
}

fn self_issued(cert: &Certificate) -> bool {
    cert.tbs_certificate.subject == cert.tbs_certificate.issuer
}

fn extension(cert: &Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    cert.tbs_certificate
        .extensions
        .as_deref()?
        .iter()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

fn basic_constraints(cert: &Certificate) -> Option<BasicConstraints> {
    BasicConstraints::from_der(extension(cert, ID_CE_BASIC_CONSTRAINTS)?).ok()
}

/// Whether `cert`'s keyUsage, if it has one, allows signing certificates (RFC 5280 §6.1.4 (n)).
fn may_sign_certificates(cert: &Certificate) -> bool {
    match extension(cert, ID_CE_KEY_USAGE) {
        None => true,
        Some(der) => KeyUsage::from_der(der).is_ok_and(|ku| ku.key_cert_sign()),
    }
}

fn validity(cert: &Certificate) -> (i64, i64) {
    let v = &cert.tbs_certificate.validity;
    let secs = |t: x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
    (secs(v.not_before), secs(v.not_after))
}

/// Checks a certificate configured as a trust anchor: a CA certificate whose keyUsage, if
/// any, includes keyCertSign. An anchor is trusted as it is (RFC 5280 §6.1.1 d), so this is
/// where "whatever it says about itself" is read.
pub fn check_anchor(cert: &Certificate) -> Result<(), String> {
    let name = display_name(&cert.tbs_certificate.subject);
    if !basic_constraints(cert).is_some_and(|bc| bc.ca) {
        return Err(format!(
            "'{name}' is not a CA certificate (basicConstraints cA is not TRUE)"
        ));
    }
    if !may_sign_certificates(cert) {
        return Err(format!(
            "'{name}' may not sign certificates (its keyUsage lacks keyCertSign)"
        ));
    }
    let der = cert.to_der().map_err(|e| format!("'{name}': {e}"))?;
    webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
        .map_err(|e| format!("'{name}' is not usable as a trust anchor: {e:?}"))?;
    Ok(())
}

/// Whether a configured root is self-issued (a root rather than an intermediate).
pub fn is_self_issued(cert: &Certificate) -> bool {
    self_issued(cert)
}

/// Validates `ek_der` against the policy, with `carried` (the request's CA certificates,
/// already bounded) as extra untrusted intermediates.
pub fn verify_ek_certificate(
    ek_der: &[u8],
    carried: &[Vec<u8>],
    policy: EkPolicy<'_>,
    now: i64,
) -> Result<EkFacts, EkCertError> {
    if policy.roots.is_empty() {
        return Err(EkCertError::NoAnchors);
    }
    let ek = Certificate::from_der(ek_der).map_err(|e| EkCertError::Malformed {
        cert: CertRef::Ek,
        detail: format!("not DER X.509 ({e})"),
    })?;
    let mut pool: Vec<(Certificate, Vec<u8>)> = Vec::new();
    for cert in policy.intermediates {
        let der = cert
            .to_der()
            .map_err(|e| EkCertError::Invalid(e.to_string()))?;
        pool.push((cert.clone(), der));
    }
    for (i, der) in carried.iter().enumerate() {
        let cert = Certificate::from_der(der).map_err(|e| EkCertError::Malformed {
            cert: CertRef::Intermediate {
                subject: format!("#{} carried by the request", i + 1),
            },
            detail: format!("not DER X.509 ({e})"),
        })?;
        if !pool.iter().any(|(_, d)| d == der) {
            pool.push((cert, der.clone()));
        }
    }
    let root_ders: Vec<Vec<u8>> = policy
        .roots
        .iter()
        .map(|c| c.to_der())
        .collect::<Result<_, _>>()
        .map_err(|e| EkCertError::Invalid(e.to_string()))?;
    let root_ders: Vec<CertificateDer<'_>> = root_ders
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let anchors: Vec<TrustAnchor<'_>> = root_ders
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<_, _>>()
        .map_err(|e| EkCertError::Invalid(format!("a configured root is unusable: {e:?}")))?;
    let pool_ders: Vec<CertificateDer<'_>> = pool
        .iter()
        .map(|(_, d)| CertificateDer::from(d.as_slice()))
        .collect();

    let diagnosis = Diagnosis {
        ek: &ek,
        pool: &pool,
        roots: policy.roots,
        now,
    };
    let ek_der = CertificateDer::from(ek_der);
    let end_entity =
        webpki::EndEntityCert::try_from(&ek_der).map_err(|e| diagnosis.explain(e, None))?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
    // RFC 5280 §6.1.4 (n), which webpki does not check: an issuer with a keyUsage must have
    // keyCertSign. Checked on each candidate path, so path building goes on past a bad one.
    let no_cert_sign: RefCell<Option<CertRef>> = RefCell::new(None);
    let check_key_usage = |path: &webpki::VerifiedPath<'_>| {
        for cert in path.intermediate_certificates() {
            let der = cert.der();
            let Ok(parsed) = Certificate::from_der(der.as_ref()) else {
                return Err(webpki::Error::BadDer);
            };
            if !may_sign_certificates(&parsed) {
                *no_cert_sign.borrow_mut() = Some(CertRef::Intermediate {
                    subject: display_name(&parsed.tbs_certificate.subject),
                });
                return Err(webpki::Error::UnknownIssuer);
            }
        }
        Ok(())
    };
    let path = end_entity
        .verify_for_usage(
            ALGORITHMS,
            &anchors,
            &pool_ders,
            time,
            webpki::KeyUsage::required_if_present(TCG_KP_EK_CERTIFICATE_DER),
            None,
            Some(&check_key_usage),
        )
        .map_err(|e| diagnosis.explain(e, no_cert_sign.borrow_mut().take()))?;
    let mut chain: Vec<String> = path
        .intermediate_certificates()
        .map(|c| {
            Certificate::from_der(c.der().as_ref())
                .map(|c| display_name(&c.tbs_certificate.subject))
                .unwrap_or_default()
        })
        .collect();
    let anchor_subject = path.anchor().subject.as_ref();
    chain.push(
        policy
            .roots
            .iter()
            .find(|r| {
                r.tbs_certificate
                    .subject
                    .to_der()
                    .is_ok_and(|d| d.ends_with(anchor_subject))
            })
            .map(|r| display_name(&r.tbs_certificate.subject))
            .unwrap_or_default(),
    );

    // The EK profile.
    match extension(&ek, ID_CE_EXT_KEY_USAGE) {
        Some(der) => {
            // webpki has checked that it includes the OID when present; read it again as OIDs
            // so this holds whatever the validator's mode.
            let eku = ExtendedKeyUsage::from_der(der).map_err(|_| EkCertError::Malformed {
                cert: CertRef::Ek,
                detail: "extended key usage is not DER".into(),
            })?;
            if !eku.0.contains(&TCG_KP_EK_CERTIFICATE) {
                return Err(EkCertError::WrongEku { cert: CertRef::Ek });
            }
        }
        None if policy.allow_missing_eku => {}
        None => return Err(EkCertError::MissingEku),
    }
    let tpm = tpm_identity(&ek)?;
    if !policy.manufacturers.is_empty()
        && !normalize_manufacturer(&tpm.manufacturer)
            .is_some_and(|m| policy.manufacturers.contains(&m))
    {
        return Err(EkCertError::ManufacturerNotAllowed {
            manufacturer: tpm.manufacturer,
        });
    }
    let key = ek_public(&ek)?;
    Ok(EkFacts { key, tpm, chain })
}

/// The TPM attributes of the EK certificate's subjectAltName directoryName(s).
fn tpm_identity(ek: &Certificate) -> Result<TpmIdentity, EkCertError> {
    let san = extension(ek, ID_CE_SUBJECT_ALT_NAME)
        .ok_or(EkCertError::MissingTpmAttribute("TPM manufacturer"))?;
    let san = SubjectAltName::from_der(san).map_err(|_| EkCertError::Malformed {
        cert: CertRef::Ek,
        detail: "subjectAltName is not DER".into(),
    })?;
    let mut found: [Option<String>; 3] = [None, None, None];
    const WHAT: [&str; 3] = ["TPM manufacturer", "TPM model", "TPM version"];
    for general in &san.0 {
        let GeneralName::DirectoryName(name) = general else {
            continue;
        };
        for rdn in name.0.iter() {
            for atv in rdn.0.iter() {
                let i = match atv.oid {
                    o if o == TCG_AT_TPM_MANUFACTURER => 0,
                    o if o == TCG_AT_TPM_MODEL => 1,
                    o if o == TCG_AT_TPM_VERSION => 2,
                    _ => continue,
                };
                let value = atv.value.owned_to_ref();
                // The profile says UTF8String; PrintableString and IA5String are read too.
                let text = match value.tag() {
                    Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
                        std::str::from_utf8(value.value()).ok()
                    }
                    _ => None,
                };
                let text = text
                    .filter(|t| {
                        !t.is_empty() && t.len() <= 128 && t.chars().all(|c| !c.is_control())
                    })
                    .ok_or(EkCertError::BadTpmAttribute(WHAT[i]))?;
                if found[i].replace(text.to_string()).is_some() {
                    return Err(EkCertError::BadTpmAttribute(WHAT[i]));
                }
            }
        }
    }
    let [Some(manufacturer), Some(model), Some(version)] = found else {
        let i = found.iter().position(Option::is_none).unwrap_or(0);
        return Err(EkCertError::MissingTpmAttribute(WHAT[i]));
    };
    Ok(TpmIdentity {
        manufacturer,
        model,
        version,
    })
}

/// The endorsement key in the certificate.
fn ek_public(ek: &Certificate) -> Result<EkPublic, EkCertError> {
    let spki = &ek.tbs_certificate.subject_public_key_info;
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| EkCertError::UnsupportedKey("the key has unused bits".into()))?;
    let oid = spki.algorithm.oid;
    if oid == RSA_ENCRYPTION || oid == ID_RSAES_OAEP {
        // TCG EK profile: rsaEncryption (older certificates: id-RSAES-OAEP); either way the
        // key is a PKCS#1 RSAPublicKey.
        use rsa::pkcs1::DecodeRsaPublicKey as _;
        use rsa::traits::PublicKeyParts as _;
        let key = rsa::RsaPublicKey::from_pkcs1_der(bits)
            .map_err(|_| EkCertError::UnsupportedKey("RSA key is not DER".into()))?;
        let modulus = key.n().to_bytes_be();
        let e = key.e().to_bytes_be();
        let exponent = (e.len() <= 4).then(|| e.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)));
        return rsa_ek(&modulus, exponent)
            .map(EkPublic::Rsa2048)
            .map_err(|_| EkCertError::UnsupportedKey(format!("RSA {} bits", modulus.len() * 8)));
    }
    if oid == ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        return match curve {
            Some(c) if c == SECP256R1 => p256::PublicKey::from_sec1_bytes(bits)
                .map(EkPublic::P256)
                .map_err(|_| EkCertError::UnsupportedKey("P-256 point is invalid".into())),
            Some(c) if c == SECP384R1 => p384::PublicKey::from_sec1_bytes(bits)
                .map(EkPublic::P384)
                .map_err(|_| EkCertError::UnsupportedKey("P-384 point is invalid".into())),
            Some(c) => Err(EkCertError::UnsupportedKey(format!("ECC curve {c}"))),
            None => Err(EkCertError::UnsupportedKey(
                "ECC key without a named curve".into(),
            )),
        };
    }
    Err(EkCertError::UnsupportedKey(format!("algorithm {oid}")))
}

/// Names the certificate behind a webpki refusal.
struct Diagnosis<'a> {
    ek: &'a Certificate,
    pool: &'a [(Certificate, Vec<u8>)],
    roots: &'a [Certificate],
    now: i64,
}

impl Diagnosis<'_> {
    fn name(&self, cert: &Certificate) -> CertRef {
        if std::ptr::eq(cert, self.ek) {
            return CertRef::Ek;
        }
        let subject = display_name(&cert.tbs_certificate.subject);
        if self_issued(cert) {
            CertRef::Root { subject }
        } else {
            CertRef::Intermediate { subject }
        }
    }

    /// The EK certificate, then the pool certificates found by following issuer names (the
    /// first candidate at each step), up to a self-issued one or a name nobody has.
    fn chain(&self) -> Vec<&Certificate> {
        let mut out = vec![self.ek];
        while out.len() < 8 {
            let Some(top) = out.last() else { break };
            if out.len() > 1 && self_issued(top) {
                break;
            }
            let issuer = &top.tbs_certificate.issuer;
            let next = self
                .pool
                .iter()
                .map(|(c, _)| c)
                .find(|c| &c.tbs_certificate.subject == issuer && !out.iter().any(|o| o == c));
            match next {
                Some(c) => out.push(c),
                None => break,
            }
        }
        out
    }

    /// The configured root that issued `cert`, by name.
    fn anchor_of(&self, cert: &Certificate) -> Option<&Certificate> {
        self.roots
            .iter()
            .find(|r| r.tbs_certificate.subject == cert.tbs_certificate.issuer)
    }

    fn explain(&self, e: webpki::Error, no_cert_sign: Option<CertRef>) -> EkCertError {
        use webpki::Error as W;
        if let Some(cert) = no_cert_sign {
            return EkCertError::NoKeyCertSign { cert };
        }
        let chain = self.chain();
        let issuers = || chain.iter().skip(1).copied();
        let found = match &e {
            W::CertExpired { .. } | W::CertNotValidYet { .. } | W::InvalidCertValidity => chain
                .iter()
                .find(|c| {
                    let (nb, na) = validity(c);
                    self.now < nb || self.now > na || nb > na
                })
                .map(|c| {
                    let (not_before, not_after) = validity(c);
                    EkCertError::Validity {
                        cert: self.name(c),
                        not_before,
                        not_after,
                        now: self.now,
                    }
                }),
            W::EndEntityUsedAsCa => issuers()
                .find(|c| !basic_constraints(c).is_some_and(|bc| bc.ca))
                .map(|c| EkCertError::NotCa { cert: self.name(c) }),
            W::CaUsedAsEndEntity => Some(EkCertError::EkIsCa),
            W::PathLenConstraintViolated => issuers().enumerate().find_map(|(below, c)| {
                let allowed = basic_constraints(c)?.path_len_constraint?;
                (below > usize::from(allowed)).then(|| EkCertError::PathLength {
                    cert: self.name(c),
                    allowed,
                    below,
                })
            }),
            W::UnsupportedCriticalExtension => chain
                .iter()
                .copied()
                .chain(self.pool.iter().map(|(c, _)| c))
                .find_map(|c| {
                    c.tbs_certificate
                        .extensions
                        .as_deref()?
                        .iter()
                        .find(|x| x.critical && !UNDERSTOOD.contains(&x.extn_id))
                        .map(|x| EkCertError::UnknownCriticalExtension {
                            cert: self.name(c),
                            oid: x.extn_id,
                        })
                }),
            W::InvalidSignatureForPublicKey
            | W::UnsupportedSignatureAlgorithmContext(_)
            | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
            | W::SignatureAlgorithmMismatch => {
                let mut links: Vec<(&Certificate, &Certificate)> =
                    chain.windows(2).map(|w| (w[0], w[1])).collect();
                if let Some(top) = chain.last() {
                    if let Some(root) = self.anchor_of(top) {
                        links.push((top, root));
                    }
                }
                links.into_iter().find_map(|(cert, issuer)| {
                    signature_problem(cert, issuer).map(|detail| match detail {
                        None => EkCertError::BadSignature {
                            cert: self.name(cert),
                            issuer: display_name(&issuer.tbs_certificate.subject),
                        },
                        Some(detail) => EkCertError::UnsupportedSignature {
                            cert: self.name(cert),
                            detail,
                        },
                    })
                })
            }
            W::UnknownIssuer => chain.last().map(|top| {
                if chain.len() > 1 && self_issued(top) {
                    EkCertError::UntrustedRoot {
                        cert: self.name(top),
                    }
                } else {
                    EkCertError::UnknownIssuer {
                        cert: self.name(top),
                        issuer: display_name(&top.tbs_certificate.issuer),
                    }
                }
            }),
            W::RequiredEkuNotFoundContext(_) => chain.iter().find_map(|c| {
                let eku = ExtendedKeyUsage::from_der(extension(c, ID_CE_EXT_KEY_USAGE)?).ok()?;
                (!eku.0.contains(&TCG_KP_EK_CERTIFICATE))
                    .then(|| EkCertError::WrongEku { cert: self.name(c) })
            }),
            W::BadDer | W::BadDerTime | W::TrailingData(_) | W::MalformedExtensions => {
                Some(EkCertError::Malformed {
                    cert: CertRef::Ek,
                    detail: format!("webpki cannot parse a certificate of the chain ({e:?})"),
                })
            }
            _ => None,
        };
        found.unwrap_or_else(|| EkCertError::Invalid(format!("{e:?}")))
    }
}

/// Whether `cert`'s signature verifies with `issuer`'s key, asked of webpki (for naming
/// only): `None` if it verifies, `Some(None)` if it does not, `Some(Some(detail))` if the
/// algorithm is not accepted.
fn signature_problem(cert: &Certificate, issuer: &Certificate) -> Option<Option<String>> {
    let tbs = cert.tbs_certificate.to_der().ok()?;
    let alg_id = cert.signature_algorithm.to_der().ok()?;
    let issuer_der = issuer.to_der().ok()?;
    let issuer_der = CertificateDer::from(issuer_der.as_slice());
    let issuer_cert = webpki::EndEntityCert::try_from(&issuer_der).ok()?;
    let sig = cert.signature.as_bytes()?;
    // AlgorithmIdentifier contents (without the SEQUENCE header), as webpki lists them.
    let contents = x509_cert::der::asn1::AnyRef::from_der(&alg_id)
        .ok()
        .map(|a| a.value().to_vec())?;
    let candidates: Vec<&&dyn SignatureVerificationAlgorithm> = ALGORITHMS
        .iter()
        .filter(|a| a.signature_alg_id().as_ref() == contents.as_slice())
        .collect();
    if candidates.is_empty() {
        return Some(Some(format!("{}", cert.signature_algorithm.oid)));
    }
    if candidates
        .iter()
        .any(|a| issuer_cert.verify_signature(**a, &tbs, sig).is_ok())
    {
        None
    } else {
        Some(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ek_eku_bytes_are_the_oid() {
        assert_eq!(TCG_KP_EK_CERTIFICATE.as_bytes(), TCG_KP_EK_CERTIFICATE_DER);
    }

    #[test]
    fn manufacturers_are_normalized() {
        assert_eq!(
            normalize_manufacturer("id:494e5443").as_deref(),
            Some("id:494E5443")
        );
        assert_eq!(normalize_manufacturer("INTC"), None);
        assert_eq!(normalize_manufacturer("id:494E54"), None);
        let tpm = TpmIdentity {
            manufacturer: "id:49465800".into(),
            model: "SLB9670".into(),
            version: "id:0007003D".into(),
        };
        assert_eq!(tpm.vendor().as_deref(), Some("IFX"));
        let ibm = TpmIdentity {
            manufacturer: "id:00001014".into(),
            ..tpm
        };
        assert_eq!(ibm.vendor(), None);
    }
}
