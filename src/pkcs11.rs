//! The PKCS#11 (HSM) key backend. The only module that imports `cryptoki`.
//!
//! The issuer key is an EC P-256 key pair on the token, created here with CKA_TOKEN,
//! CKA_PRIVATE, CKA_SENSITIVE, not CKA_EXTRACTABLE and sign-only; it is used through
//! CKM_ECDSA over a SHA-256 digest computed here (CKM_ECDSA returns raw r‖s).

use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use p256::ecdsa::{Signature, VerifyingKey};
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};

use crate::keys::{signature_from_scalars, BackendKind, KeyBackend, KeyError};
use crate::pkcs11_uri::Pkcs11Uri;

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
    pub fn open(uri: &Pkcs11Uri) -> Result<Self, KeyError> {
        if !uri.module_path.exists() {
            return Err(device(format!(
                "the PKCS#11 module {} does not exist; install it (SoftHSM: apt-get install softhsm2) or fix module-path in the config",
                uri.module_path.display()
            )));
        }
        let ctx = Pkcs11::new(&uri.module_path).map_err(|e| {
            device(format!(
                "cannot load the PKCS#11 module {}: {e}; check that module-path points to a PKCS#11 library",
                uri.module_path.display()
            ))
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(ck(e, "initialize the PKCS#11 module")),
        }
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| ck(e, "list the HSM slots"))?;
        let mut found = None;
        for slot in slots {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| ck(e, "read token information"))?;
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
                    return Err(device(format!(
                        "more than one token matches {uri}; add serial= to the URI to pick one"
                    )));
                }
                found = Some(slot);
            }
        }
        let slot = found.ok_or_else(|| {
            device(format!(
                "no token matching {uri} is present in {}; create it (softhsm/setup-token) or fix token= in the config",
                uri.module_path.display()
            ))
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

    /// The same token, addressing the key labelled `label` instead (key rotation: several
    /// issuer keys live in one token).
    pub fn with_object(&self, label: &str) -> Self {
        let mut uri = self.uri.clone();
        uri.object = Some(label.into());
        uri.id = None;
        Self {
            ctx: self.ctx.clone(),
            slot: self.slot,
            uri,
        }
    }

    /// Opens a session and logs the user in. CKR_USER_ALREADY_LOGGED_IN counts as success (a
    /// login is per application, not per session).
    fn session(&self, pin: &SecretString, rw: bool) -> Result<Session, KeyError> {
        let session = if rw {
            self.ctx.open_rw_session(self.slot)
        } else {
            self.ctx.open_ro_session(self.slot)
        }
        .map_err(|e| ck(e, "open an HSM session"))?;
        match session.login(UserType::User, Some(pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(ck(e, "log in to the HSM token")),
        }
    }

    /// Creates the key pair the URI names. Refuses if any object already has its label or id.
    pub fn generate(&self, pin: &SecretString) -> Result<Pkcs11Key, KeyError> {
        let session = self.session(pin, true)?;
        let existing = session
            .find_objects(&self.selector(None))
            .map_err(|e| ck(e, "search the token"))?;
        if !existing.is_empty() {
            return Err(device(format!(
                "the token already holds a key at {}; keygen never overwrites a key: choose another object= label",
                self.uri
            )));
        }
        let label = self.uri.object.clone().unwrap_or_default().into_bytes();
        let id = match &self.uri.id {
            Some(id) => id.clone(),
            None => {
                let mut id = vec![0u8; 16];
                getrandom::getrandom(&mut id).map_err(|_| KeyError::Rng)?;
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
            .map_err(|e| ck(e, "generate the key pair"))?;
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
    pub fn public_key(&self) -> Result<VerifyingKey, KeyError> {
        let session = self
            .ctx
            .open_ro_session(self.slot)
            .map_err(|e| ck(e, "open an HSM session"))?;
        let public = self.find_one(&session, ObjectClass::PUBLIC_KEY)?;
        read_public(&session, public)
    }

    /// Opens the existing key pair the URI names and checks that its public and private halves
    /// belong together (one test signature).
    pub fn open_key(&self, pin: &SecretString) -> Result<Pkcs11Key, KeyError> {
        let session = self.session(pin, false)?;
        let private = self.find_one(&session, ObjectClass::PRIVATE_KEY)?;
        let public = self.find_one(&session, ObjectClass::PUBLIC_KEY)?;
        let verifying = read_public(&session, public)?;
        let key = Pkcs11Key::new(self.clone(), pin.clone(), session, private, verifying);
        let probe = b"hwpass key pair consistency check";
        let sig = key.try_sign(probe)?;
        crate::token::verify_es256(&verifying, probe, &sig.to_bytes()).map_err(|_| {
            device(format!(
                "the public key at {} does not match its private key; the token holds inconsistent objects",
                self.uri
            ))
        })?;
        Ok(key)
    }

    /// Logs this application out of the token (PKCS#11 logins are per application, so every
    /// session loses its login), as another part of the application or a token reset would;
    /// keys opened before log in again on their next use.
    pub fn logout(&self) -> Result<(), KeyError> {
        let session = self
            .ctx
            .open_ro_session(self.slot)
            .map_err(|e| ck(e, "open an HSM session"))?;
        session
            .logout()
            .map_err(|e| ck(e, "log out of the HSM token"))
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

    fn find_one(&self, session: &Session, class: ObjectClass) -> Result<ObjectHandle, KeyError> {
        let found = session
            .find_objects(&self.selector(Some(class)))
            .map_err(|e| ck(e, "search the token"))?;
        let what = if class == ObjectClass::PRIVATE_KEY {
            "private"
        } else {
            "public"
        };
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(device(format!(
                "no EC {what} key at {} on the token; run `hwpass-issuer keygen` or fix object= in the config",
                self.uri
            ))),
            _ => Err(device(format!(
                "{} EC {what} keys match {}; add id= to the URI to pick one",
                found.len(),
                self.uri
            ))),
        }
    }
}

fn read_public(session: &Session, handle: ObjectHandle) -> Result<VerifyingKey, KeyError> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| ck(e, "read the public key"))?;
    let mut point = None;
    for a in attrs {
        match a {
            Attribute::EcParams(p) if p != P256_PARAMS => {
                return Err(device("the HSM key is not on curve P-256".into()))
            }
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let point = point.ok_or(KeyError::Malformed("public key"))?;
    // PKCS#11 v2.40 §2.3.3: CKA_EC_POINT is the DER OCTET STRING around 04‖X‖Y; a few modules
    // return the bare point, which we accept as well.
    let raw = match point.as_slice() {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        bare if bare.len() == 65 => bare,
        _ => return Err(KeyError::Malformed("public key")),
    };
    VerifyingKey::from_sec1_bytes(raw).map_err(|_| KeyError::Malformed("public key"))
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
        write!(
            f,
            "Pkcs11Key({})",
            crate::token::Jwk::new(self.verifying).thumbprint()
        )
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
    pub fn protection(&self) -> Result<KeyProtection, KeyError> {
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
            .map_err(|e| ck(e, "read the key attributes"))?;
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
    pub fn try_extract_private_value(&self) -> Result<Option<Vec<u8>>, KeyError> {
        let live = self.live.lock().map_err(|_| poisoned())?;
        match live.0.get_attributes(live.1, &[AttributeType::Value]) {
            Ok(attrs) => Ok(attrs.into_iter().find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })),
            Err(CkError::Pkcs11(RvError::AttributeSensitive, _)) => Ok(None),
            Err(e) => Err(ck(e, "read the key value")),
        }
    }
}

impl KeyBackend for Pkcs11Key {
    fn kind(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    fn try_sign(&self, msg: &[u8]) -> Result<Signature, KeyError> {
        let digest = Sha256::digest(msg);
        let mut live = self.live.lock().map_err(|_| poisoned())?;
        let raw = match live.0.sign(&Mechanism::Ecdsa, live.1, &digest) {
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
                live.0.sign(&Mechanism::Ecdsa, live.1, &digest)
            }
            other => other,
        }
        .map_err(|e| ck(e, "sign in the HSM"))?;
        if raw.len() != 64 {
            return Err(KeyError::Malformed("signature"));
        }
        signature_from_scalars(&raw[..32], &raw[32..])
    }
}

fn poisoned() -> KeyError {
    device("an earlier HSM operation panicked; restart the issuer".into())
}

fn device(message: String) -> KeyError {
    KeyError::Device { message }
}

/// One sentence per cause, saying what the HSM refused and what to do.
fn ck(e: CkError, doing: &str) -> KeyError {
    let rv = match &e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    };
    let message = match rv {
        Some(RvError::PinIncorrect) => "the HSM refused the PIN (CKR_PIN_INCORRECT); check it — each wrong attempt counts towards the token's lock-out".into(),
        Some(RvError::PinLocked) => "the HSM user PIN is locked after too many wrong attempts (CKR_PIN_LOCKED); the security officer must reset it".into(),
        Some(RvError::PinExpired) => "the HSM user PIN has expired (CKR_PIN_EXPIRED); set a new one with the token's tools".into(),
        Some(RvError::PinLenRange | RvError::PinInvalid) => "the PIN has a length or characters this HSM does not accept".into(),
        Some(RvError::UserPinNotInitialized) => "the HSM token has no user PIN yet; initialise it (softhsm2-util --init-token)".into(),
        Some(RvError::DeviceMemory | RvError::HostMemory) => format!("the HSM ran out of memory while trying to {doing} (token full?); free space on the token"),
        Some(RvError::TokenNotPresent | RvError::DeviceRemoved) => "the HSM token was removed; reconnect it and retry".into(),
        Some(RvError::TokenWriteProtected) => format!("the HSM token is write-protected, so it cannot {doing}"),
        Some(RvError::SessionHandleInvalid | RvError::SessionClosed) => format!("the HSM session closed while trying to {doing}; retry"),
        _ => format!("the HSM failed to {doing}: {e}"),
    };
    KeyError::Device { message }
}
