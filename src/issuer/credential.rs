//! TPM2_MakeCredential computed in software on the issuer (TPM 2.0 Part 1 §24 "Credential
//! Protection", Part 3 §12.6), for the endorsement keys of the TCG EK Credential Profile's
//! templates: RSA 2048 (L-1), ECC NIST P-256 (L-2) and ECC NIST P-384 (H-3). Pure: RustCrypto
//! primitives only, no TPM.
//!
//! The output is what `TPM2_ActivateCredential` on the TPM holding that EK accepts, releasing
//! the credential only if the activated object has the name `ak_name` and is loaded in the
//! same TPM. The credential here is a 32-byte key that wraps the pass (see `delivery`).
//!
//! What depends on the EK (its *protector* parameters, fixed by the EK template the
//! certificate's key type implies — TCG EK Credential Profile 2.x, Annex B.3.3/B.3.4):
//!
//! | EK | nameAlg | symmetric | seed |
//! |---|---|---|---|
//! | RSA 2048 (L-1) | SHA-256 | AES-128-CFB | RSA-OAEP(SHA-256, label "IDENTITY") of 32 random bytes |
//! | P-256 (L-2) | SHA-256 | AES-128-CFB | ECDH with an ephemeral P-256 key, KDFe(SHA-256) |
//! | P-384 (H-3) | SHA-384 | AES-256-CFB | ECDH with an ephemeral P-384 key, KDFe(SHA-384) |
//!
//! Note: the `rsa` crate's known timing issue (RUSTSEC-2023-0071) concerns private-key
//! operations; only public-key OAEP encryption happens here.

use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::digest::core_api::BlockSizeUser;
use hmac::digest::{Digest, KeyInit};
use hmac::{Mac, SimpleHmac};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2::{Sha256, Sha384};
use zeroize::Zeroizing;

use crate::core::tpm_wire::{ecc_point, EkKind};

type Aes128CfbEnc = cfb_mode::Encryptor<aes::Aes128>;
type Aes256CfbEnc = cfb_mode::Encryptor<aes::Aes256>;

/// What went wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialError {
    /// The EK is not a key of a supported EK template.
    #[error("the endorsement key is not a usable RSA 2048, ECC P-256 or ECC P-384 key")]
    BadEk,
    /// The credential does not fit a TPM2B_DIGEST.
    #[error("the credential is longer than a SHA-256 digest")]
    TooLong,
    /// The random generator failed.
    #[error("the random number generator failed")]
    Rng,
}

/// An endorsement key the issuer can make a credential for, with the protector parameters of
/// its TCG template.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EkPublic {
    /// RSA 2048, template L-1 (nameAlg SHA-256, AES-128-CFB).
    Rsa2048(RsaPublicKey),
    /// ECC NIST P-256, template L-2 (nameAlg SHA-256, AES-128-CFB).
    P256(p256::PublicKey),
    /// ECC NIST P-384, template H-3 (nameAlg SHA-384, AES-256-CFB).
    P384(p384::PublicKey),
}

impl EkPublic {
    /// Which kind of EK this is.
    pub fn kind(&self) -> EkKind {
        match self {
            Self::Rsa2048(_) => EkKind::Rsa2048,
            Self::P256(_) => EkKind::EccP256,
            Self::P384(_) => EkKind::EccP384,
        }
    }
}

/// The RSA EK public key from its modulus (exponent 65537 unless given): 2048 bits only.
pub fn rsa_ek(modulus: &[u8], exponent: Option<u32>) -> Result<RsaPublicKey, CredentialError> {
    let e = BigUint::from(exponent.filter(|&e| e != 0).unwrap_or(65537));
    let key = RsaPublicKey::new(BigUint::from_bytes_be(modulus), e)
        .map_err(|_| CredentialError::BadEk)?;
    if modulus.len() != 256 {
        return Err(CredentialError::BadEk);
    }
    Ok(key)
}

