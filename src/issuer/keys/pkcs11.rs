//! The PKCS#11 (HSM) key manager. The only module that imports `cryptoki`.
//!
//! The issuer key is an EC P-256 key pair on the token, created here with CKA_TOKEN,
//! CKA_PRIVATE, CKA_SENSITIVE, not CKA_EXTRACTABLE and sign-only (read back, never assumed);
//! it signs through CKM_ECDSA_SHA256 where the module offers it, else CKM_ECDSA over a
//! SHA-256 digest computed here (both return raw r‖s), on sessions from a per-token pool that
//! honours the token's and the config's session limit. Every module quirk hwpass handles is
//! handled in this file ([`Quirks`]). Every failure keeps the PKCS#11 function and `CKR_*`
//! code it came from ([`Pkcs11Error::Call`]).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::{Limit, Slot};
use p256::ecdsa::{Signature, VerifyingKey};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};

use super::pkcs11_uri::{PinSource, Pkcs11Uri};
use super::{IssuerKey, KeyError, KeyFacts, KeyManager, KeyOptions, PinPrompt};
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
    /// `init` found a token with the label it would give a new one.
    #[error("a token labelled {label:?} exists already; init never overwrites a token")]
    TokenExists {
        /// The label.
        label: String,
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
    /// The token offers neither CKM_ECDSA_SHA256 nor CKM_ECDSA for signing with P-256.
    #[error("the HSM token offers no ECDSA signing mechanism for P-256 keys (neither CKM_ECDSA_SHA256 nor CKM_ECDSA)")]
    NoMechanism,
    /// A key the token generated is weaker than required even after correcting it; it was
    /// destroyed.
    #[error("the HSM generated a key with {} set against hwpass's template; the key was destroyed", flags.join(", "))]
    WeakKey {
        /// The attributes with the wrong value.
        flags: Vec<&'static str>,
    },
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

    /// The token refused the PIN itself: wrong, locked, expired, or not a PIN it accepts. The
    /// person fixes the PIN (a config or secrets matter), not the HSM.
    pub fn pin_refused(&self) -> bool {
        matches!(
            self.rv(),
            Some(
                RvError::PinIncorrect
                    | RvError::PinInvalid
                    | RvError::PinLenRange
                    | RvError::PinLocked
                    | RvError::PinExpired
            )
        )
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

// ---------------------------------------------------------------------------------------------
// Module quirks. Every PKCS#11 module differs from the standard somewhere; each difference
// hwpass meets is handled here, named after the behaviour, and reported by `key-info`
// ([`Quirks`]). docs/hsm.md lists which module shows which.
// ---------------------------------------------------------------------------------------------

/// How a module signs with ECDSA P-256, chosen once per token with C_GetMechanismInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignMechanism {
    /// CKM_ECDSA_SHA256: the module hashes the message itself (Kryoptic, tpm2-pkcs11, most
    /// network HSMs).
    EcdsaSha256,
    /// CKM_ECDSA over a SHA-256 digest computed here: the module has no CKM_ECDSA_SHA256
    /// (SoftHSM 2.6.1) or does not offer it for signing P-256 keys.
    Ecdsa,
}

impl SignMechanism {
    /// The `CKM_*` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaSha256 => "CKM_ECDSA_SHA256",
            Self::Ecdsa => "CKM_ECDSA",
        }
    }
}

/// How a module encodes CKA_EC_POINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EcPointEncoding {
    /// PKCS#11 v2.40 §2.3.3: a DER OCTET STRING around `04‖X‖Y` (SoftHSM, tpm2-pkcs11).
    Der,
    /// The bare `04‖X‖Y` (Kryoptic unless KRYOPTIC_EC_POINT_ENCODING=Der, some older HSMs).
    Raw,
}

/// Reads the SEC1 uncompressed point out of CKA_EC_POINT in either encoding a module uses.
/// P-256 points are 65 bytes, so the DER length is always the short form `0x41`; a
/// non-minimal long form (`81 41`) that some modules write is accepted too.
pub fn ec_point_sec1(value: &[u8]) -> Option<(&[u8], EcPointEncoding)> {
    match value {
        [0x04, 0x41, rest @ ..] | [0x04, 0x81, 0x41, rest @ ..] if rest.len() == 65 => {
            Some((rest, EcPointEncoding::Der))
        }
        [0x04, ..] if value.len() == 65 => Some((value, EcPointEncoding::Raw)),
        _ => None,
    }
}

/// How a module scopes a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginScope {
    /// Not seen yet (one session so far).
    Unknown,
    /// PKCS#11 v2.40 §5.6: one C_Login covers every session of the application; a new session
    /// starts logged in (SoftHSM, Kryoptic, tpm2-pkcs11, p11-kit's remote module).
    Token,
    /// A new session started logged out although another one was logged in: the module wants a
    /// login per session, and hwpass logs each new session in.
    Session,
}

/// Which key template a module accepted at `keygen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyTemplate {
    /// hwpass's full template: every usage flag stated (CKA_DECRYPT, CKA_DERIVE, CKA_UNWRAP
    /// false, the public key CKA_VERIFY and not CKA_PRIVATE).
    Full,
    /// The module refused the full template (with this code); the minimum one was accepted:
    /// CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not CKA_EXTRACTABLE, CKA_SIGN, label and id.
    /// The flags it left to the module's defaults were read back and corrected or refused.
    Minimum {
        /// What the full template got.
        refused: RvError,
    },
}

/// The module and token, as they describe themselves (C_GetInfo, C_GetTokenInfo).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ModuleIdentity {
    pub library_manufacturer: String,
    pub library_description: String,
    pub library_version: String,
    pub cryptoki_version: String,
    pub token_label: String,
    pub token_manufacturer: String,
    pub token_model: String,
    pub token_serial: String,
    pub hardware_version: String,
    pub firmware_version: String,
}

