//! The PKCS#11 (HSM) key manager. The only module that imports `cryptoki`.
//!
//! The issuer key is an EC P-256 key pair on the token, created here with CKA_TOKEN,
//! CKA_PRIVATE, CKA_SENSITIVE, not CKA_EXTRACTABLE and sign-only; it is used through
//! CKM_ECDSA over a SHA-256 digest computed here (CKM_ECDSA returns raw r‖s). Every failure
//! keeps the PKCS#11 function and `CKR_*` code it came from ([`Pkcs11Error::Call`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use p256::ecdsa::{Signature, VerifyingKey};
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};

use super::pkcs11_uri::{PinSource, Pkcs11Uri};
use super::{IssuerKey, KeyError, KeyFacts, KeyManager, PinPrompt};
use crate::core::jwk::Jwk;
use crate::core::jws::verify_es256;
use crate::core::signer::{signature_from_scalars, SignError, Signer};

/// PKCS#11 return values (`CKR_*`), as [`Pkcs11Error::Call`] carries them.
pub use cryptoki::error::RvError as Ckr;

/// Environment variable read for the HSM PIN when the URI has no `pin-source`.
pub const PIN_ENV: &str = "HWPASS_PIN";

/// Why the HSM failed or refused: typed facts, one sentence each.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Error {
    /// The module file does not exist.
    #[error("the PKCS#11 module {} does not exist", path.display())]
    ModuleMissing {
        /// The `module-path`.
        path: PathBuf,
    },
    /// The module could not be loaded.
    #[error("cannot load the PKCS#11 module {}: {detail}", path.display())]
    ModuleLoad {
        /// The `module-path`.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// No token matches the URI.
    #[error("no token matching {uri} is present in {}", module.display())]
    NoToken {
        /// The URI (no query).
        uri: String,
        /// The module searched.
        module: PathBuf,
    },
    /// Several tokens match the URI.
    #[error("more than one token matches {uri}")]
    AmbiguousToken {
        /// The URI (no query).
        uri: String,
    },
    /// `keygen` found a key where it would create one.
    #[error("the token already holds a key at {uri}; keygen never overwrites a key")]
    KeyExists {
        /// The URI (no query).
        uri: String,
    },
    /// No key at the URI.
    #[error("no EC {what} key at {uri} on the token")]
    NoKey {
        /// The URI (no query).
        uri: String,
        /// `private` or `public`.
        what: &'static str,
    },
    /// Several keys match the URI.
    #[error("{count} EC {what} keys match {uri}")]
    AmbiguousKey {
        /// The URI (no query).
        uri: String,
        /// `private` or `public`.
        what: &'static str,
        /// How many matched.
        count: usize,
    },
    /// The key is on another curve.
    #[error("the HSM key is not on curve P-256")]
    NotP256,
    /// The public and private objects do not belong together.
    #[error("the public key at {uri} does not match its private key; the token holds inconsistent objects")]
    Inconsistent {
        /// The URI (no query).
        uri: String,
    },
    /// An earlier operation panicked while holding the session.
    #[error("an earlier HSM operation panicked")]
    Poisoned,
    /// A PKCS#11 function returned an error code.
    #[error("{}", call_message(*function, *rv, doing))]
    Call {
        /// The PKCS#11 function.
        function: Function,
        /// Its `CKR_*` return value.
        rv: RvError,
        /// What hwpass was doing.
        doing: &'static str,
    },
    /// cryptoki failed outside a PKCS#11 call (a conversion, a missing symbol).
    #[error("the HSM failed to {doing}: {detail}")]
    Other {
        /// What hwpass was doing.
        doing: &'static str,
        /// cryptoki's message.
        detail: String,
    },
    /// The token returned a value that is not a valid key or signature.
    #[error("the HSM returned a malformed {0}")]
    Malformed(&'static str),
}

impl Pkcs11Error {
    fn from_ck(e: CkError, doing: &'static str) -> Self {
        match e {
            CkError::Pkcs11(rv, function) => Self::Call {
                function,
                rv,
                doing,
            },
            other => Self::Other {
                doing,
                detail: other.to_string(),
            },
        }
    }

    /// The `CKR_*` code, when a PKCS#11 function returned one.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            Self::Call { rv, .. } => Some(*rv),
            _ => None,
        }
    }
}