/// KDFa (TPM 2.0 Part 1 §11.4.10.2) with HMAC-`D` in counter mode:
/// `K(i) = HMAC(key, [i]32 ‖ label ‖ 0x00 ‖ contextU ‖ contextV ‖ [bits]32)`, truncated.
pub fn kdfa<D: Digest + BlockSizeUser>(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 64);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        // Invariant: HMAC accepts keys of any length.
        let mut mac =
            <SimpleHmac<D> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// KDFe (TPM 2.0 Part 1 §11.4.10.3 and Annex C.6.1), the one-step KDF of NIST SP 800-56A
/// §5.8.1 as the TPM specifies it for ECDH-derived secrets:
/// `K(i) = H([i]32 ‖ Z ‖ Use ‖ PartyUInfo ‖ PartyVInfo)`, `i` = 1, 2, …, truncated to `bits`.
/// `use_label` is the label with its terminating NUL (the TPM hashes "IDENTITY\0"); no length
/// field is hashed, unlike KDFa. It is not HKDF (RFC 5869), so no crate offers it; it is
/// built here from the hash.
pub fn kdfe<D: Digest>(
    z: &[u8],
    use_label: &[u8],
    party_u: &[u8],
    party_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 64);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut h = D::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        h.update(use_label);
        h.update(party_u);
        h.update(party_v);
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// MakeCredential output: the TPM2B contents of the ID object and of the encrypted secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// TPM2B_ID_OBJECT contents: integrityHMAC (TPM2B_DIGEST) ‖ encIdentity.
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: RSA-OAEP(seed), or the ephemeral ECC public point
    /// (TPMS_ECC_POINT) for an ECC EK.
    pub encrypted_secret: Vec<u8>,
}

/// The label that binds a seed to credential protection (Part 1 §24.4, with its NUL).
const IDENTITY: &[u8] = b"IDENTITY\0";

/// Protects `credential` so that only the TPM holding `ek` can release it, and only to an
/// object named `ak_name` (nameAlg ‖ digest of its public area).
pub fn make_credential(
    ek: &EkPublic,
    ak_name: &[u8],
    credential: &[u8],
) -> Result<MadeCredential, CredentialError> {
    if credential.len() > 32 {
        return Err(CredentialError::TooLong);
    }
    match ek {
        EkPublic::Rsa2048(key) => {
            // Part 1 §24.4 and Annex B.10.4: the seed is nameAlg-digest sized,
            // OAEP-encrypted with the label "IDENTITY" (its terminating NUL included).
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::getrandom(&mut seed[..]).map_err(|_| CredentialError::Rng)?;
            let padding = Oaep::new_with_label::<Sha256, _>("IDENTITY\0");
            let encrypted_secret = key
                .encrypt(&mut rand_core_os(), padding, &seed[..])
                .map_err(|_| CredentialError::BadEk)?;
            protect::<Sha256>(&seed[..], encrypted_secret, 128, ak_name, credential)
        }
        EkPublic::P256(key) => {
            let eph = p256::ecdh::EphemeralSecret::random(&mut rand_core_os());
            let z = eph.diffie_hellman(key);
            let q_e = eph.public_key().to_encoded_point(false);
            let q_s = key.to_encoded_point(false);
            let (Some(ex), Some(ey), Some(sx)) = (q_e.x(), q_e.y(), q_s.x()) else {
                return Err(CredentialError::BadEk);
            };
            // Part 1 Annex C.6.3: seed = KDFe(nameAlg, Z, "IDENTITY", QeU.x, QsV.x, digest
            // bits); the encrypted secret is the ephemeral public point.
            let seed = Zeroizing::new(kdfe::<Sha256>(z.raw_secret_bytes(), IDENTITY, ex, sx, 256));
            protect::<Sha256>(&seed, ecc_point(ex, ey), 128, ak_name, credential)
        }
        EkPublic::P384(key) => {
            let eph = p384::ecdh::EphemeralSecret::random(&mut rand_core_os());
            let z = eph.diffie_hellman(key);
            let q_e = eph.public_key().to_encoded_point(false);
            let q_s = key.to_encoded_point(false);
            let (Some(ex), Some(ey), Some(sx)) = (q_e.x(), q_e.y(), q_s.x()) else {
                return Err(CredentialError::BadEk);
            };
            let seed = Zeroizing::new(kdfe::<Sha384>(z.raw_secret_bytes(), IDENTITY, ex, sx, 384));
            protect::<Sha384>(&seed, ecc_point(ex, ey), 256, ak_name, credential)
        }
    }
}