/// The module behaviours in effect for one token, as `key-info` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quirks {
    /// How signatures are made.
    pub mechanism: SignMechanism,
    /// How CKA_EC_POINT came back (once a public key was read).
    pub ec_point: Option<EcPointEncoding>,
    /// How a login is scoped.
    pub login: LoginScope,
    /// Whether C_Login said CKR_USER_ALREADY_LOGGED_IN (counted as success).
    pub already_logged_in: bool,
    /// The token's own session limit (ulMaxSessionCount), if it states one.
    pub token_max_sessions: Option<u64>,
    /// The limit configured for the key (`[key] max_sessions`).
    pub configured_max_sessions: Option<usize>,
    /// The limit the module enforced with CKR_SESSION_COUNT although it stated none lower.
    pub refused_sessions_at: Option<usize>,
    /// The number of sessions hwpass keeps open at most: the lowest of the above.
    pub session_cap: Option<usize>,
    /// The most sessions open at once so far.
    pub sessions_peak: usize,
    /// The template `keygen` used, when a key was created in this process.
    pub template: Option<KeyTemplate>,
    /// The generic code with which the module reported a lost login or session, if it did
    /// (found out by asking the session with C_GetSessionInfo).
    pub loss_reported_as: Option<RvError>,
}

/// Settings for one token that the key URI does not carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenOptions {
    /// Keep at most this many sessions open (the YubiHSM 2 allows 16 per device, shared by
    /// every application using it; a network HSM partition often has a licensed maximum).
    pub max_sessions: Option<usize>,
    /// Environment variables set before the module is loaded (`[key] module_env`).
    pub module_env: Vec<(String, String)>,
}

/// What hwpass learned about the token while using it.
#[derive(Debug)]
struct Observed {
    ec_point: Option<EcPointEncoding>,
    login: LoginScope,
    already_logged_in: bool,
    /// Whether the application is logged in, as far as hwpass knows.
    logged_in: bool,
    refused_sessions_at: Option<usize>,
    template: Option<KeyTemplate>,
    loss_reported_as: Option<RvError>,
    /// A PIN the token refused: never presented again in this process, so hwpass adds nothing
    /// to the token's failed-login counter beyond the one attempt a person made.
    refused_pin: Option<SecretString>,
}

/// Signing sessions, at most `cap` of them, shared by every key handle on the token.
#[derive(Debug)]
struct Pool {
    idle: Vec<Session>,
    open: usize,
    cap: Option<usize>,
    peak: usize,
}

/// One token's shared state: identity, chosen mechanism, the session pool, observations.
struct Token {
    identity: ModuleIdentity,
    mechanism: SignMechanism,
    token_max_sessions: Option<u64>,
    configured_max_sessions: Option<usize>,
    pool: Mutex<Pool>,
    returned: Condvar,
    observed: Mutex<Observed>,
}

/// An initialized PKCS#11 module and the slot holding the token the URI names.
#[derive(Clone)]
pub struct Hsm {
    ctx: Pkcs11,
    slot: Slot,
    uri: Pkcs11Uri,
    token: Arc<Token>,
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
    pub unwrap: bool,
}

impl KeyProtection {
    /// The flags that differ from what an issuer key must have (token, private, sensitive, not
    /// extractable, sign, and not decrypt, derive or unwrap).
    pub fn weaknesses(&self) -> Vec<&'static str> {
        [
            ("CKA_TOKEN", !self.token),
            ("CKA_PRIVATE", !self.private),
            ("CKA_SENSITIVE", !self.sensitive),
            ("CKA_EXTRACTABLE", self.extractable),
            ("CKA_SIGN", !self.sign),
            ("CKA_DECRYPT", self.decrypt),
            ("CKA_DERIVE", self.derive),
            ("CKA_UNWRAP", self.unwrap),
        ]
        .into_iter()
        .filter(|(_, bad)| *bad)
        .map(|(name, _)| name)
        .collect()
    }
}

/// Codes with which a module refuses a template it does not understand or allow.
fn template_refused(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::AttributeTypeInvalid
            | RvError::AttributeValueInvalid
            | RvError::AttributeReadOnly
            | RvError::TemplateInconsistent
    )
}

/// Codes after which the session (or the login, or the key handle) is gone but the token may
/// still be there: the token was reset, the module re-initialised, an idle timeout closed the
/// session, another part of the application logged out, a network HSM client reconnected.
fn session_lost(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid
            | RvError::CryptokiNotInitialized
            | RvError::DeviceRemoved
    )
}

impl Hsm {
    /// Loads the module and finds the token. Fails with one sentence per cause.
    pub fn open(uri: &Pkcs11Uri) -> Result<Self, Pkcs11Error> {
        Self::open_with(uri, &TokenOptions::default())
    }

