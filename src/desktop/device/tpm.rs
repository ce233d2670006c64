//! The TPM 2.0 device backend. The only module that imports `tss_esapi`.
//!
//! Keys live under the storage root key (SRK): the persistent one at 0x81000001 when the TPM
//! has it, else one this module creates from the TCG ECC P-256 SRK template and makes
//! persistent there (the same template always yields the same key under the same owner seed,
//! so a TPM whose owner refuses `EvictControl` still works, one `CreatePrimary` per use).
//!
//! - The **device key**: ECC P-256, ECDSA-SHA256, attributes fixedTPM, fixedParent,
//!   sensitiveDataOrigin, userWithAuth, noDA, sign (not decrypt, not restricted); no auth value
//!   and no PCR policy, so unclean shutdowns and firmware updates cannot brick it.
//! - The **state key**: 32 random bytes in a sealed data object (keyedHash, fixedTPM,
//!   fixedParent, userWithAuth, noDA). Only this TPM can load the blob and unseal it.
//!
//! A check issues: ReadPublic (SRK), Load + Unseal + FlushContext (state key), Load + Sign +
//! FlushContext (device key) — 7 commands, and every transient handle is flushed.

use std::cell::RefCell;
use std::str::FromStr as _;

use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::{ek, nv, AsymmetricAlgorithmSelection};
use tss_esapi::attributes::{NvIndexAttributesBuilder, ObjectAttributesBuilder};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{
    CapabilityType, NvIndexType, PropertyTag, SessionType, Tss2ResponseCodeKind,
};
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, PersistentTpmHandle,
    SessionHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::KeyedHashScheme;
use tss_esapi::structures::{
    Auth, CapabilityData, Data, Digest, EccParameter, EccPoint, EccScheme, EncryptedSecret,
    HashScheme, IdObject, MaxNvBuffer, NvPublic, NvPublicBuilder, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData,
    Signature as TpmSignature, SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall as _, UnMarshall as _};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::{Backend, Created, Device, DeviceOptions, Evidence};
use crate::core::b64::{b64url, b64url_decode};
use crate::core::claims::BindingKind;
use crate::core::jwk::Jwk;
use crate::core::signer::{signature_from_scalars, SignError, Signer};
use crate::core::time::format_duration;
use crate::core::tpm_wire::{verify_self_certify, EkKind, TpmClock};
use crate::desktop::error::{DesktopError, DeviceFault, FaultKind};
use crate::desktop::state;

/// TCTI used when none is given.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
/// The conventional persistent handle of the storage root key.
pub const SRK_HANDLE: u32 = 0x8100_0001;

/// The TCTI asked for: the explicit one, else `HWPASS_TCTI`, else `TPM2TOOLS_TCTI`.
pub fn requested_tcti(explicit: Option<&str>) -> Option<String> {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var("HWPASS_TCTI").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::env::var("TPM2TOOLS_TCTI")
                .ok()
                .filter(|s| !s.is_empty())
        })
}

/// The TCTI to use for a new enrolment: [`requested_tcti`], else [`DEFAULT_TCTI`].
pub fn resolve_tcti(explicit: Option<&str>) -> String {
    requested_tcti(explicit).unwrap_or_else(|| DEFAULT_TCTI.to_owned())
}

/// What went wrong with the TPM, sorted by what the person should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// No TPM answered at this TCTI.
    #[error("no TPM answers at {tcti}: {detail}")]
    Unreachable {
        /// The TCTI tried.
        tcti: String,
        /// The cause.
        detail: String,
    },
    /// The TPM device node does not exist.
    #[error("there is no TPM device at {path}")]
    DeviceMissing {
        /// The device node.
        path: String,
    },
    /// The TPM device node exists, but this account may not open it.
    #[error("this account may not use the TPM at {path} (permission denied)")]
    PermissionDenied {
        /// The device node.
        path: String,
    },
    /// Nothing listens at a simulator's (or remote TPM's) address.
    #[error("no TPM simulator is listening at {addr}")]
    NotListening {
        /// host:port.
        addr: String,
    },
    /// The TPM reports an internal failure and accepts only a few commands.
    #[error("the TPM is in failure mode")]
    FailureMode,
    /// The TPM stopped answering in the middle of an operation.
    #[error("the TPM stopped answering while trying to {doing}")]
    Stopped {
        /// The operation.
        doing: &'static str,
    },
    /// Dictionary-attack lockout.
    #[error("the TPM is in dictionary-attack lockout{}", match wait_secs { Some(s) => format!("; it accepts authorisations again in about {} (each failure adds {}s)", format_duration(i64::from(*s)), s), None => String::new() })]
    Lockout {
        /// Seconds per lockout interval, if the TPM said.
        wait_secs: Option<u32>,
    },
    /// No free object slots: objects left loaded by an interrupted program.
    #[error("the TPM has no free object slots: another program, or an interrupted one, left objects loaded. Through the kernel resource manager (device:/dev/tpmrm0) they are flushed when that program exits; on a TPM used directly, flush them with `tpm2_flushcontext -t` or restart it")]
    NoSlots,
    /// The storage key is gone or changed: the TPM was cleared, or this is another TPM.
    #[error("the TPM no longer holds the storage key this desktop was enrolled under (the TPM was cleared, or this is another machine)")]
    KeyGone,
    /// A blob failed the TPM's integrity check: it was made by another TPM.
    #[error("the TPM refuses this desktop's key: it was made by another TPM, so this state belongs to another machine")]
    Foreign,
    /// The stored blobs are damaged.
    #[error("the stored TPM key blobs are damaged: {0}")]
    Damaged(&'static str),
    /// Any other TPM failure.
    #[error("the TPM failed to {doing}: {detail}{}", rc.map(|rc| format!(" (TSS2_RC 0x{rc:x})")).unwrap_or_default())]
    Device {
        /// The operation.
        doing: &'static str,
        /// The TSS2 response code, when the TPM stack returned one.
        rc: Option<u32>,
        /// The TPM stack's description.
        detail: String,
    },
}

impl TpmError {
    /// Whether the TPM refuses this desktop's key or state for good (another machine, cleared,
    /// damaged), as opposed to not being usable right now.
    pub fn is_unusable_here(&self) -> bool {
        matches!(self, Self::Foreign | Self::KeyGone | Self::Damaged(_))
    }

    /// How this bears on the person.
    fn fault_kind(&self) -> FaultKind {
        match self {
            Self::Foreign | Self::Damaged(_) => FaultKind::Foreign,
            Self::KeyGone => FaultKind::KeyGone,
            Self::DeviceMissing { .. } => FaultKind::Missing,
            Self::PermissionDenied { .. } => FaultKind::Permission,
            Self::NotListening { .. } => FaultKind::NotListening,
            Self::Lockout { .. } => FaultKind::Lockout,
            Self::FailureMode => FaultKind::Failure,
            _ => FaultKind::Unavailable,
        }
    }
}

impl From<TpmError> for DeviceFault {
    fn from(e: TpmError) -> Self {
        DeviceFault::new(e.fault_kind(), e)
    }
}

impl From<TpmError> for DesktopError {
    fn from(e: TpmError) -> Self {
        Self::Device(e.into())
    }
}