/// The part of MakeCredential common to every EK (Part 1 §24.4, §24.5), with the EK's
/// nameAlg `D` and symmetric key size `sym_bits` (AES-CFB).
fn protect<D: Digest + BlockSizeUser>(
    seed: &[u8],
    encrypted_secret: Vec<u8>,
    sym_bits: u32,
    ak_name: &[u8],
    credential: &[u8],
) -> Result<MadeCredential, CredentialError> {
    // §24.4: symKey = KDFa(nameAlg, seed, "STORAGE", name, NULL, symBits); encIdentity is the
    // credential as a TPM2B_DIGEST, AES-CFB encrypted with IV 0.
    let sym_key = Zeroizing::new(kdfa::<D>(seed, "STORAGE", ak_name, &[], sym_bits));
    let mut enc_identity = (credential.len() as u16).to_be_bytes().to_vec();
    enc_identity.extend_from_slice(credential);
    let iv = [0u8; 16];
    match sym_bits {
        128 => Aes128CfbEnc::new_from_slices(&sym_key, &iv)
            .map_err(|_| CredentialError::BadEk)?
            .encrypt(&mut enc_identity),
        256 => Aes256CfbEnc::new_from_slices(&sym_key, &iv)
            .map_err(|_| CredentialError::BadEk)?
            .encrypt(&mut enc_identity),
        _ => return Err(CredentialError::BadEk),
    }

    // §24.5: HMACkey = KDFa(nameAlg, seed, "INTEGRITY", NULL, NULL, digest bits);
    // outerHMAC = HMAC_nameAlg(HMACkey, encIdentity ‖ name).
    let digest_bits = (<D as Digest>::output_size() * 8) as u32;
    let hmac_key = Zeroizing::new(kdfa::<D>(seed, "INTEGRITY", &[], &[], digest_bits));
    let mut mac = <SimpleHmac<D> as KeyInit>::new_from_slice(&hmac_key)
        .map_err(|_| CredentialError::BadEk)?;
    mac.update(&enc_identity);
    mac.update(ak_name);
    let outer = mac.finalize().into_bytes();

    let mut id_object = (outer.len() as u16).to_be_bytes().to_vec();
    id_object.extend_from_slice(&outer);
    id_object.extend_from_slice(&enc_identity);
    Ok(MadeCredential {
        id_object,
        encrypted_secret,
    })
}

fn rand_core_os() -> p256::elliptic_curve::rand_core::OsRng {
    p256::elliptic_curve::rand_core::OsRng
}

#[cfg(test)]
mod tests {
    use aes::cipher::AsyncStreamCipher as _;

    use super::*;

    #[test]
    fn kdfa_lengths_and_determinism() {
        let a = kdfa::<Sha256>(b"key", "STORAGE", b"name", &[], 128);
        assert_eq!(a.len(), 16);
        assert_eq!(a, kdfa::<Sha256>(b"key", "STORAGE", b"name", &[], 128));
        assert_ne!(a, kdfa::<Sha256>(b"key", "INTEGRITY", b"name", &[], 128));
        let long = kdfa::<Sha256>(b"key", "INTEGRITY", &[], &[], 512);
        assert_eq!(long.len(), 64);
        // The second block differs from the first (the counter is in the input).
        assert_ne!(long[..32], long[32..]);
        assert_eq!(kdfa::<Sha384>(b"key", "STORAGE", b"n", &[], 256).len(), 32);
    }