    /// [`Self::open`] with settings for the token.
    pub fn open_with(uri: &Pkcs11Uri, options: &TokenOptions) -> Result<Self, Pkcs11Error> {
        if !uri.module_path.exists() {
            return Err(Pkcs11Error::ModuleMissing {
                path: uri.module_path.clone(),
            });
        }
        // The module reads its own configuration from the environment when it initialises
        // (SoftHSM: SOFTHSM2_CONF). Set once, as the token is first opened: before the
        // commands start threads, and never again in this process (the token stays open).
        for (name, value) in &options.module_env {
            if std::env::var_os(name).is_none_or(|v| v != value.as_str()) {
                std::env::set_var(name, value);
            }
        }
        let ctx = Pkcs11::new(&uri.module_path).map_err(|e| Pkcs11Error::ModuleLoad {
            path: uri.module_path.clone(),
            detail: e.to_string(),
        })?;
        initialize(&ctx)?;
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
                found = Some((slot, info));
            }
        }
        let (slot, info) = found.ok_or_else(|| Pkcs11Error::NoToken {
            uri: uri.to_string(),
            module: uri.module_path.clone(),
        })?;
        let library = ctx
            .get_library_info()
            .map_err(|e| Pkcs11Error::from_ck(e, "read the module information"))?;
        let identity = ModuleIdentity {
            library_manufacturer: library.manufacturer_id().trim().to_string(),
            library_description: library.library_description().trim().to_string(),
            library_version: library.library_version().to_string(),
            cryptoki_version: library.cryptoki_version().to_string(),
            token_label: info.label().trim().to_string(),
            token_manufacturer: info.manufacturer_id().trim().to_string(),
            token_model: info.model().trim().to_string(),
            token_serial: info.serial_number().trim().to_string(),
            hardware_version: info.hardware_version().to_string(),
            firmware_version: info.firmware_version().to_string(),
        };
        // ulMaxSessionCount: CK_EFFECTIVELY_INFINITE and CK_UNAVAILABLE_INFORMATION state no
        // limit; a few modules say 0 for "unlimited", which is no limit either.
        let token_max_sessions = match info.max_session_count() {
            Limit::Max(n) if n > 0 => Some(n),
            _ => None,
        };
        let configured_max_sessions = options.max_sessions.filter(|n| *n > 0);
        let cap = [
            token_max_sessions.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            configured_max_sessions,
        ]
        .into_iter()
        .flatten()
        .min();
        let mechanism = choose_mechanism(&ctx, slot)?;
        let token = Token {
            identity,
            mechanism,
            token_max_sessions,
            configured_max_sessions,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
                cap,
                peak: 0,
            }),
            returned: Condvar::new(),
            observed: Mutex::new(Observed {
                ec_point: None,
                login: LoginScope::Unknown,
                already_logged_in: false,
                logged_in: false,
                refused_sessions_at: None,
                template: None,
                loss_reported_as: None,
                refused_pin: None,
            }),
        };
        Ok(Self {
            ctx,
            slot,
            uri: uri.clone(),
            token: Arc::new(token),
        })
    }

    /// The URI this HSM was opened with.
    pub fn uri(&self) -> &Pkcs11Uri {
        &self.uri
    }

    /// The module and token as they describe themselves.
    pub fn identity(&self) -> &ModuleIdentity {
        &self.token.identity
    }

    /// The module behaviours in effect so far.
    pub fn quirks(&self) -> Result<Quirks, Pkcs11Error> {
        let observed = self.token.observed.lock().map_err(|_| poisoned())?;
        let pool = self.token.pool.lock().map_err(|_| poisoned())?;
        Ok(Quirks {
            mechanism: self.token.mechanism,
            ec_point: observed.ec_point,
            login: observed.login,
            already_logged_in: observed.already_logged_in,
            token_max_sessions: self.token.token_max_sessions,
            configured_max_sessions: self.token.configured_max_sessions,
            refused_sessions_at: observed.refused_sessions_at,
            session_cap: pool.cap,
            sessions_peak: pool.peak,
            template: observed.template,
            loss_reported_as: observed.loss_reported_as,
        })
    }

    /// The same token, addressing the key `uri` names instead (key rotation: several issuer
    /// keys live in one token).
    fn with_uri(&self, uri: Pkcs11Uri) -> Self {
        Self {
            ctx: self.ctx.clone(),
            slot: self.slot,
            uri,
            token: self.token.clone(),
        }
    }

    /// Logs the user in on a new session, once per application where the module keeps the
    /// login per token (the standard), per session where it does not.
    /// `fresh`: the session was just opened (only then does a logged-out state tell the login
    /// scope).
    fn login(&self, session: &Session, pin: &SecretString, fresh: bool) -> Result<(), Pkcs11Error> {
        let mut observed = self.token.observed.lock().map_err(|_| poisoned())?;
        if observed
            .refused_pin
            .as_ref()
            .is_some_and(|r| r.expose_secret() == pin.expose_secret())
        {
            // Quirk-proofing the lock-out counter: this PIN was refused once already.
            return Err(Pkcs11Error::Call {
                function: Function::Login,
                rv: RvError::PinIncorrect,
                doing: "log in to the HSM token",
            });
        }
        let state = session.get_session_info().map(|i| i.session_state());
        if let Ok(SessionState::RoUser | SessionState::RwUser) = state {
            if observed.logged_in && observed.login == LoginScope::Unknown {
                observed.login = LoginScope::Token;
            }
            observed.logged_in = true;
            return Ok(());
        }
        if fresh && observed.logged_in && state.is_ok() {
            // A new session that starts logged out while another is logged in.
            observed.login = LoginScope::Session;
        }
        match session.login(UserType::User, Some(pin)) {
            Ok(()) => {}
            // Some modules keep the login per token but report new sessions as public (and
            // some cannot report at all): CKR_USER_ALREADY_LOGGED_IN then is success.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                observed.already_logged_in = true;
            }
            Err(CkError::Pkcs11(RvError::PinIncorrect, f)) => {
                observed.refused_pin = Some(pin.clone());
                return Err(Pkcs11Error::Call {
                    function: f,
                    rv: RvError::PinIncorrect,
                    doing: "log in to the HSM token",
                });
            }
            Err(e) => return Err(Pkcs11Error::from_ck(e, "log in to the HSM token")),
        }
        observed.logged_in = true;
        Ok(())
    }

    /// Opens a session outside the signing pool and logs the user in (keygen).
    fn session(&self, pin: &SecretString, rw: bool) -> Result<Session, Pkcs11Error> {
        let session = if rw {
            self.ctx.open_rw_session(self.slot)
        } else {
            self.ctx.open_ro_session(self.slot)
        }
        .map_err(|e| Pkcs11Error::from_ck(e, "open an HSM session"))?;
        self.login(&session, pin, true)?;
        Ok(session)
    }

    /// A logged-in signing session from the pool: an idle one, a new one while fewer than the
    /// cap are open, or the next one returned. A module that refuses a session with
    /// CKR_SESSION_COUNT although it stated no lower limit lowers the cap to what it allowed.
    fn lease(&self, pin: &SecretString) -> Result<Lease<'_>, Pkcs11Error> {
        let token = &self.token;
        let mut pool = token.pool.lock().map_err(|_| poisoned())?;
        loop {
            if let Some(session) = pool.idle.pop() {
                return Ok(Lease {
                    hsm: self,
                    session: Some(session),
                });
            }
            if pool.cap.is_none_or(|cap| pool.open < cap) {
                pool.open += 1;
                pool.peak = pool.peak.max(pool.open);
                drop(pool);
                let opened = self
                    .ctx
                    .open_ro_session(self.slot)
                    .map_err(|e| Pkcs11Error::from_ck(e, "open an HSM session"))
                    .and_then(|s| self.login(&s, pin, true).map(|()| s));
                pool = token.pool.lock().map_err(|_| poisoned())?;
                match opened {
                    Ok(session) => {
                        return Ok(Lease {
                            hsm: self,
                            session: Some(session),
                        })
                    }
                    Err(e) => {
                        pool.open -= 1;
                        token.returned.notify_one();
                        if e.rv() == Some(RvError::SessionCount) && pool.open > 0 {
                            pool.cap = Some(pool.open);
                            token
                                .observed
                                .lock()
                                .map_err(|_| poisoned())?
                                .refused_sessions_at = Some(pool.open);
                            continue;
                        }
                        return Err(e);
                    }
                }
            }
            pool = token.returned.wait(pool).map_err(|_| poisoned())?;
        }
    }

    /// Records that the module reported a lost session or login with `rv`.
    fn note_generic_loss(&self, rv: RvError) -> Result<(), Pkcs11Error> {
        self.token
            .observed
            .lock()
            .map_err(|_| poisoned())?
            .loss_reported_as = Some(rv);
        Ok(())
    }

    /// Forgets every idle pooled session after the module lost them (they are already gone on
    /// its side: closing them again would only log errors).
    fn forget_idle_sessions(&self) -> Result<(), Pkcs11Error> {
        let mut pool = self.token.pool.lock().map_err(|_| poisoned())?;
        let idle = std::mem::take(&mut pool.idle);
        pool.open -= idle.len();
        for session in idle {
            std::mem::forget(session);
        }
        self.token.returned.notify_all();
        Ok(())
    }

    /// Creates the key pair the URI names. Refuses if any object already has its label or id.
    /// The full template first; a module that refuses it gets the minimum one; either way the
    /// attributes are read back, corrected where the module allows, and a key that is still
    /// weaker than required is destroyed and refused ([`Pkcs11Error::WeakKey`]).
    pub fn generate(&self, pin: &SecretString) -> Result<Pkcs11Key, Pkcs11Error> {
        self.generate_with(pin, &[])
    }

    /// [`Self::generate`] with extra attributes in the full private-key template: a test that a
    /// module refusing the full template gets the minimum one.
    #[doc(hidden)]
    pub fn generate_with(
        &self,
        pin: &SecretString,
        extra_private: &[ExtraAttribute],
    ) -> Result<Pkcs11Key, Pkcs11Error> {
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
        let min_public = vec![
            Attribute::Token(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let min_private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label),
            Attribute::Id(id),
        ];
        let mut public = min_public.clone();
        public.extend([Attribute::Private(false), Attribute::Verify(true)]);
        let mut private = min_private.clone();
        private.extend([
            Attribute::Decrypt(false),
            Attribute::Derive(false),
            Attribute::Unwrap(false),
        ]);
        private.extend(extra_private.iter().map(ExtraAttribute::attribute));
        let (template, (pub_handle, priv_handle)) =
            match session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private) {
                Ok(handles) => (KeyTemplate::Full, handles),
                // Some modules refuse attributes they consider meaningless for an EC key
                // (CKA_DECRYPT, CKA_UNWRAP) or fix themselves (CKA_PRIVATE on a public key):
                // retry with only what the key must have; what the module chose for the rest
                // is read back below, never assumed.
                //
                // tpm2-pkcs11 1.9 refuses hwpass's full template with CKR_GENERAL_ERROR ("User
                // specified and TPM specified attr mismatch" for CKA_VERIFY on the public key),
                // so a general error from the full template is retried too; a module that is
                // really failing fails the minimum template as well, and that error is kept.
                Err(CkError::Pkcs11(rv, _))
                    if template_refused(rv) || rv == RvError::GeneralError =>
                {
                    let handles = session
                        .generate_key_pair(&Mechanism::EccKeyPairGen, &min_public, &min_private)
                        .map_err(|e| Pkcs11Error::from_ck(e, "generate the key pair"))?;
                    (KeyTemplate::Minimum { refused: rv }, handles)
                }
                Err(e) => return Err(Pkcs11Error::from_ck(e, "generate the key pair")),
            };
        self.token.observed.lock().map_err(|_| poisoned())?.template = Some(template);
        let checked = self.check_new_key(&session, priv_handle, pub_handle);
        let verifying = match checked {
            Ok(v) => v,
            Err(e) => {
                // Never leave a weak or unreadable key behind under the issuer's label.
                let _ = session.destroy_object(priv_handle);
                let _ = session.destroy_object(pub_handle);
                return Err(e);
            }
        };
        drop(session);
        Pkcs11Key::new(self.clone(), pin.clone(), priv_handle, verifying)
    }

    /// Reads a new key's flags back, turns off usages the module defaulted on (where it lets
    /// us), and refuses a key that stays weaker than required.
    fn check_new_key(
        &self,
        session: &Session,
        private: ObjectHandle,
        public: ObjectHandle,
    ) -> Result<VerifyingKey, Pkcs11Error> {
        let mut protection = read_protection(session, private)?;
        let usages: Vec<Attribute> = [
            (protection.decrypt, Attribute::Decrypt(false)),
            (protection.derive, Attribute::Derive(false)),
            (protection.unwrap, Attribute::Unwrap(false)),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, a)| a)
        .collect();
        if !usages.is_empty() {
            // One at a time: a module may refuse to change one and accept another.
            for a in usages {
                let _ = session.update_attributes(private, &[a]);
            }
            protection = read_protection(session, private)?;
        }
        let weak = protection.weaknesses();
        if !weak.is_empty() {
            return Err(Pkcs11Error::WeakKey { flags: weak });
        }
        self.read_public(session, public)
    }

    /// Reads the public key the URI names; needs no PIN (public objects are not CKA_PRIVATE).
    pub fn public_key(&self) -> Result<VerifyingKey, Pkcs11Error> {
        let session = self
            .ctx
            .open_ro_session(self.slot)
            .map_err(|e| Pkcs11Error::from_ck(e, "open an HSM session"))?;
        let public = self.find_one(&session, ObjectClass::PUBLIC_KEY)?;
        self.read_public(&session, public)
    }

    /// Opens the existing key pair the URI names and checks that its public and private halves
    /// belong together (one test signature). Its sessions come from the token's pool.
    pub fn open_key(&self, pin: &SecretString) -> Result<Pkcs11Key, Pkcs11Error> {
        let (private, verifying) = {
            let lease = self.lease(pin)?;
            // A pooled session may have lost its login (a logout elsewhere in the
            // application); a logged-in one costs only C_GetSessionInfo here.
            self.login(lease.session(), pin, false)?;
            let private = self.find_one(lease.session(), ObjectClass::PRIVATE_KEY)?;
            let public = self.find_one(lease.session(), ObjectClass::PUBLIC_KEY)?;
            (private, self.read_public(lease.session(), public)?)
        };
        Pkcs11Key::new(self.clone(), pin.clone(), private, verifying)
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

    /// Finalizes and re-initializes the module, as a token reset, another library in the
    /// process or a network HSM client reconnecting would: every session, login and object
    /// handle is lost. Keys opened before open new sessions on their next use.
    #[doc(hidden)]
    pub fn reset_module(&self) -> Result<(), Pkcs11Error> {
        self.ctx
            .clone()
            .finalize()
            .map_err(|e| Pkcs11Error::from_ck(e, "finalize the PKCS#11 module"))?;
        initialize(&self.ctx)
    }

    /// Sessions open now and at most so far, and the cap.
    #[doc(hidden)]
    pub fn session_counts(&self) -> (usize, usize, Option<usize>) {
        let pool = self.token.pool.lock().unwrap_or_else(|p| p.into_inner());
        (pool.open, pool.peak, pool.cap)
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

    fn read_public(
        &self,
        session: &Session,
        handle: ObjectHandle,
    ) -> Result<VerifyingKey, Pkcs11Error> {
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
        let (raw, encoding) = ec_point_sec1(&point).ok_or(Pkcs11Error::Malformed("public key"))?;
        self.token.observed.lock().map_err(|_| poisoned())?.ec_point = Some(encoding);
        VerifyingKey::from_sec1_bytes(raw).map_err(|_| Pkcs11Error::Malformed("public key"))
    }
}

/// C_Initialize; a module already initialised in this process is fine.
fn initialize(ctx: &Pkcs11) -> Result<(), Pkcs11Error> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(Pkcs11Error::from_ck(e, "initialize the PKCS#11 module")),
    }
}