/// The TPM key blobs stored in `device.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmKeyFile {
    /// TCTI used at enrolment (used again unless overridden).
    pub tcti: String,
    /// `persistent` (the SRK at 0x81000001) or `template` (re-created on each use).
    pub parent: String,
    /// Hex TPM name of the parent at enrolment.
    pub parent_name: String,
    /// Device key TPMT_PUBLIC, base64url.
    pub key_public: String,
    /// Device key TPM2B_PRIVATE contents, base64url.
    pub key_private: String,
    /// Sealed state key TPMT_PUBLIC, base64url (enrolments whose state key is sealed in an
    /// object rather than held in an NV index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_public: Option<String>,
    /// Sealed state key TPM2B_PRIVATE contents, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_private: Option<String>,
    /// The TPM's NV storage for this enrolment, when enrolment could define it: the state key
    /// and the monotonic counter that versions the sealed state (rollback resistance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nv: Option<NvRecord>,
    /// Attestation key TPMT_PUBLIC, base64url.
    pub ak_public: String,
    /// Attestation key TPM2B_PRIVATE contents, base64url.
    pub ak_private: String,
}

/// Two NV indices in the owner range and their shared auth value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvRecord {
    /// The index holding the 32-byte state key (ordinary, authRead, authWrite, noDA).
    pub key_index: u32,
    /// The NV counter (monotonic, authRead, authWrite, noDA) the sealed state carries.
    pub counter_index: u32,
    /// Both indices' auth value, base64url of 32 random bytes: other local accounts in the
    /// `tss` group can neither read the state key nor advance the counter without it.
    pub auth: String,
}

/// The owner range of NV indices (TCG "Registry of Reserved TPM 2.0 Handles").
const NV_OWNER_FIRST: u32 = 0x0180_0000;
/// Its last index.
const NV_OWNER_LAST: u32 = 0x01BF_FFFF;

/// The TPM2_Create results for the device key, to read its attributes back in tests.
pub fn key_blobs(file: &TpmKeyFile) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
    let public = b64url_decode(&file.key_public).ok_or(TpmError::Damaged("key public"))?;
    let private = b64url_decode(&file.key_private).ok_or(TpmError::Damaged("key private"))?;
    Ok((public, private))
}

fn classify(e: tss_esapi::Error, doing: &'static str) -> TpmError {
    let tss_esapi::Error::Tss2Error(rc) = e else {
        return TpmError::Device {
            doing,
            rc: None,
            detail: e.to_string(),
        };
    };
    let raw = raw_rc(&rc).unwrap_or(0);
    // TSS2_RC layers (bits 16..24): 0 = the TPM itself, 7 = ESAPI, 8 = SAPI, 10 = TCTI (the
    // transport). ESAPI's BAD_SEQUENCE (7) and IO_ERROR (10) follow a transport failure.
    let layer = (raw >> 16) & 0xff;
    let base = raw & 0xffff;
    if layer == 10 || (layer == 7 && matches!(base, 7 | 10)) {
        return TpmError::Stopped { doing };
    }
    let kind = if layer == 0 { rc.kind() } else { None };
    match kind {
        Some(Tss2ResponseCodeKind::Failure) => TpmError::FailureMode,
        Some(Tss2ResponseCodeKind::Lockout) => TpmError::Lockout { wait_secs: None },
        Some(Tss2ResponseCodeKind::ObjectMemory) => TpmError::NoSlots,
        Some(Tss2ResponseCodeKind::Integrity | Tss2ResponseCodeKind::Binding) => TpmError::Foreign,
        _ => TpmError::Device {
            doing,
            rc: Some(raw),
            detail: e.to_string(),
        },
    }
}

/// The raw TSS2 response code. tss-esapi keeps it private but shows it in the Display of the
/// error's source ("Response code value: 0x…").
fn raw_rc(rc: &tss_esapi::constants::response_code::Tss2ResponseCode) -> Option<u32> {
    let text = std::error::Error::source(rc)?.to_string();
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// fixedTPM | fixedParent | userWithAuth | noDA, plus sensitiveDataOrigin when the TPM makes
/// the secret: an object bound to this TPM, usable without an auth value, never subject to
/// dictionary-attack lockout.
fn resident(generated: bool) -> ObjectAttributesBuilder {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(generated)
        .with_user_with_auth(true)
        .with_no_da(true)
}

/// An ECC P-256 object, nameAlg SHA-256.
fn ecc_public(
    attributes: ObjectAttributesBuilder,
    parameters: PublicEccParametersBuilder,
    unique: EccPoint,
) -> Result<Public, tss_esapi::Error> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes.build()?)
        .with_ecc_parameters(parameters.build()?)
        .with_ecc_unique_identifier(unique)
        .build()
}

fn ecdsa_sha256() -> EccScheme {
    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256))
}

fn srk_template() -> Result<Public, tss_esapi::Error> {
    // TCG TPM v2.0 Provisioning Guidance, ECC P-256 SRK template (unique: two zero coordinates).
    ecc_public(
        resident(true).with_restricted(true).with_decrypt(true),
        PublicEccParametersBuilder::new_restricted_decryption_key(
            SymmetricDefinitionObject::AES_128_CFB,
            EccCurve::NistP256,
        ),
        EccPoint::new(
            EccParameter::try_from(vec![0u8; 32])?,
            EccParameter::try_from(vec![0u8; 32])?,
        ),
    )
}

fn device_key_template() -> Result<Public, tss_esapi::Error> {
    // Sign only: not decrypt, not restricted.
    ecc_public(
        resident(true).with_sign_encrypt(true),
        PublicEccParametersBuilder::new_unrestricted_signing_key(
            ecdsa_sha256(),
            EccCurve::NistP256,
        ),
        EccPoint::default(),
    )
}

fn ak_template() -> Result<Public, tss_esapi::Error> {
    // An attestation key: restricted signing, so it only signs structures the TPM made.
    ecc_public(
        resident(true).with_restricted(true).with_sign_encrypt(true),
        PublicEccParametersBuilder::new()
            .with_ecc_scheme(ecdsa_sha256())
            .with_curve(EccCurve::NistP256)
            .with_is_signing_key(true)
            .with_is_decryption_key(false)
            .with_restricted(true)
            .with_key_derivation_function_scheme(
                tss_esapi::structures::KeyDerivationFunctionScheme::Null,
            ),
        EccPoint::default(),
    )
}