/// One sentence per `CKR_*` that people meet, naming the code and the function.
fn call_message(function: Function, rv: RvError, doing: &str) -> String {
    let what = match rv {
        RvError::PinIncorrect => "the HSM refused the PIN".to_string(),
        RvError::PinLocked => "the HSM user PIN is locked after too many wrong attempts".into(),
        RvError::PinExpired => "the HSM user PIN has expired".into(),
        RvError::PinLenRange | RvError::PinInvalid => {
            "the PIN has a length or characters this HSM does not accept".into()
        }
        RvError::UserPinNotInitialized => "the HSM token has no user PIN yet".into(),
        RvError::DeviceMemory | RvError::HostMemory => {
            format!("the HSM ran out of memory while trying to {doing}")
        }
        RvError::TokenNotPresent | RvError::DeviceRemoved => "the HSM token was removed".into(),
        RvError::TokenWriteProtected => {
            format!("the HSM token is write-protected, so it cannot {doing}")
        }
        RvError::SessionHandleInvalid | RvError::SessionClosed => {
            format!("the HSM session closed while trying to {doing}")
        }
        _ => format!("the HSM failed to {doing}"),
    };
    format!("{what} ({:?} from C_{function:?})", CkrName(rv))
}

/// `CKR_PIN_INCORRECT` rather than cryptoki's `PinIncorrect`.
struct CkrName(RvError);

impl std::fmt::Debug for CkrName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let camel = format!("{:?}", self.0);
        let mut out = String::from("CKR");
        for c in camel.chars() {
            if c.is_ascii_uppercase() {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        f.write_str(&out)
    }
}

/// DER of the prime256v1 OID, the CKA_EC_PARAMS of a P-256 key.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// An initialized PKCS#11 module and the slot holding the token the URI names.
#[derive(Clone)]
pub struct Hsm {
    ctx: Pkcs11,
    slot: Slot,
    uri: Pkcs11Uri,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hsm({})", self.uri)
    }
}

/// What a key's attributes say about how it is protected, read back through PKCS#11.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct KeyProtection {
    pub token: bool,
    pub private: bool,
    pub sensitive: bool,
    pub extractable: bool,
    pub always_sensitive: bool,
    pub never_extractable: bool,
    pub sign: bool,
    pub decrypt: bool,
    pub derive: bool,
}