/// The best way this token signs with P-256: CKM_ECDSA_SHA256 when C_GetMechanismInfo says it
/// signs with a 256-bit key, else CKM_ECDSA. A module that cannot list its mechanisms gets
/// CKM_ECDSA, which every EC module has.
fn choose_mechanism(ctx: &Pkcs11, slot: Slot) -> Result<SignMechanism, Pkcs11Error> {
    let Ok(list) = ctx.get_mechanism_list(slot) else {
        return Ok(SignMechanism::Ecdsa);
    };
    let signs_p256 = |m: MechanismType| {
        list.contains(&m)
            && ctx.get_mechanism_info(slot, m).is_ok_and(|info| {
                // Key sizes are in bits for EC; some modules leave them 0 (unstated).
                let (min, max) = (info.min_key_size(), info.max_key_size());
                info.sign() && (max == 0 || (min <= 256 && 256 <= max))
            })
    };
    if signs_p256(MechanismType::ECDSA_SHA256) {
        Ok(SignMechanism::EcdsaSha256)
    } else if signs_p256(MechanismType::ECDSA) {
        Ok(SignMechanism::Ecdsa)
    } else {
        Err(Pkcs11Error::NoMechanism)
    }
}

fn read_protection(session: &Session, handle: ObjectHandle) -> Result<KeyProtection, Pkcs11Error> {
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
        AttributeType::Unwrap,
    ];
    let attrs = session
        .get_attributes(handle, &types)
        .map_err(|e| Pkcs11Error::from_ck(e, "read the key attributes"))?;
    // A flag the module does not report counts as the unsafe value.
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
        unwrap: true,
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
            Attribute::Unwrap(v) => p.unwrap = v,
            _ => {}
        }
    }
    Ok(p)
}