fn seal_template() -> Result<Public, tss_esapi::Error> {
    // A sealed data object: the data comes from us, so not sensitiveDataOrigin.
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(resident(false).build()?)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

fn verifying_key_of(public: &Public) -> Result<VerifyingKey, TpmError> {
    let Public::Ecc { unique, .. } = public else {
        return Err(TpmError::Damaged("device key is not an ECC key"));
    };
    let pad = |v: &[u8]| -> Result<[u8; 32], TpmError> {
        let mut out = [0u8; 32];
        if v.len() > 32 {
            return Err(TpmError::Damaged("ECC coordinate longer than 32 bytes"));
        }
        out[32 - v.len()..].copy_from_slice(v);
        Ok(out)
    };
    let (x, y) = (pad(unique.x().value())?, pad(unique.y().value())?);
    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    VerifyingKey::from_encoded_point(&point).map_err(|_| TpmError::Damaged("device key point"))
}

/// The storage parent, as resolved in this process.
#[derive(Debug, Clone, Copy)]
enum Parent {
    /// The persistent SRK (needs no flush).
    Persistent(KeyHandle),
    /// A primary created from the template for this process (flushed on drop).
    Transient(KeyHandle),
}

impl Parent {
    fn handle(self) -> KeyHandle {
        match self {
            Parent::Persistent(h) | Parent::Transient(h) => h,
        }
    }
}

struct Inner {
    ctx: Context,
    parent: Option<Parent>,
    /// NV handles resolved in this process (one NV_ReadPublic each), with their auth set.
    nv_key: Option<NvIndexHandle>,
    nv_counter: Option<NvIndexHandle>,
}

/// A device key (and state key) in a TPM.
pub struct TpmDevice {
    inner: RefCell<Inner>,
    file: TpmKeyFile,
    verifying: VerifyingKey,
    state_key: RefCell<Option<Zeroizing<[u8; 32]>>>,
}

impl std::fmt::Debug for TpmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TpmDevice({})", self.file.tcti)
    }
}

/// Why nothing answers at `tcti`, when the operating system can tell: a missing device node,
/// a permission, a closed port.
fn diagnose(tcti: &str) -> Option<TpmError> {
    let (kind, conf) = tcti.split_once(':').unwrap_or((tcti, ""));
    match kind {
        "device" => {
            let path = if conf.is_empty() { "/dev/tpm0" } else { conf };
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
            {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(TpmError::DeviceMissing { path: path.into() })
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    Some(TpmError::PermissionDenied { path: path.into() })
                }
                _ => None,
            }
        }
        "swtpm" | "mssim" => {
            let field = |name: &str| {
                conf.split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let host = field("host").unwrap_or_else(|| "localhost".into());
            let port: u16 = field("port").and_then(|p| p.parse().ok()).unwrap_or(2321);
            let addr = format!("{host}:{port}");
            let refused = std::net::ToSocketAddrs::to_socket_addrs(&addr)
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| {
                    std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2))
                        .is_err()
                })
                .unwrap_or(true);
            refused.then_some(TpmError::NotListening { addr })
        }
        _ => None,
    }
}

fn connect(tcti: &str) -> Result<Context, TpmError> {
    let conf = TctiNameConf::from_str(tcti).map_err(|e| TpmError::Unreachable {
        tcti: tcti.into(),
        detail: format!("not a valid TCTI ({e}); use device:/dev/tpmrm0 or swtpm:host=…,port=…"),
    })?;
    let mut ctx = Context::new(conf).map_err(|e| {
        diagnose(tcti).unwrap_or_else(|| TpmError::Unreachable {
            tcti: tcti.into(),
            detail: e.to_string(),
        })
    })?;
    // Context::new does not talk to the TPM; the first command tells whether one answers.
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    Ok(ctx)
}

/// Whether a TPM answers at `tcti` (one GetCapability round trip).
pub fn probe(tcti: &str) -> Result<(), TpmError> {
    let mut ctx = connect(tcti)?;
    ctx.execute_without_session(|c| {
        c.get_capability(
            CapabilityType::TpmProperties,
            PropertyTag::Manufacturer.into(),
            1,
        )
    })
    .map(|_| ())
    .map_err(|e| match classify(e, "answer") {
        TpmError::Stopped { .. } => diagnose(tcti).unwrap_or_else(|| TpmError::Unreachable {
            tcti: tcti.into(),
            detail: "no answer".into(),
        }),
        other => other,
    })
}

fn persistent_srk() -> Result<TpmHandle, TpmError> {
    PersistentTpmHandle::new(SRK_HANDLE)
        .map(TpmHandle::Persistent)
        .map_err(|e| TpmError::Device {
            doing: "address the SRK",
            rc: None,
            detail: e.to_string(),
        })
}

/// Finds the SRK at 0x81000001 if present, with its name (one ReadPublic). With `check`, also
/// reads its public area to make sure it is a storage key (enrolment only: on later use the
/// name, a hash of the public area, is compared with the one recorded at enrolment instead).
fn find_persistent_srk(
    ctx: &mut Context,
    check: bool,
) -> Result<Option<(KeyHandle, Vec<u8>)>, TpmError> {
    let tpm_handle = persistent_srk()?;
    let handle = match ctx.execute_without_session(|c| c.tr_from_tpm_public(tpm_handle)) {
        Ok(h) => h,
        Err(tss_esapi::Error::Tss2Error(rc))
            if raw_rc(&rc).is_some_and(|r| r >> 16 == 0)
                && matches!(rc.kind(), Some(Tss2ResponseCodeKind::Handle)) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(classify(e, "look up the storage key")),
    };
    let key = KeyHandle::from(handle);
    let name = ctx
        .tr_get_name(handle)
        .map_err(|e| classify(e, "name the storage key"))?;
    if check {
        let (public, _, _) = ctx
            .execute_without_session(|c| c.read_public(key))
            .map_err(|e| classify(e, "read the storage key"))?;
        let a = public.object_attributes();
        if !(a.restricted() && a.decrypt() && !a.sign_encrypt()) {
            return Ok(None);
        }
    }
    Ok(Some((key, name.value().to_vec())))
}

fn create_srk(ctx: &mut Context) -> Result<(KeyHandle, Vec<u8>), TpmError> {
    let template = srk_template().map_err(|e| classify(e, "build the SRK template"))?;
    let primary = ctx
        .create_primary(Hierarchy::Owner, template, None, None, None, None)
        .map_err(|e| classify(e, "create the storage key"))?;
    let (_, name, _) = ctx
        .execute_without_session(|c| c.read_public(primary.key_handle))
        .map_err(|e| classify(e, "read the storage key"))?;
    Ok((primary.key_handle, name.value().to_vec()))
}

fn make_blob(public: &Public, private: &Private) -> Result<(String, String), TpmError> {
    let public = public.marshall().map_err(|e| classify(e, "encode a key"))?;
    Ok((b64url(&public), b64url(private.value())))
}

fn load_blob(
    ctx: &mut Context,
    parent: KeyHandle,
    public: &str,
    private: &str,
) -> Result<KeyHandle, TpmError> {
    let public = b64url_decode(public).ok_or(TpmError::Damaged("public area encoding"))?;
    let private = b64url_decode(private).ok_or(TpmError::Damaged("private area encoding"))?;
    let public = Public::unmarshall(&public).map_err(|_| TpmError::Damaged("public area"))?;
    let private = Private::try_from(private).map_err(|_| TpmError::Damaged("private area"))?;
    ctx.load(parent, private, public)
        .map_err(|e| classify(e, "load the key"))
}

// ---------------------------------------------------------------------------------------------
// NV storage: the state key and the counter (TPM 2.0 Part 3 §31)

fn nv_auth(record: &NvRecord) -> Result<Auth, TpmError> {
    let bytes = b64url_decode(&record.auth).ok_or(TpmError::Damaged("NV auth encoding"))?;
    Auth::try_from(bytes).map_err(|_| TpmError::Damaged("NV auth length"))
}

