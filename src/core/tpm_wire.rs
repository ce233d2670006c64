//! The TPM 2.0 structures both sides read (TPM 2.0 Part 2): public areas (TPMT_PUBLIC),
//! certifications (TPMS_ATTEST) and the clock inside them, parsed here rather than through a
//! TPM library so the issuer needs none. Pure.

use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::core::jwk::Jwk;

/// Why a TPM structure was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// A structure is truncated, has trailing bytes or fields we do not accept.
    #[error("attestation evidence is malformed: {0}")]
    Malformed(&'static str),
    /// Not a TPM-generated TPM2_Certify structure.
    #[error("the certification is not a TPM-generated TPM2_Certify structure: {0}")]
    BadCertify(&'static str),
    /// The signature over the certification does not verify.
    #[error("the certification is not signed by the attestation key")]
    BadSignature,
    /// The certified object is not the key described.
    #[error("the certified key is not the key whose public area the request carries")]
    NameMismatch,
    /// The certification was made over other qualifying data.
    #[error("the certification was made for another key (qualifying data differs)")]
    WrongQualifyingData,
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

/// The endorsement keys hwpass delivers to: those of the TCG EK Credential Profile templates
/// L-1 (RSA 2048), L-2 (ECC NIST P-256) and H-3 (ECC NIST P-384).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EkKind {
    /// RSA 2048 (template L-1: nameAlg SHA-256, AES-128-CFB).
    #[serde(rename = "rsa2048")]
    Rsa2048,
    /// ECC NIST P-256 (template L-2: nameAlg SHA-256, AES-128-CFB).
    #[serde(rename = "ecc-p256")]
    EccP256,
    /// ECC NIST P-384 (template H-3: nameAlg SHA-384, AES-256-CFB).
    #[serde(rename = "ecc-p384")]
    EccP384,
}

impl EkKind {
    /// A short name: `rsa2048`, `ecc-p256`, `ecc-p384`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa2048 => "rsa2048",
            Self::EccP256 => "ecc-p256",
            Self::EccP384 => "ecc-p384",
        }
    }

    /// Which EK a credential's encrypted secret (TPM2B_ENCRYPTED_SECRET contents) was made
    /// for, by its form: an RSA 2048 OAEP block is 256 bytes; an ECC secret is the ephemeral
    /// TPMS_ECC_POINT, two coordinates of the curve's size (Part 1 §24.4, Annex C.6.3).
    pub fn of_credential_secret(secret: &[u8]) -> Option<Self> {
        if secret.len() == 256 {
            return Some(Self::Rsa2048);
        }
        let mut r = Reader { b: secret };
        let x = r.tpm2b().ok()?;
        let y = r.tpm2b().ok()?;
        r.end().ok()?;
        match (x.len(), y.len()) {
            (32, 32) => Some(Self::EccP256),
            (48, 48) => Some(Self::EccP384),
            _ => None,
        }
    }
}

impl std::fmt::Display for EkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TPMS_ECC_POINT (Part 2 §11.2.5.2): `x` and `y`, each as a TPM2B_ECC_PARAMETER.
#[cfg_attr(not(feature = "issuer"), allow(dead_code))]
pub(crate) fn ecc_point(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + x.len() + y.len());
    for c in [x, y] {
        out.extend_from_slice(&(c.len() as u16).to_be_bytes());
        out.extend_from_slice(c);
    }
    out
}

const TPM_ALG_RSA: u16 = 0x0001;
pub(crate) const TPM_ALG_SHA256: u16 = 0x000b;
pub(crate) const TPM_ALG_NULL: u16 = 0x0010;
pub(crate) const TPM_ALG_ECDSA: u16 = 0x0018;
pub(crate) const TPM_ALG_ECC: u16 = 0x0023;
pub(crate) const TPM_ECC_NIST_P256: u16 = 0x0003;
pub(crate) const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
pub(crate) const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;

/// TPMA_OBJECT bits (Part 2 §8.3).
#[cfg_attr(not(feature = "issuer"), allow(dead_code))]
pub(crate) mod attr {
    pub(crate) const FIXED_TPM: u32 = 1 << 1;
    pub(crate) const FIXED_PARENT: u32 = 1 << 4;
    pub(crate) const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub(crate) const USER_WITH_AUTH: u32 = 1 << 6;
    pub(crate) const NO_DA: u32 = 1 << 10;
    pub(crate) const RESTRICTED: u32 = 1 << 16;
    pub(crate) const DECRYPT: u32 = 1 << 17;
    pub(crate) const SIGN: u32 = 1 << 18;
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Malformed("TPM structure is truncated"));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn alg_with_param(&mut self) -> Result<(u16, Option<u16>), WireError> {
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
    fn end(&self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("TPM structure has trailing bytes"))
        }
    }
}