/// An attribute a test adds to the full key template.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum ExtraAttribute {
    /// CKA_ALWAYS_SENSITIVE, which the module sets itself: SoftHSM refuses it in a template
    /// (CKR_ATTRIBUTE_READ_ONLY), as some HSMs refuse attributes hwpass's full template has.
    AlwaysSensitive,
}

impl ExtraAttribute {
    fn attribute(&self) -> Attribute {
        match self {
            Self::AlwaysSensitive => Attribute::AlwaysSensitive(true),
        }
    }
}

/// A pooled session lent to one caller; back to the pool on drop.
struct Lease<'a> {
    hsm: &'a Hsm,
    session: Option<Session>,
}

impl Lease<'_> {
    fn session(&self) -> &Session {
        // Invariant: `session` is Some until drop or discard.
        self.session.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// The module lost this session: forget it (and the idle ones, lost with it).
    fn discard(mut self) -> Result<(), Pkcs11Error> {
        if let Some(s) = self.session.take() {
            std::mem::forget(s);
            let mut pool = self.hsm.token.pool.lock().map_err(|_| poisoned())?;
            pool.open -= 1;
        }
        self.hsm.forget_idle_sessions()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let mut pool = self
                .hsm
                .token
                .pool
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            pool.idle.push(s);
            self.hsm.token.returned.notify_one();
        }
    }
}