/// The NV indices defined now, in the owner range (GetCapability, paged).
fn nv_defined(ctx: &mut Context) -> Result<Vec<u32>, TpmError> {
    let mut out = Vec::new();
    let mut next = NV_OWNER_FIRST;
    loop {
        let (data, more) = ctx
            .execute_without_session(|c| c.get_capability(CapabilityType::Handles, next, 254))
            .map_err(|e| classify(e, "list NV indices"))?;
        let CapabilityData::Handles(list) = data else {
            break;
        };
        let mut last = None;
        for h in list.into_inner() {
            if let TpmHandle::NvIndex(nv) = h {
                let v = u32::from(nv);
                out.push(v);
                last = Some(v);
            }
        }
        match (more, last) {
            (true, Some(l)) if l < NV_OWNER_LAST => next = l + 1,
            _ => break,
        }
    }
    Ok(out)
}

/// Two free owner-range indices, starting at a random place in the range (so two programs
/// following the same convention rarely collide).
fn nv_pick_free(ctx: &mut Context) -> Result<(u32, u32), TpmError> {
    let used = nv_defined(ctx)?;
    let mut r = [0u8; 2];
    getrandom::getrandom(&mut r).map_err(|_| TpmError::Damaged("no randomness"))?;
    let span = NV_OWNER_LAST - NV_OWNER_FIRST + 1;
    let start = u32::from(u16::from_be_bytes(r)) * 16 % span;
    let mut free = (0..span)
        .map(|i| NV_OWNER_FIRST + (start + i) % span)
        .filter(|i| !used.contains(i));
    match (free.next(), free.next()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(TpmError::Device {
            doing: "find free NV indices",
            rc: None,
            detail: "the owner NV range is full".into(),
        }),
    }
}

fn nv_public(index: u32, counter: bool) -> Result<NvPublic, tss_esapi::Error> {
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(if counter {
            NvIndexType::Counter
        } else {
            NvIndexType::Ordinary
        })
        .with_auth_read(true)
        .with_auth_write(true)
        .with_no_da(true)
        .build()?;
    NvPublicBuilder::new()
        .with_nv_index(NvIndexTpmHandle::new(index)?)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(if counter { 8 } else { 32 })
        .build()
}

/// Whether a failure means the owner hierarchy has an auth value hwpass does not know.
fn is_owner_auth_failure(e: &tss_esapi::Error) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc)
        if matches!(rc.kind(), Some(Tss2ResponseCodeKind::BadAuth | Tss2ResponseCodeKind::AuthFail)))
}

/// Defines the state-key index and the counter, writes the key, and advances the counter
/// once (a fresh counter cannot be read before its first increment). `Ok(None)` when the
/// owner hierarchy refuses (it has a password): the caller seals the key in an object instead.
fn nv_setup(
    ctx: &mut Context,
    state_key: &[u8; 32],
) -> Result<Option<(NvRecord, NvIndexHandle, NvIndexHandle)>, TpmError> {
    let (key_index, counter_index) = nv_pick_free(ctx)?;
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut secret[..]).map_err(|_| TpmError::Damaged("no randomness"))?;
    let record = NvRecord {
        key_index,
        counter_index,
        auth: b64url(&secret[..]),
    };
    let Some(key) = nv_define(ctx, key_index, false, nv_auth(&record)?)? else {
        return Ok(None);
    };
    let counter = match nv_define(ctx, counter_index, true, nv_auth(&record)?) {
        Ok(Some(h)) => h,
        other => {
            nv_remove(ctx, key_index);
            return other.map(|_| None);
        }
    };
    let written = (|| {
        let data = MaxNvBuffer::try_from(state_key.to_vec())
            .map_err(|e| classify(e, "write the state key"))?;
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.nv_write(NvAuth::NvIndex(key), key, data, 0)
        })
        .map_err(|e| classify(e, "write the state key"))?;
        nv_increment(ctx, counter)
    })();
    if let Err(e) = written {
        nv_remove(ctx, key_index);
        nv_remove(ctx, counter_index);
        return Err(e);
    }
    Ok(Some((record, key, counter)))
}

/// NV_DefineSpace under the owner hierarchy (empty owner auth, as Linux leaves it); `None`
/// when the owner hierarchy has a password hwpass does not know.
fn nv_define(
    ctx: &mut Context,
    index: u32,
    counter: bool,
    auth: Auth,
) -> Result<Option<NvIndexHandle>, TpmError> {
    let public = nv_public(index, counter).map_err(|e| classify(e, "describe an NV index"))?;
    match ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_define_space(Provision::Owner, Some(auth), public)
    }) {
        Ok(h) => Ok(Some(h)),
        Err(e) if is_owner_auth_failure(&e) => Ok(None),
        Err(e) => Err(classify(e, "define an NV index")),
    }
}

/// An ESYS handle for an index hwpass defined (one NV_ReadPublic), with its auth set.
fn nv_open(ctx: &mut Context, index: u32, record: &NvRecord) -> Result<NvIndexHandle, TpmError> {
    let tpm_handle = NvIndexTpmHandle::new(index).map_err(|_| TpmError::Damaged("NV index"))?;
    let h = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
        .map_err(|e| match &e {
            // The index is gone: the TPM was cleared, or someone removed it.
            tss_esapi::Error::Tss2Error(rc)
                if matches!(rc.kind(), Some(Tss2ResponseCodeKind::Handle)) =>
            {
                TpmError::KeyGone
            }
            _ => classify(e, "find the NV index"),
        })?;
    let h = NvIndexHandle::from(h);
    ctx.tr_set_auth(h.into(), nv_auth(record)?)
        .map_err(|e| classify(e, "authorise the NV index"))?;
    Ok(h)
}

fn nv_read(ctx: &mut Context, h: NvIndexHandle, size: u16) -> Result<Vec<u8>, TpmError> {
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_read(NvAuth::NvIndex(h), h, size, 0)
    })
    .map(|b| b.value().to_vec())
    .map_err(|e| classify(e, "read NV storage"))
}

fn nv_counter_value(ctx: &mut Context, h: NvIndexHandle) -> Result<u64, TpmError> {
    let bytes: [u8; 8] = nv_read(ctx, h, 8)?
        .try_into()
        .map_err(|_| TpmError::Damaged("NV counter size"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// TPM2_NV_Increment: one NV write.
fn nv_increment(ctx: &mut Context, h: NvIndexHandle) -> Result<(), TpmError> {
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_increment(NvAuth::NvIndex(h), h)
    })
    .map_err(|e| classify(e, "advance the NV counter"))
}

/// Removes an index hwpass defined; failures are ignored (it may be gone already, or the
/// owner hierarchy may have a password: then the index stays until the TPM is cleared).
fn nv_remove(ctx: &mut Context, index: u32) {
    let Ok(tpm_handle) = NvIndexTpmHandle::new(index) else {
        return;
    };
    let Ok(h) =
        ctx.execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
    else {
        return;
    };
    let _ = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_undefine_space(Provision::Owner, NvIndexHandle::from(h))
    });
}

fn flush(ctx: &mut Context, handle: KeyHandle) {
    // A failed flush leaves nothing we can do; the handle dies with the TPM's next reset.
    let _ = ctx.flush_context(ObjectHandle::from(handle));
}