impl Hsm {
    /// Loads the module and finds the token. Fails with one sentence per cause.
    pub fn open(uri: &Pkcs11Uri) -> Result<Self, Pkcs11Error> {
        if !uri.module_path.exists() {
            return Err(Pkcs11Error::ModuleMissing {
                path: uri.module_path.clone(),
            });
        }
        let ctx = Pkcs11::new(&uri.module_path).map_err(|e| Pkcs11Error::ModuleLoad {
            path: uri.module_path.clone(),
            detail: e.to_string(),
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(Pkcs11Error::from_ck(e, "initialize the PKCS#11 module")),
        }
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| Pkcs11Error::from_ck(e, "list the HSM slots"))?;
        let mut found = None;
        for slot in slots {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| Pkcs11Error::from_ck(e, "read token information"))?;
            let matches = uri.token.as_deref().is_none_or(|t| info.label() == t)
                && uri
                    .serial
                    .as_deref()
                    .is_none_or(|s| info.serial_number() == s)
                && uri
                    .manufacturer
                    .as_deref()
                    .is_none_or(|m| info.manufacturer_id() == m)
                && uri.model.as_deref().is_none_or(|m| info.model() == m)
                && uri.slot_id.is_none_or(|id| slot.id() == id);
            if matches {
                if found.is_some() {
                    return Err(Pkcs11Error::AmbiguousToken {
                        uri: uri.to_string(),
                    });
                }
                found = Some(slot);
            }
        }
        let slot = found.ok_or_else(|| Pkcs11Error::NoToken {
            uri: uri.to_string(),
            module: uri.module_path.clone(),
        })?;
        Ok(Self {
            ctx,
            slot,
            uri: uri.clone(),
        })
    }

    /// The URI this HSM was opened with.
    pub fn uri(&self) -> &Pkcs11Uri {
        &self.uri
    }

    /// The same token, addressing the key `uri` names instead (key rotation: several issuer
    /// keys live in one token).
    fn with_uri(&self, uri: Pkcs11Uri) -> Self {
        Self {
            ctx: self.ctx.clone(),
            slot: self.slot,
            uri,
        }
    }

    /// Opens a session and logs the user in. CKR_USER_ALREADY_LOGGED_IN counts as success (a
    /// login is per application, not per session).
    fn session(&self, pin: &SecretString, rw: bool) -> Result<Session, Pkcs11Error> {
        let session = if rw {
            self.ctx.open_rw_session(self.slot)
        } else {
            self.ctx.open_ro_session(self.slot)
        }
        .map_err(|e| Pkcs11Error::from_ck(e, "open an HSM session"))?;
        match session.login(UserType::User, Some(pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(Pkcs11Error::from_ck(e, "log in to the HSM token")),
        }
    }

    /// Creates the key pair the URI names. Refuses if any object already has its label or id.
    pub fn generate(&self, pin: &SecretString) -> Result<Pkcs11Key, Pkcs11Error> {
        let session = self.session(pin, true)?;
        let existing = session
            .find_objects(&self.selector(None))
            .map_err(|e| Pkcs11Error::from_ck(e, "search the token"))?;
        if !existing.is_empty() {
            return Err(Pkcs11Error::KeyExists {
                uri: self.uri.to_string(),
            });
        }
        let label = self.uri.object.clone().unwrap_or_default().into_bytes();
        let id = match &self.uri.id {
            Some(id) => id.clone(),
            None => {
                let mut id = vec![0u8; 16];
                getrandom::getrandom(&mut id).map_err(|e| Pkcs11Error::Other {
                    doing: "make a key id",
                    detail: e.to_string(),
                })?;
                id
            }
        };
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Derive(false),
            Attribute::Unwrap(false),
            Attribute::Label(label),
            Attribute::Id(id),
        ];
        let (pub_handle, priv_handle) = session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .map_err(|e| Pkcs11Error::from_ck(e, "generate the key pair"))?;
        let verifying = read_public(&session, pub_handle)?;
        Ok(Pkcs11Key::new(
            self.clone(),
            pin.clone(),
            session,
            priv_handle,
            verifying,
        ))
    }

    /// Reads the public key the URI names; needs no PIN (public objects are not CKA_PRIVATE).
    pub fn public_key(&self) -> Result<VerifyingKey, Pkcs11Error> {
        let session = self
            .ctx
            .open_ro_session(self.slot)
            .map_err(|e| Pkcs11Error::from_ck(e, "open an HSM session"))?;
        let public = self.find_one(&session, ObjectClass::PUBLIC_KEY)?;
        read_public(&session, public)
    }

    /// Opens the existing key pair the URI names and checks that its public and private halves
    /// belong together (one test signature).
    pub fn open_key(&self, pin: &SecretString) -> Result<Pkcs11Key, Pkcs11Error> {
        let session = self.session(pin, false)?;
        let private = self.find_one(&session, ObjectClass::PRIVATE_KEY)?;
        let public = self.find_one(&session, ObjectClass::PUBLIC_KEY)?;
        let verifying = read_public(&session, public)?;
        let key = Pkcs11Key::new(self.clone(), pin.clone(), session, private, verifying);
        let probe = b"hwpass key pair consistency check";
        let raw = key.sign_digest(&Sha256::digest(probe))?;
        let sig = signature_from_scalars(&raw[..32], &raw[32..])
            .map_err(|_| Pkcs11Error::Malformed("signature"))?;
        verify_es256(&verifying, probe, &sig.to_bytes()).map_err(|_| {
            Pkcs11Error::Inconsistent {
                uri: self.uri.to_string(),
            }
        })?;
        Ok(key)
    }

    /// Logs this application out of the token (PKCS#11 logins are per application, so every
    /// session loses its login), as another part of the application or a token reset would;
    /// keys opened before log in again on their next use.
    pub fn logout(&self) -> Result<(), Pkcs11Error> {
        let session = self
            .ctx
            .open_ro_session(self.slot)
            .map_err(|e| Pkcs11Error::from_ck(e, "open an HSM session"))?;
        session
            .logout()
            .map_err(|e| Pkcs11Error::from_ck(e, "log out of the HSM token"))
    }

    fn selector(&self, class: Option<ObjectClass>) -> Vec<Attribute> {
        let mut t = Vec::new();
        if let Some(class) = class {
            t.push(Attribute::Class(class));
            t.push(Attribute::KeyType(KeyType::EC));
        }
        if let Some(o) = &self.uri.object {
            t.push(Attribute::Label(o.clone().into_bytes()));
        }
        if let Some(id) = &self.uri.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }

    fn find_one(&self, session: &Session, class: ObjectClass) -> Result<ObjectHandle, Pkcs11Error> {
        let found = session
            .find_objects(&self.selector(Some(class)))
            .map_err(|e| Pkcs11Error::from_ck(e, "search the token"))?;
        let what = if class == ObjectClass::PRIVATE_KEY {
            "private"
        } else {
            "public"
        };
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(Pkcs11Error::NoKey {
                uri: self.uri.to_string(),
                what,
            }),
            _ => Err(Pkcs11Error::AmbiguousKey {
                uri: self.uri.to_string(),
                what,
                count: found.len(),
            }),
        }
    }
}