/// An issuer key inside the HSM. It signs on a session borrowed from its token's pool for
/// each signature, so any number of handles share at most the token's session cap.
pub struct Pkcs11Key {
    hsm: Hsm,
    pin: SecretString,
    /// The private key's handle; found again when the module lost it.
    handle: Mutex<ObjectHandle>,
    verifying: VerifyingKey,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkcs11Key({})", Jwk::new(self.verifying).thumbprint())
    }
}

impl Pkcs11Key {
    /// The key, after one test signature that shows its halves belong together.
    fn new(
        hsm: Hsm,
        pin: SecretString,
        handle: ObjectHandle,
        verifying: VerifyingKey,
    ) -> Result<Self, Pkcs11Error> {
        let key = Self {
            hsm,
            pin,
            handle: Mutex::new(handle),
            verifying,
        };
        let probe = b"hwpass key pair consistency check";
        let raw = key.sign_raw(probe)?;
        let sig = signature_from_scalars(&raw[..32], &raw[32..])
            .map_err(|_| Pkcs11Error::Malformed("signature"))?;
        verify_es256(&verifying, probe, &sig.to_bytes()).map_err(|_| {
            Pkcs11Error::Inconsistent {
                uri: key.hsm.uri.to_string(),
            }
        })?;
        Ok(key)
    }