impl TpmDevice {
    /// Creates the device key and the sealed state key in the TPM at `tcti`.
    pub fn create(tcti: &str) -> Result<Self, TpmError> {
        let mut ctx = connect(tcti)?;
        let (parent, parent_kind, parent_name) = match find_persistent_srk(&mut ctx, true)? {
            Some((h, name)) => (Parent::Persistent(h), "persistent", name),
            None => {
                let (h, name) = create_srk(&mut ctx)?;
                let persisted =
                    Persistent::Persistent(PersistentTpmHandle::new(SRK_HANDLE).map_err(|e| {
                        TpmError::Device {
                            doing: "address the SRK",
                            rc: None,
                            detail: e.to_string(),
                        }
                    })?);
                match ctx.evict_control(Provision::Owner, h.into(), persisted) {
                    Ok(_) => {
                        flush(&mut ctx, h);
                        let (ph, name2) =
                            find_persistent_srk(&mut ctx, false)?.ok_or(TpmError::KeyGone)?;
                        debug_assert_eq!(name, name2);
                        (Parent::Persistent(ph), "persistent", name2)
                    }
                    // The owner hierarchy may have an auth value we do not know: stay transient.
                    Err(_) => (Parent::Transient(h), "template", name),
                }
            }
        };
        let mut state_key = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut state_key[..]).map_err(|_| TpmError::Damaged("no randomness"))?;
        let key_template =
            device_key_template().map_err(|e| classify(e, "build the key template"))?;
        let key = ctx
            .create(parent.handle(), key_template, None, None, None, None)
            .map_err(|e| classify(e, "create the device key"))?;
        let verifying = verifying_key_of(&key.out_public)?;
        let (key_public, key_private) = make_blob(&key.out_public, &key.out_private)?;
        // The state key in NV storage beside a monotonic counter when the owner hierarchy lets
        // us define them; otherwise sealed in an object under the SRK, without rollback
        // resistance (the enrolment says so).
        let (nv, seal_public, seal_private, nv_handles) = match nv_setup(&mut ctx, &state_key)? {
            Some((record, key_h, counter_h)) => {
                (Some(record), None, None, Some((key_h, counter_h)))
            }
            None => {
                let seal_data =
                    SensitiveData::try_from(state_key.to_vec()).map_err(|e| classify(e, "seal"))?;
                let seal_template =
                    seal_template().map_err(|e| classify(e, "build the seal template"))?;
                let seal = ctx
                    .create(
                        parent.handle(),
                        seal_template,
                        None,
                        Some(seal_data),
                        None,
                        None,
                    )
                    .map_err(|e| classify(e, "seal the state key"))?;
                let (p, s) = make_blob(&seal.out_public, &seal.out_private)?;
                (None, Some(p), Some(s), None)
            }
        };
        let ak_template = ak_template().map_err(|e| classify(e, "build the AK template"))?;
        let ak = ctx
            .create(parent.handle(), ak_template, None, None, None, None)
            .map_err(|e| classify(e, "create the attestation key"))?;
        let (ak_public, ak_private) = make_blob(&ak.out_public, &ak.out_private)?;
        let file = TpmKeyFile {
            tcti: tcti.into(),
            parent: parent_kind.into(),
            parent_name: hex::encode(parent_name),
            key_public,
            key_private,
            seal_public,
            seal_private,
            nv,
            ak_public,
            ak_private,
        };
        Ok(Self {
            inner: RefCell::new(Inner {
                ctx,
                parent: Some(parent),
                nv_key: nv_handles.map(|(k, _)| k),
                nv_counter: nv_handles.map(|(_, c)| c),
            }),
            file,
            verifying,
            state_key: RefCell::new(Some(state_key)),
        })
    }

    /// Opens an enrolled device; no TPM command is sent until the key or state key is used.
    pub fn open(file: &TpmKeyFile, tcti: Option<&str>) -> Result<Self, TpmError> {
        let public =
            b64url_decode(&file.key_public).ok_or(TpmError::Damaged("public area encoding"))?;
        let public = Public::unmarshall(&public).map_err(|_| TpmError::Damaged("public area"))?;
        let verifying = verifying_key_of(&public)?;
        let tcti = tcti.map(str::to_owned).unwrap_or_else(|| file.tcti.clone());
        let ctx = connect(&tcti)?;
        Ok(Self {
            inner: RefCell::new(Inner {
                ctx,
                parent: None,
                nv_key: None,
                nv_counter: None,
            }),
            file: file.clone(),
            verifying,
            state_key: RefCell::new(None),
        })
    }

    /// The blobs to store.
    pub fn file(&self) -> &TpmKeyFile {
        &self.file
    }

    fn with_parent<T>(
        &self,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let mut inner = self.inner.borrow_mut();
        let parent = match inner.parent {
            Some(p) => p,
            None => {
                let p = match self.file.parent.as_str() {
                    "persistent" => {
                        let (h, name) =
                            find_persistent_srk(&mut inner.ctx, false)?.ok_or(TpmError::KeyGone)?;
                        if hex::encode(name) != self.file.parent_name {
                            return Err(TpmError::KeyGone);
                        }
                        Parent::Persistent(h)
                    }
                    "template" => {
                        let (h, name) = create_srk(&mut inner.ctx)?;
                        if hex::encode(name) != self.file.parent_name {
                            flush(&mut inner.ctx, h);
                            return Err(TpmError::KeyGone);
                        }
                        Parent::Transient(h)
                    }
                    _ => return Err(TpmError::Damaged("unknown parent kind")),
                };
                inner.parent = Some(p);
                p
            }
        };
        let result = f(&mut inner.ctx, parent.handle());
        if let Err(TpmError::Lockout { wait_secs: None }) = result {
            return Err(TpmError::Lockout {
                wait_secs: lockout_interval(&mut inner.ctx),
            });
        }
        result
    }

    /// Reads (or unseals) the state key, once per process: NV_ReadPublic + NV_Read from NV
    /// storage, or Load + Unseal + FlushContext of the sealed object.
    pub fn state_key(&self) -> Result<Zeroizing<[u8; 32]>, TpmError> {
        if let Some(k) = self.state_key.borrow().as_ref() {
            return Ok(k.clone());
        }
        let key = match &self.file.nv {
            Some(nv) => self.with_nv(|ctx, inner_key, _| {
                let h = match inner_key {
                    Some(h) => *h,
                    None => {
                        let h = nv_open(ctx, nv.key_index, nv)?;
                        *inner_key = Some(h);
                        h
                    }
                };
                let bytes: [u8; 32] = nv_read(ctx, h, 32)?
                    .try_into()
                    .map_err(|_| TpmError::Damaged("state key length"))?;
                Ok(Zeroizing::new(bytes))
            })?,
            None => self.unseal_state_key()?,
        };
        *self.state_key.borrow_mut() = Some(key.clone());
        Ok(key)
    }

    /// The monotonic counter's value, if this enrolment has one (NV_ReadPublic once per
    /// process, then NV_Read).
    pub fn counter(&self) -> Result<Option<u64>, TpmError> {
        let Some(nv) = &self.file.nv else {
            return Ok(None);
        };
        self.with_nv(|ctx, _, counter| {
            let h = Self::counter_handle(ctx, counter, nv)?;
            nv_counter_value(ctx, h).map(Some)
        })
    }

    /// Advances the counter by one (one NV write) and returns the new value.
    pub fn advance(&self) -> Result<u64, TpmError> {
        let nv = self
            .file
            .nv
            .as_ref()
            .ok_or(TpmError::Damaged("this enrolment has no NV counter"))?;
        self.with_nv(|ctx, _, counter| {
            let h = Self::counter_handle(ctx, counter, nv)?;
            nv_increment(ctx, h)?;
            nv_counter_value(ctx, h)
        })
    }

    fn counter_handle(
        ctx: &mut Context,
        cached: &mut Option<NvIndexHandle>,
        nv: &NvRecord,
    ) -> Result<NvIndexHandle, TpmError> {
        Ok(match cached {
            Some(h) => *h,
            None => {
                let h = nv_open(ctx, nv.counter_index, nv)?;
                *cached = Some(h);
                h
            }
        })
    }

    /// Runs `f` with the context and the cached NV handles (no SRK needed for NV).
    fn with_nv<T>(
        &self,
        f: impl FnOnce(
            &mut Context,
            &mut Option<NvIndexHandle>,
            &mut Option<NvIndexHandle>,
        ) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let mut inner = self.inner.borrow_mut();
        let Inner {
            ctx,
            nv_key,
            nv_counter,
            ..
        } = &mut *inner;
        f(ctx, nv_key, nv_counter)
    }

    /// Removes the NV storage of an enrolment being replaced (`enroll --force`); best effort.
    pub fn retire(file: &TpmKeyFile, tcti: Option<&str>) {
        let Some(nv) = &file.nv else {
            return;
        };
        let tcti = tcti.map(str::to_owned).unwrap_or_else(|| file.tcti.clone());
        if let Ok(mut ctx) = connect(&tcti) {
            nv_remove(&mut ctx, nv.key_index);
            nv_remove(&mut ctx, nv.counter_index);
        }
    }

    fn unseal_state_key(&self) -> Result<Zeroizing<[u8; 32]>, TpmError> {
        let (Some(seal_public), Some(seal_private)) =
            (&self.file.seal_public, &self.file.seal_private)
        else {
            return Err(TpmError::Damaged(
                "the state key is neither in NV nor sealed",
            ));
        };
        self.with_parent(|ctx, parent| {
            let h = load_blob(ctx, parent, seal_public, seal_private)?;
            let result = ctx
                .unseal(h.into())
                .map_err(|e| classify(e, "unseal the state key"));
            flush(ctx, h);
            let data = result?;
            let bytes: [u8; 32] = data
                .value()
                .try_into()
                .map_err(|_| TpmError::Damaged("sealed key length"))?;
            Ok(Zeroizing::new(bytes))
        })
    }

    fn sign_digest(&self, digest: &[u8]) -> Result<Signature, TpmError> {
        self.with_parent(|ctx, parent| {
            let h = load_blob(ctx, parent, &self.file.key_public, &self.file.key_private)?;
            let validation = TPMT_TK_HASHCHECK {
                tag: TPM2_ST_HASHCHECK,
                hierarchy: TPM2_RH_NULL,
                digest: Default::default(),
            };
            let result = (|| {
                let digest = Digest::try_from(digest.to_vec()).map_err(|e| classify(e, "sign"))?;
                let ticket = validation.try_into().map_err(|e| classify(e, "sign"))?;
                ctx.sign(h, digest, SignatureScheme::Null, ticket)
                    .map_err(|e| classify(e, "sign with the device key"))
            })();
            flush(ctx, h);
            match result? {
                TpmSignature::EcDsa(sig) => {
                    signature_from_scalars(sig.signature_r().value(), sig.signature_s().value())
                        .map_err(|_| TpmError::Damaged("signature from the TPM"))
                }
                _ => Err(TpmError::Damaged("the TPM returned a non-ECDSA signature")),
            }
        })
    }
}