fn read_public(session: &Session, handle: ObjectHandle) -> Result<VerifyingKey, Pkcs11Error> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| Pkcs11Error::from_ck(e, "read the public key"))?;
    let mut point = None;
    for a in attrs {
        match a {
            Attribute::EcParams(p) if p != P256_PARAMS => return Err(Pkcs11Error::NotP256),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let point = point.ok_or(Pkcs11Error::Malformed("public key"))?;
    // PKCS#11 v2.40 §2.3.3: CKA_EC_POINT is the DER OCTET STRING around 04‖X‖Y; a few modules
    // return the bare point, which we accept as well.
    let raw = match point.as_slice() {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        bare if bare.len() == 65 => bare,
        _ => return Err(Pkcs11Error::Malformed("public key")),
    };
    VerifyingKey::from_sec1_bytes(raw).map_err(|_| Pkcs11Error::Malformed("public key"))
}

/// An issuer key inside the HSM, with a logged-in session.
pub struct Pkcs11Key {
    /// The session and the private key's handle in it; replaced when the token drops the
    /// session.
    live: Mutex<(Session, ObjectHandle)>,
    hsm: Hsm,
    pin: SecretString,
    verifying: VerifyingKey,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkcs11Key({})", Jwk::new(self.verifying).thumbprint())
    }
}

impl Pkcs11Key {
    fn new(
        hsm: Hsm,
        pin: SecretString,
        session: Session,
        handle: ObjectHandle,
        verifying: VerifyingKey,
    ) -> Self {
        Self {
            live: Mutex::new((session, handle)),
            hsm,
            pin,
            verifying,
        }
    }

    /// Reads back how the private key is protected.
    pub fn protection(&self) -> Result<KeyProtection, Pkcs11Error> {
        let live = self.live.lock().map_err(|_| poisoned())?;
        let (session, handle) = (&live.0, live.1);
        let types = [
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::AlwaysSensitive,
            AttributeType::NeverExtractable,
            AttributeType::Sign,
            AttributeType::Decrypt,
            AttributeType::Derive,
        ];
        let attrs = session
            .get_attributes(handle, &types)
            .map_err(|e| Pkcs11Error::from_ck(e, "read the key attributes"))?;
        let mut p = KeyProtection {
            token: false,
            private: false,
            sensitive: false,
            extractable: true,
            always_sensitive: false,
            never_extractable: false,
            sign: false,
            decrypt: true,
            derive: true,
        };
        for a in attrs {
            match a {
                Attribute::Token(v) => p.token = v,
                Attribute::Private(v) => p.private = v,
                Attribute::Sensitive(v) => p.sensitive = v,
                Attribute::Extractable(v) => p.extractable = v,
                Attribute::AlwaysSensitive(v) => p.always_sensitive = v,
                Attribute::NeverExtractable(v) => p.never_extractable = v,
                Attribute::Sign(v) => p.sign = v,
                Attribute::Decrypt(v) => p.decrypt = v,
                Attribute::Derive(v) => p.derive = v,
                _ => {}
            }
        }
        Ok(p)
    }

    /// Tries to read the private value; `Ok(None)` when the token refuses, as it must.
    pub fn try_extract_private_value(&self) -> Result<Option<Vec<u8>>, Pkcs11Error> {
        let live = self.live.lock().map_err(|_| poisoned())?;
        match live.0.get_attributes(live.1, &[AttributeType::Value]) {
            Ok(attrs) => Ok(attrs.into_iter().find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })),
            Err(CkError::Pkcs11(RvError::AttributeSensitive, _)) => Ok(None),
            Err(e) => Err(Pkcs11Error::from_ck(e, "read the key value")),
        }
    }
}

impl Signer for Pkcs11Key {
    fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    fn try_sign(&self, msg: &[u8]) -> Result<Signature, SignError> {
        self.sign_digest(&Sha256::digest(msg))
            .map_err(SignError::device)
            .and_then(|raw| signature_from_scalars(&raw[..32], &raw[32..]))
    }
}