    /// The token this key is on.
    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }

    /// Runs `op` with a pooled session and the key's handle. When the module lost the session,
    /// the login or the handle, it opens a new session, logs in, finds the key and runs `op`
    /// once more.
    fn with_key<R>(
        &self,
        doing: &'static str,
        op: impl Fn(&Session, ObjectHandle) -> Result<R, CkError>,
    ) -> Result<R, Pkcs11Error> {
        let lease = self.hsm.lease(&self.pin)?;
        let handle = *self.handle.lock().map_err(|_| poisoned())?;
        let rv = match op(lease.session(), handle) {
            Err(CkError::Pkcs11(rv, _)) if session_lost(rv) => rv,
            // Quirk: some modules report a lost login with a generic code (Kryoptic 1.5.4
            // answers C_SignInit with CKR_GENERAL_ERROR after a logout elsewhere in the
            // application). Ask the session itself before giving up.
            Err(CkError::Pkcs11(rv, function)) => match lease.session().get_session_info() {
                Err(CkError::Pkcs11(lost, _)) if session_lost(lost) => {
                    self.hsm.note_generic_loss(rv)?;
                    lost
                }
                Ok(info)
                    if matches!(
                        info.session_state(),
                        SessionState::RoPublic | SessionState::RwPublic
                    ) =>
                {
                    self.hsm.note_generic_loss(rv)?;
                    RvError::UserNotLoggedIn
                }
                _ => return Err(Pkcs11Error::from_ck(CkError::Pkcs11(rv, function), doing)),
            },
            other => return other.map_err(|e| Pkcs11Error::from_ck(e, doing)),
        };
        // Whatever was lost, the login may be gone with it.
        self.hsm
            .token
            .observed
            .lock()
            .map_err(|_| poisoned())?
            .logged_in = false;
        let lease = match rv {
            // A logout elsewhere in the application: the session is there, the login is not
            // (and with it the private key handle, on modules that hide private objects).
            RvError::UserNotLoggedIn | RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid => {
                self.hsm.login(lease.session(), &self.pin, false)?;
                lease
            }
            _ => {
                lease.discard()?;
                if rv == RvError::CryptokiNotInitialized {
                    initialize(&self.hsm.ctx)?;
                }
                self.hsm.lease(&self.pin)?
            }
        };
        let handle = self
            .hsm
            .find_one(lease.session(), ObjectClass::PRIVATE_KEY)?;
        *self.handle.lock().map_err(|_| poisoned())? = handle;
        op(lease.session(), handle).map_err(|e| Pkcs11Error::from_ck(e, doing))
    }

    /// Signs `msg` with the token's mechanism: r‖s, 64 bytes.
    fn sign_raw(&self, msg: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let digest;
        let (mechanism, data) = match self.hsm.token.mechanism {
            SignMechanism::EcdsaSha256 => (Mechanism::EcdsaSha256, msg),
            SignMechanism::Ecdsa => {
                digest = Sha256::digest(msg);
                (Mechanism::Ecdsa, &digest[..])
            }
        };
        let raw = self.with_key("sign in the HSM", |s, h| s.sign(&mechanism, h, data))?;
        if raw.len() != 64 {
            return Err(Pkcs11Error::Malformed("signature"));
        }
        Ok(raw)
    }

    /// Reads back how the private key is protected.
    pub fn protection(&self) -> Result<KeyProtection, Pkcs11Error> {
        self.with_key("read the key attributes", |s, h| {
            read_protection(s, h).map_err(|e| match e {
                Pkcs11Error::Call { function, rv, .. } => CkError::Pkcs11(rv, function),
                _ => CkError::Pkcs11(RvError::GeneralError, Function::GetAttributeValue),
            })
        })
    }

    /// Tries to read the private value; `Ok(None)` when the token refuses, as it must.
    pub fn try_extract_private_value(&self) -> Result<Option<Vec<u8>>, Pkcs11Error> {
        self.with_key("read the key value", |s, h| {
            match s.get_attributes(h, &[AttributeType::Value]) {
                Ok(attrs) => Ok(attrs.into_iter().find_map(|a| match a {
                    Attribute::Value(v) => Some(v),
                    _ => None,
                })),
                Err(CkError::Pkcs11(RvError::AttributeSensitive, _)) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}

impl Signer for Pkcs11Key {
    fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    fn try_sign(&self, msg: &[u8]) -> Result<Signature, SignError> {
        self.sign_raw(msg)
            .map_err(SignError::device)
            .and_then(|raw| signature_from_scalars(&raw[..32], &raw[32..]))
    }
}

impl IssuerKey for Pkcs11Key {
    fn ping(&self) -> Result<(), KeyError> {
        // C_GetAttributeValue of the private key's CKA_SIGN: one round trip, no crypto, and
        // only a logged-in session finds a CKA_PRIVATE object.
        self.with_key("answer a readiness check", |session, handle| {
            session
                .get_attributes(handle, &[AttributeType::Sign])
                .map(|_| ())
        })?;
        Ok(())
    }

    fn describe(&self) -> Result<KeyFacts, KeyError> {
        let p = self.protection()?;
        let private_value_readable = self.try_extract_private_value()?.is_some();
        let id = self.hsm.identity().clone();
        let q = self.hsm.quirks()?;
        let sessions = |n: Option<usize>| n.map_or("no limit".to_string(), |n| n.to_string());
        let mut quirks = vec![
            (
                "mechanism",
                match q.mechanism {
                    SignMechanism::EcdsaSha256 => "CKM_ECDSA_SHA256 (hashed in the module)",
                    SignMechanism::Ecdsa => "CKM_ECDSA (SHA-256 hashed by hwpass)",
                }
                .to_string(),
            ),
            (
                "ec_point",
                match q.ec_point {
                    Some(EcPointEncoding::Der) => "DER OCTET STRING",
                    Some(EcPointEncoding::Raw) => "raw 04‖X‖Y (no DER wrapping)",
                    None => "not read",
                }
                .to_string(),
            ),
            (
                "login",
                match (q.login, q.already_logged_in) {
                    (LoginScope::Session, _) => "per session",
                    (_, true) => "per token (CKR_USER_ALREADY_LOGGED_IN seen)",
                    (LoginScope::Token, false) => "per token",
                    (_, false) => "per token (one session so far)",
                }
                .to_string(),
            ),
            (
                "max_sessions",
                format!(
                    "{} (token: {}, configured: {}{})",
                    sessions(q.session_cap),
                    q.token_max_sessions
                        .map_or("no limit".into(), |n| n.to_string()),
                    sessions(q.configured_max_sessions),
                    q.refused_sessions_at
                        .map_or(String::new(), |n| format!(", CKR_SESSION_COUNT after {n}")),
                ),
            ),
        ];
        if let Some(rv) = q.loss_reported_as {
            quirks.push((
                "lost_login",
                format!("reported as {:?}; recovered", CkrName(rv)),
            ));
        }
        if let Some(t) = q.template {
            quirks.push((
                "template",
                match t {
                    KeyTemplate::Full => "full".to_string(),
                    KeyTemplate::Minimum { refused } => {
                        format!("minimum (the full one got {:?})", CkrName(refused))
                    }
                },
            ));
        }
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
                ("unwrap", p.unwrap),
            ],
            private_value_readable,
            store: vec![
                ("manufacturer", id.library_manufacturer),
                ("library", id.library_description),
                ("library_version", id.library_version),
                ("cryptoki_version", id.cryptoki_version),
                ("token_label", id.token_label),
                ("token_manufacturer", id.token_manufacturer),
                ("token_model", id.token_model),
                ("token_serial", id.token_serial),
                ("firmware_version", id.firmware_version),
                ("hardware_version", id.hardware_version),
            ],
            quirks,
        })
    }
}

/// The [`KeyManager`] for `pkcs11:` URIs. Parsing touches no device; the module is loaded and
/// the token found on first use, once per process (every label of the same token shares it,
/// and its session pool).
#[derive(Debug)]
pub struct Pkcs11Manager {
    uri: Pkcs11Uri,
    options: TokenOptions,
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
    pub fn parse(uri: &str, options: &KeyOptions) -> Result<Arc<dyn KeyManager>, KeyError> {
        Ok(Arc::new(Self {
            uri: Pkcs11Uri::parse(uri)?,
            options: TokenOptions {
                max_sessions: options.max_sessions,
                module_env: options.module_env.clone(),
            },
            shared: Arc::default(),
        }))
    }