/// NV index of the RSA 2048 EK certificate (TCG EK Credential Profile).
pub const EK_CERT_NV_INDEX: u32 = 0x01c0_0002;
/// Persistent handle of the RSA EK (TCG Provisioning Guidance).
pub const EK_HANDLE: u32 = 0x8101_0001;

/// The endorsement keys hwpass uses, in the order it prefers them when the TPM has a
/// certificate for several: the EK kind, its certificate's NV index (TCG EK Credential Profile
/// 2.3 §2.2.1.4 low range, §2.2.1.5 high range), the persistent handle it is usually found at
/// (TCG Provisioning Guidance for the low range; where swtpm_setup puts the P-384 EK), and its
/// template (Annex B.3.3/B.3.4: L-1, L-2, H-3). RSA 2048 comes first: every TPM 2.0 has one,
/// and an issuer that knows a vendor's RSA EK CA keeps working.
const EKS: [(EkKind, u32, u32); 3] = [
    (EkKind::Rsa2048, EK_CERT_NV_INDEX, EK_HANDLE),
    (EkKind::EccP256, 0x01c0_000a, 0x8101_0002),
    (EkKind::EccP384, 0x01c0_0016, 0x8101_0016),
];

fn ek_template(kind: EkKind) -> AsymmetricAlgorithmSelection {
    match kind {
        EkKind::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        EkKind::EccP384 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP384),
        _ => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
    }
}

/// Whether `public` is an EK of `kind` (type, and curve or key size).
fn is_ek_of_kind(public: &Public, kind: EkKind) -> bool {
    match (public, kind) {
        (Public::Rsa { parameters, .. }, EkKind::Rsa2048) => {
            parameters.key_bits() == RsaKeyBits::Rsa2048
        }
        (Public::Ecc { parameters, .. }, EkKind::EccP256) => {
            parameters.ecc_curve() == EccCurve::NistP256
        }
        (Public::Ecc { parameters, .. }, EkKind::EccP384) => {
            parameters.ecc_curve() == EccCurve::NistP384
        }
        _ => false,
    }
}

/// Opens the EK of `kind`: the persistent one when its handle holds a key of that kind, else
/// one created from the TCG template (flushed by the caller when `transient`). Returns its
/// public area too, which says how to authorize it.
fn open_ek(ctx: &mut Context, kind: EkKind) -> Result<(KeyHandle, bool, Public), TpmError> {
    let persistent = EKS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map_or(EK_HANDLE, |(_, _, h)| *h);
    let handle = PersistentTpmHandle::new(persistent).map_err(|e| TpmError::Device {
        doing: "address the EK",
        rc: None,
        detail: e.to_string(),
    })?;
    if let Ok(h) =
        ctx.execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(handle)))
    {
        let h = KeyHandle::from(h);
        if let Ok((public, _, _)) = ctx.execute_without_session(|c| c.read_public(h)) {
            if is_ek_of_kind(&public, kind) {
                return Ok((h, false, public));
            }
        }
        // Another key lives there: close our reference to it (it stays persistent).
        let _ = ctx.tr_close(&mut ObjectHandle::from(h));
    }
    // create_ek_object runs its own null-auth session; ours must be off meanwhile.
    let h = ctx
        .execute_without_session(|c| ek::create_ek_object_2(c, ek_template(kind), None))
        .map_err(|e| classify(e, "create the endorsement key"))?;
    match ctx.execute_without_session(|c| c.read_public(h)) {
        Ok((public, _, _)) => Ok((h, true, public)),
        Err(e) => {
            flush(ctx, h);
            Err(classify(e, "read the endorsement key"))
        }
    }
}