/// The parts of a TPMT_PUBLIC hwpass looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TpmPublic {
    pub(crate) attributes: u32,
    /// ECC P-256 ECDSA-SHA256 key: its point.
    pub(crate) ecc: Option<([u8; 32], [u8; 32])>,
    /// RSA key: modulus and exponent.
    pub(crate) rsa: Option<(Vec<u8>, u32)>,
    /// nameAlg ‖ SHA-256(TPMT_PUBLIC).
    pub(crate) name: Vec<u8>,
}

pub(crate) fn parse_public(bytes: &[u8]) -> Result<TpmPublic, WireError> {
    let mut r = Reader { b: bytes };
    let kind = r.u16()?;
    if r.u16()? != TPM_ALG_SHA256 {
        return Err(WireError::Malformed("object nameAlg is not SHA-256"));
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
        _ => return Err(WireError::Malformed("object is neither ECC nor RSA")),
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
pub(crate) struct CertifyInfo<'a> {
    pub(crate) extra_data: &'a [u8],
    pub(crate) certified_name: &'a [u8],
    pub(crate) clock: TpmClock,
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

pub(crate) fn parse_certify(bytes: &[u8]) -> Result<CertifyInfo<'_>, WireError> {
    let mut r = Reader { b: bytes };
    if r.u32()? != TPM_GENERATED_VALUE {
        return Err(WireError::BadCertify("magic is not TPM_GENERATED_VALUE"));
    }
    if r.u16()? != TPM_ST_ATTEST_CERTIFY {
        return Err(WireError::BadCertify("type is not TPM_ST_ATTEST_CERTIFY"));
    }
    r.tpm2b()?; // qualifiedSigner
    let extra_data = r.tpm2b()?;
    let clock = r.take(8)?;
    let clock = TpmClock {
        clock: u64::from_be_bytes(
            clock
                .try_into()
                .map_err(|_| WireError::Malformed("clock"))?,
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

#[cfg_attr(not(feature = "issuer"), allow(dead_code))]
pub(crate) fn has(attributes: u32, bits: u32) -> bool {
    attributes & bits == bits
}

/// Checks a TPM2_Certify of the device key by itself over a fresh `challenge`: a proof that
/// the TPM holding `jwk`'s key signed just now, which also carries the TPM's clock.
pub fn verify_self_certify(
    certify_bytes: &[u8],
    signature: &p256::ecdsa::Signature,
    jwk: &Jwk,
    challenge: &[u8],
) -> Result<TpmClock, WireError> {
    jwk.verifying_key()
        .verify_prehash(&Sha256::digest(certify_bytes), signature)
        .map_err(|_| WireError::BadSignature)?;
    let info = parse_certify(certify_bytes)?;
    if info.extra_data != challenge {
        return Err(WireError::WrongQualifyingData);
    }
    if info.certified_name != parse_public(&device_key_public(jwk))?.name.as_slice() {
        return Err(WireError::NameMismatch);
    }
    Ok(info.clock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_key_public_parses_back_to_its_point_and_attributes() {
        let key = crate::core::signer::MemoryKey::generate();
        let jwk = Jwk::new(*crate::core::signer::Signer::verifying_key(&key));
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
    fn credential_secrets_name_their_ek() {
        assert_eq!(
            EkKind::of_credential_secret(&[0; 256]),
            Some(EkKind::Rsa2048)
        );
        assert_eq!(
            EkKind::of_credential_secret(&ecc_point(&[1; 32], &[2; 32])),
            Some(EkKind::EccP256)
        );
        assert_eq!(
            EkKind::of_credential_secret(&ecc_point(&[1; 48], &[2; 48])),
            Some(EkKind::EccP384)
        );
        assert_eq!(
            EkKind::of_credential_secret(&ecc_point(&[1; 48], &[2; 32])),
            None
        );
        assert_eq!(EkKind::of_credential_secret(&[0; 100]), None);
    }

    #[test]
    fn malformed_structures_are_refused() {
        assert!(parse_public(&[]).is_err());
        let key = crate::core::signer::MemoryKey::generate();
        let mut bytes =
            device_key_public(&Jwk::new(*crate::core::signer::Signer::verifying_key(&key)));
        bytes.push(0);
        assert_eq!(
            parse_public(&bytes).unwrap_err(),
            WireError::Malformed("TPM structure has trailing bytes")
        );
        assert!(matches!(
            parse_certify(&[0xff, 0x54, 0x43, 0x47, 0x80, 0x18]),
            Err(WireError::BadCertify(_))
        ));
        assert!(matches!(
            parse_certify(&[0, 0, 0, 0]),
            Err(WireError::BadCertify(_))
        ));
    }
}