    /// The token, opened once.
    pub fn hsm(&self) -> Result<Hsm, Pkcs11Error> {
        let mut hsm = self.shared.hsm.lock().map_err(|_| poisoned())?;
        let base = match hsm.as_ref() {
            Some(h) => h.clone(),
            None => {
                let h = Hsm::open_with(&self.uri, &self.options)?;
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
            options: self.options.clone(),
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

/// Initialises a token as `label` in the first slot whose token is not initialised yet (SoftHSM
/// always keeps one such slot free), with the security officer PIN `so_pin`, and sets its user
/// PIN: what `softhsm2-util --init-token --free` does, without putting PINs on a command line.
/// Refuses when a token labelled `label` exists already. The module is finalised afterwards,
/// so it can be opened again in this process.
pub fn init_free_token(
    module: &std::path::Path,
    label: &str,
    so_pin: &SecretString,
    user_pin: &SecretString,
) -> Result<(), Pkcs11Error> {
    if !module.exists() {
        return Err(Pkcs11Error::ModuleMissing {
            path: module.to_path_buf(),
        });
    }
    let ctx = Pkcs11::new(module).map_err(|e| Pkcs11Error::ModuleLoad {
        path: module.to_path_buf(),
        detail: e.to_string(),
    })?;
    initialize(&ctx)?;
    let done = (|| {
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| Pkcs11Error::from_ck(e, "list the HSM slots"))?;
        let mut free = None;
        for slot in slots {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| Pkcs11Error::from_ck(e, "read token information"))?;
            if info.token_initialized() && info.label().trim() == label {
                return Err(Pkcs11Error::TokenExists {
                    label: label.to_string(),
                });
            }
            if !info.token_initialized() && free.is_none() {
                free = Some(slot);
            }
        }
        let slot = free.ok_or_else(|| Pkcs11Error::NoToken {
            uri: "a slot with a token not yet initialised".into(),
            module: module.to_path_buf(),
        })?;
        ctx.init_token(slot, so_pin, label)
            .map_err(|e| Pkcs11Error::from_ck(e, "initialise the token"))?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| Pkcs11Error::from_ck(e, "open a session"))?;
        session
            .login(UserType::So, Some(so_pin))
            .map_err(|e| Pkcs11Error::from_ck(e, "log in as security officer"))?;
        session
            .init_pin(user_pin)
            .map_err(|e| Pkcs11Error::from_ck(e, "set the user PIN"))?;
        session
            .logout()
            .map_err(|e| Pkcs11Error::from_ck(e, "log out"))
    })();
    let finalized = ctx
        .finalize()
        .map_err(|e| Pkcs11Error::from_ck(e, "finalize the PKCS#11 module"));
    done.and(finalized)
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
        let mut pin = std::env::var(var)
            .map_err(|_| KeyError::Pin(format!("the PIN variable {var} is not set")))?;
        std::env::remove_var(var);
        // `HWPASS_PIN=$(cat pin)` loses the newline, `$'1234\n'` or an env file may keep it:
        // one trailing newline is not part of the PIN (sent, it counts towards the lock-out).
        if pin.ends_with('\n') {
            pin.pop();
            if pin.ends_with('\r') {
                pin.pop();
            }
        }
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
            // The first line, without its newline (`echo 1234 > pin` writes one).
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

    #[test]
    fn ec_points_are_read_raw_or_der_wrapped() {
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let sec1 = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        assert_eq!(sec1.len(), 65);
        // PKCS#11 v2.40: DER OCTET STRING (SoftHSM, Kryoptic and tpm2-pkcs11 for P-256).
        let der = [&[0x04, 0x41][..], &sec1].concat();
        // Non-minimal DER length some HSMs write.
        let long = [&[0x04, 0x81, 0x41][..], &sec1].concat();
        assert_eq!(ec_point_sec1(&der), Some((&sec1[..], EcPointEncoding::Der)));
        assert_eq!(
            ec_point_sec1(&long),
            Some((&sec1[..], EcPointEncoding::Der))
        );
        // The bare point (Kryoptic's Edwards/Montgomery default, older HSMs).
        assert_eq!(
            ec_point_sec1(&sec1),
            Some((&sec1[..], EcPointEncoding::Raw))
        );
        // Compressed, truncated, padded, or another tag: refused.
        let compressed = key
            .verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec();
        for bad in [
            &compressed[..],
            &sec1[..64],
            &der[..66],
            &[&der[..], &[0]].concat()[..],
        ] {
            assert_eq!(ec_point_sec1(bad), None, "{bad:02x?}");
        }
        let mut other_tag = sec1.clone();
        other_tag[0] = 0x05;
        assert_eq!(ec_point_sec1(&other_tag), None);
    }

    #[test]
    fn weaknesses_name_every_flag_against_the_template() {
        let good = KeyProtection {
            token: true,
            private: true,
            sensitive: true,
            extractable: false,
            always_sensitive: true,
            never_extractable: true,
            sign: true,
            decrypt: false,
            derive: false,
            unwrap: false,
        };
        assert!(good.weaknesses().is_empty());
        let weak = KeyProtection {
            extractable: true,
            derive: true,
            ..good
        };
        assert_eq!(weak.weaknesses(), ["CKA_EXTRACTABLE", "CKA_DERIVE"]);
        let e = Pkcs11Error::WeakKey {
            flags: weak.weaknesses(),
        };
        assert!(e.to_string().contains("CKA_EXTRACTABLE, CKA_DERIVE"), "{e}");
    }

    #[test]
    fn refused_templates_and_lost_sessions_are_told_apart() {
        for rv in [
            RvError::AttributeTypeInvalid,
            RvError::AttributeValueInvalid,
            RvError::AttributeReadOnly,
            RvError::TemplateInconsistent,
        ] {
            assert!(template_refused(rv) && !session_lost(rv), "{rv:?}");
        }
        for rv in [
            RvError::SessionHandleInvalid,
            RvError::UserNotLoggedIn,
            RvError::CryptokiNotInitialized,
        ] {
            assert!(session_lost(rv) && !template_refused(rv), "{rv:?}");
        }
        // A wrong PIN is neither: it is never retried.
        assert!(!session_lost(RvError::PinIncorrect) && !template_refused(RvError::PinIncorrect));
        assert_eq!(SignMechanism::EcdsaSha256.as_str(), "CKM_ECDSA_SHA256");
    }
}