impl Pkcs11Key {
    /// CKM_ECDSA over a digest: r‖s, 64 bytes.
    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let mut live = self.live.lock().map_err(|_| poisoned())?;
        let raw = match live.0.sign(&Mechanism::Ecdsa, live.1, digest) {
            // The token dropped the session (token reset, idle timeout, a logout elsewhere in
            // the application): open a new one, log in, find the key again, retry once.
            Err(CkError::Pkcs11(
                RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid,
                _,
            )) => {
                let session = self.hsm.session(&self.pin, false)?;
                let handle = self.hsm.find_one(&session, ObjectClass::PRIVATE_KEY)?;
                *live = (session, handle);
                live.0.sign(&Mechanism::Ecdsa, live.1, digest)
            }
            other => other,
        }
        .map_err(|e| Pkcs11Error::from_ck(e, "sign in the HSM"))?;
        if raw.len() != 64 {
            return Err(Pkcs11Error::Malformed("signature"));
        }
        Ok(raw)
    }
}

impl IssuerKey for Pkcs11Key {
    fn describe(&self) -> Result<KeyFacts, KeyError> {
        let p = self.protection()?;
        Ok(KeyFacts {
            protection: vec![
                ("token", p.token),
                ("private", p.private),
                ("sensitive", p.sensitive),
                ("extractable", p.extractable),
                ("always_sensitive", p.always_sensitive),
                ("never_extractable", p.never_extractable),
            ],
            usage: vec![
                ("sign", p.sign),
                ("decrypt", p.decrypt),
                ("derive", p.derive),
            ],
            private_value_readable: self.try_extract_private_value()?.is_some(),
        })
    }
}

/// The [`KeyManager`] for `pkcs11:` URIs. Parsing touches no device; the module is loaded and
/// the token found on first use, once per process (every label of the same token shares it).
#[derive(Debug)]
pub struct Pkcs11Manager {
    uri: Pkcs11Uri,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    hsm: Mutex<Option<Hsm>>,
    pin: Mutex<Option<SecretString>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl Pkcs11Manager {
    /// The [`super::Registration`] entry: parses a `pkcs11:` URI.
    pub fn parse(uri: &str) -> Result<Arc<dyn KeyManager>, KeyError> {
        Ok(Arc::new(Self {
            uri: Pkcs11Uri::parse(uri)?,
            shared: Arc::default(),
        }))
    }

    /// The token, opened once.
    pub fn hsm(&self) -> Result<Hsm, Pkcs11Error> {
        let mut hsm = self.shared.hsm.lock().map_err(|_| poisoned())?;
        let base = match hsm.as_ref() {
            Some(h) => h.clone(),
            None => {
                let h = Hsm::open(&self.uri)?;
                *hsm = Some(h.clone());
                h
            }
        };
        Ok(base.with_uri(self.uri.clone()))
    }

    fn pin(&self) -> Result<SecretString, KeyError> {
        self.shared
            .pin
            .lock()
            .map_err(|_| poisoned())?
            .clone()
            .ok_or_else(|| KeyError::Pin("the HSM is not unlocked (no PIN was read)".into()))
    }
}

impl KeyManager for Pkcs11Manager {
    fn display_uri(&self) -> String {
        self.uri.to_string()
    }

    fn label(&self) -> Option<&str> {
        self.uri.object.as_deref()
    }

    fn with_label(&self, label: &str) -> Arc<dyn KeyManager> {
        let mut uri = self.uri.clone();
        uri.object = Some(label.into());
        uri.id = None;
        Arc::new(Self {
            uri,
            shared: self.shared.clone(),
        })
    }

    fn public_key(&self) -> Result<VerifyingKey, KeyError> {
        Ok(self.hsm()?.public_key()?)
    }

    fn unlock(&self, prompt: &dyn PinPrompt) -> Result<(), KeyError> {
        // The token first: a wrong module or token is reported before anyone is asked a PIN.
        self.hsm()?;
        let pin = resolve_pin(&self.uri, prompt)?;
        *self.shared.pin.lock().map_err(|_| poisoned())? = Some(pin);
        Ok(())
    }

    fn create(&self) -> Result<Box<dyn IssuerKey>, KeyError> {
        Ok(Box::new(self.hsm()?.generate(&self.pin()?)?))
    }