    #[test]
    fn kdfe_is_the_counter_hash_of_the_spec() {
        // One block by hand: SHA-256(00000001 ‖ Z ‖ "IDENTITY\0" ‖ U ‖ V).
        let one = Sha256::new()
            .chain_update([0, 0, 0, 1])
            .chain_update(b"zz")
            .chain_update(IDENTITY)
            .chain_update(b"uu")
            .chain_update(b"vv")
            .finalize();
        assert_eq!(
            kdfe::<Sha256>(b"zz", IDENTITY, b"uu", b"vv", 256),
            one.to_vec()
        );
        // Longer outputs continue with counter 2 and are truncated to the bit length.
        let two = Sha256::new()
            .chain_update([0, 0, 0, 2])
            .chain_update(b"zz")
            .chain_update(IDENTITY)
            .chain_update(b"uu")
            .chain_update(b"vv")
            .finalize();
        let long = kdfe::<Sha256>(b"zz", IDENTITY, b"uu", b"vv", 320);
        assert_eq!(long.len(), 40);
        assert_eq!(long[..32], one[..]);
        assert_eq!(long[32..], two[..8]);
        assert_eq!(kdfe::<Sha384>(b"z", IDENTITY, b"u", b"v", 384).len(), 48);
    }

    #[test]
    fn refuses_short_modulus_and_long_credential() {
        assert_eq!(
            rsa_ek(&[0xff; 128], None).unwrap_err(),
            CredentialError::BadEk
        );
        let ek = EkPublic::Rsa2048(rsa_ek(&[0xc5; 256], None).unwrap());
        assert_eq!(
            make_credential(&ek, &[0; 34], &[0; 33]).unwrap_err(),
            CredentialError::TooLong
        );
    }

    /// ActivateCredential's decryption side (Part 1 §24, Part 3 §12.5), written here for ECC
    /// EKs with their private key so the two halves are checked against each other; the TPM
    /// itself checks hwpass's output in the integration tests.
    fn activate_p384(ek: &p384::SecretKey, name: &[u8], made: &MadeCredential) -> Vec<u8> {
        let s = &made.encrypted_secret;
        let n = u16::from_be_bytes([s[0], s[1]]) as usize;
        let (x, rest) = s[2..].split_at(n);
        let y = &rest[2..];
        let q_e = p384::PublicKey::from_sec1_bytes(&[&[4u8][..], x, y].concat()).unwrap();
        let z = p384::ecdh::diffie_hellman(ek.to_nonzero_scalar(), q_e.as_affine());
        let q_s = ek.public_key().to_encoded_point(false);
        let seed = kdfe::<Sha384>(z.raw_secret_bytes(), IDENTITY, x, q_s.x().unwrap(), 384);
        let hmac_key = kdfa::<Sha384>(&seed, "INTEGRITY", &[], &[], 384);
        let outer_len = u16::from_be_bytes([made.id_object[0], made.id_object[1]]) as usize;
        let (outer, enc) = made.id_object[2..].split_at(outer_len);
        let mut mac = <SimpleHmac<Sha384> as KeyInit>::new_from_slice(&hmac_key).unwrap();
        mac.update(enc);
        mac.update(name);
        mac.verify_slice(outer).expect("integrity");
        let key = kdfa::<Sha384>(&seed, "STORAGE", name, &[], 256);
        let mut plain = enc.to_vec();
        cfb_mode::Decryptor::<aes::Aes256>::new_from_slices(&key, &[0; 16])
            .unwrap()
            .decrypt(&mut plain);
        plain[2..].to_vec()
    }

    #[test]
    fn ecc_p384_credential_opens_with_the_ek_private_key_and_name() {
        let ek = p384::SecretKey::random(&mut rand_core_os());
        let name = [0x00, 0x0b, 7, 7, 7];
        let made = make_credential(&EkPublic::P384(ek.public_key()), &name, b"secret").unwrap();
        // TPMS_ECC_POINT of P-384: two 48-byte coordinates with their sizes.
        assert_eq!(made.encrypted_secret.len(), 2 + 48 + 2 + 48);
        // integrityHMAC is SHA-384 sized.
        assert_eq!(&made.id_object[..2], &[0, 48]);
        assert_eq!(activate_p384(&ek, &name, &made), b"secret");
        let p256 = p256::SecretKey::random(&mut rand_core_os());
        let made = make_credential(&EkPublic::P256(p256.public_key()), &name, b"s").unwrap();
        assert_eq!(made.encrypted_secret.len(), 2 + 32 + 2 + 32);
        assert_eq!(&made.id_object[..2], &[0, 32]);
    }
}