impl TpmDevice {
    /// Collects attestation evidence: EK certificate (or EK public), AK public, device key
    /// public, and TPM2_Certify of the device key by the AK over `qualifying_data`.
    pub fn evidence(&self, qualifying_data: &[u8]) -> Result<Evidence, TpmError> {
        let ak_public =
            b64url_decode(&self.file.ak_public).ok_or(TpmError::Damaged("AK public area"))?;
        let key_public = b64url_decode(&self.file.key_public)
            .ok_or(TpmError::Damaged("public area encoding"))?;
        self.with_parent(|ctx, parent| {
            // The first EK (RSA 2048, ECC P-256, ECC P-384) with a certificate in NV.
            let ek_cert = EKS.iter().find_map(|(_, index, _)| {
                NvIndexTpmHandle::new(*index)
                    .ok()
                    .and_then(|idx| nv::read_full(ctx, NvAuth::Owner, idx).ok())
                    .map(trim_der)
                    .filter(|der| !der.is_empty())
            });
            let ek_public = if ek_cert.is_some() {
                None
            } else {
                let (ek, transient, _) = open_ek(ctx, EkKind::Rsa2048)?;
                let public = ctx.execute_without_session(|c| c.read_public(ek));
                if transient {
                    flush(ctx, ek);
                }
                let (public, _, _) = public.map_err(|e| classify(e, "read the endorsement key"))?;
                Some(
                    public
                        .marshall()
                        .map_err(|e| classify(e, "encode the endorsement key"))?,
                )
            };
            let ak = load_blob(ctx, parent, &self.file.ak_public, &self.file.ak_private)?;
            let key = match load_blob(ctx, parent, &self.file.key_public, &self.file.key_private) {
                Ok(k) => k,
                Err(e) => {
                    flush(ctx, ak);
                    return Err(e);
                }
            };
            let result = certify(ctx, key, ak, qualifying_data, "certify the device key");
            flush(ctx, key);
            flush(ctx, ak);
            let (certify, signature) = result?;
            let signature: [u8; 64] = signature.to_bytes().into();
            Ok(Evidence {
                ek_cert,
                ek_public,
                ak_public: ak_public.clone(),
                key_public: key_public.clone(),
                certify,
                signature,
            })
        })
    }

    /// TPM2_ActivateCredential with the AK and the EK: releases the credential the issuer made
    /// for this TPM's EK and this AK's name, or fails (another TPM, another AK). The EK is the
    /// one the credential was made for (RSA 2048, ECC P-256 or P-384, told by the form of the
    /// encrypted secret), which is the one whose certificate the request carried.
    pub fn activate(
        &self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let id_object = IdObject::try_from(id_object.to_vec())
            .map_err(|_| TpmError::Damaged("credential blob"))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(|_| TpmError::Damaged("credential secret"))?;
        let kind = EkKind::of_credential_secret(encrypted_secret)
            .ok_or(TpmError::Damaged("credential secret"))?;
        self.with_parent(|ctx, parent| {
            let (ek, ek_transient, ek_public) = open_ek(ctx, kind)?;
            let ak = match load_blob(ctx, parent, &self.file.ak_public, &self.file.ak_private) {
                Ok(ak) => ak,
                Err(e) => {
                    if ek_transient {
                        flush(ctx, ek);
                    }
                    return Err(e);
                }
            };
            let result = if ek_public.object_attributes().user_with_auth() {
                // High-range templates (H-3 for P-384) set userWithAuth: the EK's empty auth
                // value authorizes it (TCG EK Credential Profile 2.3, Annex B.3.4).
                ctx.execute_with_sessions(
                    (
                        Some(AuthSession::Password),
                        Some(AuthSession::Password),
                        None,
                    ),
                    |c| c.activate_credential(ak, ek, id_object, secret),
                )
                .map_err(|e| classify(e, "activate the credential"))
            } else {
                activate_with_policy_a(ctx, ak, ek, id_object, secret)
            };
            flush(ctx, ak);
            if ek_transient {
                flush(ctx, ek);
            }
            Ok(Zeroizing::new(result?.value().to_vec()))
        })
    }
}

/// ActivateCredential with a low-range EK (L-1, L-2: userWithAuth clear), authorized by its
/// policy A: PolicySecret(TPM_RH_ENDORSEMENT) in a SHA-256 policy session (TCG EK Credential
/// Profile 2.3, Annex B.3.3).
fn activate_with_policy_a(
    ctx: &mut Context,
    ak: KeyHandle,
    ek: KeyHandle,
    id_object: IdObject,
    secret: EncryptedSecret,
) -> Result<Digest, TpmError> {
    let session = ctx
        .execute_without_session(|c| {
            c.start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        })
        .map_err(|e| classify(e, "start a policy session"))?
        .ok_or(TpmError::Damaged("no policy session"))?;
    let policy =
        PolicySession::try_from(session).map_err(|e| classify(e, "start a policy session"))?;
    let r = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Default::default(),
                Default::default(),
                Default::default(),
                None,
            )
        })
        .map_err(|e| classify(e, "satisfy the EK policy"))
        .and_then(|_| {
            ctx.set_sessions((Some(AuthSession::Password), Some(session), None));
            let r = ctx.activate_credential(ak, ek, id_object, secret);
            ctx.set_sessions((Some(AuthSession::Password), None, None));
            r.map_err(|e| classify(e, "activate the credential"))
        });
    let _ = ctx.flush_context(SessionHandle::from(session).into());
    r
}

impl TpmDevice {
    /// TPM2_Certify of the device key by itself over `challenge`: the proof of possession a
    /// check uses. Costs what a plain signature does (Load, Certify, FlushContext) and also
    /// returns the TPM's signed clock. Returns the TPMS_ATTEST bytes and the signature.
    pub fn certify_self(&self, challenge: &[u8]) -> Result<(Vec<u8>, Signature), TpmError> {
        self.with_parent(|ctx, parent| {
            let key = load_blob(ctx, parent, &self.file.key_public, &self.file.key_private)?;
            let result = certify(
                ctx,
                key,
                key,
                challenge,
                "prove possession of the device key",
            );
            flush(ctx, key);
            result
        })
    }
}

/// TPM2_Certify of `object` by `signer` (both loaded, no auth values) over `qualifying`: the
/// TPMS_ATTEST bytes and the ECDSA signature (r and s left-padded; S normalized to low-S).
fn certify(
    ctx: &mut Context,
    object: KeyHandle,
    signer: KeyHandle,
    qualifying: &[u8],
    doing: &'static str,
) -> Result<(Vec<u8>, Signature), TpmError> {
    let data = Data::try_from(qualifying.to_vec()).map_err(|e| classify(e, doing))?;
    ctx.set_sessions((
        Some(AuthSession::Password),
        Some(AuthSession::Password),
        None,
    ));
    let r = ctx.certify(object.into(), signer, data, SignatureScheme::Null);
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    let (attest, signature) = r.map_err(|e| classify(e, doing))?;
    let bytes = attest
        .marshall()
        .map_err(|e| classify(e, "encode the certification"))?;
    let TpmSignature::EcDsa(sig) = signature else {
        return Err(TpmError::Damaged("the TPM returned a non-ECDSA signature"));
    };
    let sig = signature_from_scalars(sig.signature_r().value(), sig.signature_s().value())
        .map_err(|_| TpmError::Damaged("signature from the TPM"))?;
    Ok((bytes, sig))
}