    fn open(&self) -> Result<Box<dyn IssuerKey>, KeyError> {
        Ok(Box::new(self.hsm()?.open_key(&self.pin()?)?))
    }
}

/// The PIN: the URI's `pin-source`, else [`PIN_ENV`], else the prompt. Never argv.
///
/// A PIN read from an environment variable is removed from this process's environment at
/// once, so nothing started later inherits it (the kernel's copy of the initial environment,
/// `/proc/PID/environ`, is not ours to erase: a service should use `pin-source=file:`). Call
/// this before the process starts threads that read the environment. A PIN file must be open
/// to its owner only.
pub fn resolve_pin(uri: &Pkcs11Uri, prompt: &dyn PinPrompt) -> Result<SecretString, KeyError> {
    let from_env = |var: &str| {
        let pin = std::env::var(var)
            .map_err(|_| KeyError::Pin(format!("the PIN variable {var} is not set")))?;
        std::env::remove_var(var);
        Ok::<_, KeyError>(pin)
    };
    let pin = match &uri.pin_source {
        Some(PinSource::Env(var)) => from_env(var)?,
        Some(PinSource::File(path)) => {
            use std::os::unix::fs::PermissionsExt as _;
            let cannot = |e: std::io::Error| {
                KeyError::Pin(format!("cannot read the PIN file {}: {e}", path.display()))
            };
            let mode = std::fs::metadata(path)
                .map_err(cannot)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::PinFileExposed {
                    path: path.clone(),
                    mode: mode & 0o7777,
                });
            }
            let text = std::fs::read_to_string(path).map_err(cannot)?;
            text.lines().next().unwrap_or_default().to_string()
        }
        None if std::env::var_os(PIN_ENV).is_some() => from_env(PIN_ENV)?,
        None => {
            return prompt
                .pin(&format!("PIN for {uri}: "))
                .map_err(KeyError::Pin)
        }
    };
    if pin.is_empty() {
        return Err(KeyError::Pin("the HSM PIN is empty".into()));
    }
    Ok(SecretString::from(pin))
}

fn poisoned() -> Pkcs11Error {
    Pkcs11Error::Poisoned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_errors_name_the_code_and_the_function() {
        let e = Pkcs11Error::Call {
            function: Function::Login,
            rv: RvError::PinIncorrect,
            doing: "log in to the HSM token",
        };
        assert_eq!(
            e.to_string(),
            "the HSM refused the PIN (CKR_PIN_INCORRECT from C_Login)"
        );
        assert_eq!(e.rv(), Some(RvError::PinIncorrect));
        let other = Pkcs11Error::Call {
            function: Function::Sign,
            rv: RvError::FunctionFailed,
            doing: "sign in the HSM",
        };
        assert_eq!(
            other.to_string(),
            "the HSM failed to sign in the HSM (CKR_FUNCTION_FAILED from C_Sign)"
        );
    }

    #[test]
    fn pin_comes_from_the_named_file_and_never_empty() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pin");
        std::fs::write(&file, "2468\nignored\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let uri = Pkcs11Uri::parse(&format!(
            "pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:{}",
            file.display()
        ))
        .unwrap();
        let pin = resolve_pin(&uri, &super::super::NoPrompt).unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&pin), "2468");
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            resolve_pin(&uri, &super::super::NoPrompt),
            Err(KeyError::Pin(_))
        ));
    }

    #[test]
    fn a_pin_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pin");
        std::fs::write(&file, "2468\n").unwrap();
        let uri = Pkcs11Uri::parse(&format!(
            "pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:{}",
            file.display()
        ))
        .unwrap();
        for mode in [0o640, 0o604, 0o620] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            match resolve_pin(&uri, &super::super::NoPrompt) {
                Err(KeyError::PinFileExposed { mode: m, .. }) => assert_eq!(m, mode),
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_pin_from_the_environment_is_removed_from_it() {
        // A name no other test reads.
        let var = "HWPASS_TEST_PIN_REMOVED";
        std::env::set_var(var, "1357");
        let uri = Pkcs11Uri::parse(&format!(
            "pkcs11:token=t;object=o?module-path=/m.so&pin-source=env:{var}"
        ))
        .unwrap();
        let pin = resolve_pin(&uri, &super::super::NoPrompt).unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&pin), "1357");
        assert!(
            std::env::var_os(var).is_none(),
            "the PIN stays in the environment"
        );
        assert!(matches!(
            resolve_pin(&uri, &super::super::NoPrompt),
            Err(KeyError::Pin(_))
        ));
    }
}