/// An NV index may be larger than the certificate in it: keep the DER SEQUENCE only.
fn trim_der(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = match bytes.get(..4) {
        Some([0x30, 0x82, hi, lo]) => 4 + ((*hi as usize) << 8 | *lo as usize),
        Some([0x30, 0x81, l, _]) => 3 + *l as usize,
        _ => bytes.len(),
    };
    bytes.truncate(len.min(bytes.len()));
    bytes
}

/// How long the TPM's lockout lasts per failure (TPM_PT_LOCKOUT_INTERVAL), if it says.
fn lockout_interval(ctx: &mut Context) -> Option<u32> {
    let (data, _) = ctx
        .execute_without_session(|c| {
            c.get_capability(
                CapabilityType::TpmProperties,
                PropertyTag::LockoutInterval.into(),
                1,
            )
        })
        .ok()?;
    match data {
        CapabilityData::TpmProperties(list) => {
            list.find(PropertyTag::LockoutInterval).map(|p| p.value())
        }
        _ => None,
    }
}

impl Drop for TpmDevice {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        if let Some(Parent::Transient(h)) = inner.parent.take() {
            flush(&mut inner.ctx, h);
        }
    }
}

impl Signer for TpmDevice {
    fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    fn try_sign(&self, msg: &[u8]) -> Result<Signature, SignError> {
        let digest = Sha256::digest(msg);
        self.sign_digest(&digest)
            .map_err(|e| SignError::device(DeviceFault::from(e)))
    }
}

impl Device for TpmDevice {
    fn key(&self) -> &dyn Signer {
        self
    }
    fn seal(&self, plain: &[u8], jkt: &str) -> Result<Vec<u8>, DesktopError> {
        let key = self.state_key()?;
        state::seal(plain, &key, jkt)
    }
    fn unseal(&self, sealed: &[u8], jkt: &str) -> Result<Zeroizing<Vec<u8>>, DesktopError> {
        let key = self.state_key()?;
        state::open_sealed(sealed, &key, jkt)
    }
    fn counter(&self) -> Result<Option<u64>, DesktopError> {
        Ok(TpmDevice::counter(self)?)
    }
    fn advance(&self) -> Result<u64, DesktopError> {
        Ok(TpmDevice::advance(self)?)
    }
    fn evidence(&self, qualifying_data: &[u8]) -> Result<Option<Evidence>, DesktopError> {
        Ok(Some(TpmDevice::evidence(self, qualifying_data)?))
    }
    fn prove(&self, jwk: &Jwk) -> Result<Option<TpmClock>, DesktopError> {
        // TPM2_Certify of the key by itself over a fresh challenge: a signature by the key
        // (proof of possession) over a TPM-made structure that also carries the TPM clock.
        let mut challenge = [0u8; 32];
        getrandom::getrandom(&mut challenge).map_err(|_| SignError::Rng)?;
        let (certify, signature) = self.certify_self(&challenge)?;
        verify_self_certify(&certify, &signature, jwk, &challenge)
            .map(Some)
            .map_err(|e| {
                DesktopError::KeyUnusable(format!(
                    "the TPM's proof does not verify against the enrolled key ({e})"
                ))
            })
    }
    fn activate(
        &self,
        id_object: &[u8],
        secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DesktopError> {
        TpmDevice::activate(self, id_object, secret).map_err(|e| match e {
            // Another TPM cannot decrypt the seed: swtpm answers TPM_RC_FAILURE, others an
            // integrity or value error.
            TpmError::Device { .. } | TpmError::Foreign | TpmError::FailureMode => DesktopError::Foreign(
                "this delivery was sealed to another machine's TPM (or another enrolment); request a pass from this desktop".into(),
            ),
            other => other.into(),
        })
    }
}

/// The TPM [`Backend`]: a non-exportable key in a TPM 2.0 reached through a TCTI.
#[derive(Debug)]
pub struct TpmBackend;

impl Backend for TpmBackend {
    fn name(&self) -> &'static str {
        "tpm"
    }

    fn kind(&self) -> BindingKind {
        BindingKind::Tpm
    }

    fn probe(&self, opts: &DeviceOptions) -> Result<(), DesktopError> {
        Ok(probe(&resolve_tcti(opts.tcti.as_deref()))?)
    }

    fn explicitly_requested(&self, opts: &DeviceOptions) -> bool {
        requested_tcti(opts.tcti.as_deref()).is_some()
    }

    fn create(&self, opts: &DeviceOptions) -> Result<Created, DesktopError> {
        let device = TpmDevice::create(&resolve_tcti(opts.tcti.as_deref()))?;
        let record =
            serde_json::to_value(device.file()).map_err(|e| DesktopError::Input(e.to_string()))?;
        let warning = device.file().nv.is_none().then(|| {
            "the TPM's owner hierarchy has a password, so hwpass could not create its NV counter: \
             the sealed state is not protected against being replaced by an older copy"
                .to_string()
        });
        Ok(Created {
            device: Box::new(device),
            record,
            warning,
        })
    }

    fn retire(&self, record: &serde_json::Value, opts: &DeviceOptions) {
        if let Ok(file) = TpmKeyFile::deserialize(record) {
            TpmDevice::retire(&file, requested_tcti(opts.tcti.as_deref()).as_deref());
        }
    }

    fn open(
        &self,
        record: &serde_json::Value,
        _jwk: &Jwk,
        opts: &DeviceOptions,
    ) -> Result<Box<dyn Device>, DesktopError> {
        let file = TpmKeyFile::deserialize(record)
            .map_err(|_| TpmError::Damaged("the TPM key record is not valid"))?;
        let tcti = requested_tcti(opts.tcti.as_deref());
        Ok(Box::new(TpmDevice::open(&file, tcti.as_deref())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nv_padding_after_a_certificate_is_cut_off() {
        let mut cert = vec![0x30, 0x82, 0x00, 0x03, 1, 2, 3];
        cert.extend_from_slice(&[0xff; 9]);
        assert_eq!(trim_der(cert), vec![0x30, 0x82, 0x00, 0x03, 1, 2, 3]);
        assert_eq!(
            trim_der(vec![0x30, 0x81, 2, 9, 9, 0xff]),
            vec![0x30, 0x81, 2, 9, 9]
        );
        assert_eq!(trim_der(vec![1, 2]), vec![1, 2]);
    }

    #[test]
    fn refusals_for_good_are_told_apart_from_trouble_now() {
        assert!(TpmError::Foreign.is_unusable_here());
        assert!(TpmError::KeyGone.is_unusable_here());
        assert!(!TpmError::NoSlots.is_unusable_here());
        let e = TpmError::Device {
            doing: "sign",
            rc: Some(0x98e),
            detail: "bad".into(),
        };
        assert!(!e.is_unusable_here());
        assert!(e.to_string().ends_with("(TSS2_RC 0x98e)"), "{e}");
    }
}
