//! The issuer key seam. A [`KeyManager`] covers an issuer key's whole life — create, open for
//! signing, read the public key, describe how it is protected — and is chosen by the key URI's
//! scheme in [`REGISTRY`], the one place a key manager family is registered (smallstep's
//! `kms/apiv1` `KeyManager` + `Register` is the model). `pkcs11:` is the only family today;
//! [`pkcs11`] is the only module that imports `cryptoki`.
//!
//! Adding a family (a cloud KMS, another HSM API) is one new file beside [`pkcs11`] that
//! implements [`KeyManager`] and [`IssuerKey`], plus one line in [`REGISTRY`].

pub(crate) mod pkcs11;
pub(crate) mod pkcs11_uri;
pub(crate) mod pool;

use std::sync::Arc;

use p256::ecdsa::VerifyingKey;
use secrecy::SecretString;

use crate::core::signer::{SignError, Signer};

pub use pkcs11::Pkcs11Error;
pub use pkcs11_uri::UriError;

/// One key manager family: the URI scheme it serves and how to make a manager from a URI.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    /// The URI scheme, without the colon.
    pub scheme: &'static str,
    /// Parses a URI of this scheme into a manager; touches no device.
    pub parse: ParseFn,
}

/// How a [`Registration`] makes a manager from a URI and the key's other settings.
pub type ParseFn = fn(&str, &KeyOptions) -> Result<Arc<dyn KeyManager>, KeyError>;

/// Settings for a key that its URI does not carry (`[key]` in the config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyOptions {
    /// Keep at most this many sessions (connections) to the key store open at once.
    pub max_sessions: Option<usize>,
    /// Environment variables the key store's library reads for its own configuration
    /// (`SOFTHSM2_CONF`, `KRYOPTIC_CONF`, `P11_KIT_SERVER_ADDRESS`, …), set in this process
    /// before the library is loaded, so the CLI and the service find the same token.
    pub module_env: Vec<(String, String)>,
}

impl KeyOptions {
    /// Options with a session limit.
    pub fn with_max_sessions(max_sessions: Option<usize>) -> Self {
        Self {
            max_sessions,
            module_env: Vec::new(),
        }
    }

    /// These options, with environment variables for the key store's library.
    pub fn with_module_env(mut self, env: Vec<(String, String)>) -> Self {
        self.module_env = env;
        self
    }
}

/// Every key manager family this build knows.
pub const REGISTRY: &[Registration] = &[Registration {
    scheme: "pkcs11",
    parse: pkcs11::Pkcs11Manager::parse,
}];

/// Parses a key URI into the manager its scheme names: parse once, refuse an unknown scheme.
pub fn manager(uri: &str) -> Result<Arc<dyn KeyManager>, KeyError> {
    manager_with(uri, &KeyOptions::default())
}

/// [`manager`] with settings the URI does not carry.
pub fn manager_with(uri: &str, options: &KeyOptions) -> Result<Arc<dyn KeyManager>, KeyError> {
    let scheme = uri.trim().split(':').next().unwrap_or_default();
    let reg = REGISTRY
        .iter()
        .find(|r| r.scheme == scheme)
        .ok_or_else(|| KeyError::UnsupportedScheme {
            scheme: scheme.to_string(),
            supported: REGISTRY.iter().map(|r| r.scheme).collect(),
        })?;
    (reg.parse)(uri, options)
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key URI names a scheme no registered key manager serves.
    #[error("the key URI scheme {scheme:?} is not supported (this build knows: {})", supported.join(", "))]
    UnsupportedScheme {
        /// The scheme given.
        scheme: String,
        /// The schemes known.
        supported: Vec<&'static str>,
    },
    /// A `pkcs11:` URI was refused.
    #[error(transparent)]
    Uri(#[from] UriError),
    /// No secret (PIN) could be obtained to unlock the keys.
    #[error("{0}")]
    Pin(String),
    /// The PIN file named by `pin-source` is open to other accounts (any group or other
    /// permission bit).
    #[error("the PIN file {} is open to group or others (mode {mode:04o})", path.display())]
    PinFileExposed {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A PKCS#11 module or token failed or refused.
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11Error),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl KeyError {
    /// The key store refused the PIN itself (wrong, locked, expired, malformed).
    pub fn pin_refused(&self) -> bool {
        self.pkcs11().is_some_and(Pkcs11Error::pin_refused)
    }

    /// The PKCS#11 error inside, wherever it sits.
    pub fn pkcs11(&self) -> Option<&Pkcs11Error> {
        match self {
            Self::Pkcs11(e) => Some(e),
            Self::Sign(s) => s.device_error::<Pkcs11Error>(),
            _ => None,
        }
    }
}

/// Asks a person for a secret (the binaries prompt on the terminal; tests and services do not).
pub trait PinPrompt {
    /// Returns the secret, or why none could be read.
    fn pin(&self, prompt: &str) -> Result<SecretString, String>;
}

/// A [`PinPrompt`] that never asks: for scripts and tests.
#[derive(Debug)]
pub struct NoPrompt;

impl PinPrompt for NoPrompt {
    fn pin(&self, _: &str) -> Result<SecretString, String> {
        Err(format!(
            "no HSM PIN: set pin-source in the key URI, or {}, or run on a terminal to be asked",
            pkcs11::PIN_ENV
        ))
    }
}

/// How a key is protected, as its key store reports it (`hwpass-issuer key-info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    /// Protection flags in the store's own terms (PKCS#11: token, private, sensitive, …).
    pub protection: Vec<(&'static str, bool)>,
    /// What the key may be used for (sign, decrypt, derive).
    pub usage: Vec<(&'static str, bool)>,
    /// Whether the private value could be read out (it must not).
    pub private_value_readable: bool,
    /// What the key store says it is, in its own terms (PKCS#11: the module's manufacturer
    /// and version, the token's label, manufacturer and model, …).
    pub store: Vec<(&'static str, String)>,
    /// How the key manager works around this store's behaviour: which quirks are in effect.
    pub quirks: Vec<(&'static str, String)>,
}

impl KeyFacts {
    /// The value of a named flag, if the store reported it.
    pub fn flag(&self, name: &str) -> Option<bool> {
        self.protection
            .iter()
            .chain(&self.usage)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// An issuer key manager: one key (named by its URI) in one key store.
pub trait KeyManager: std::fmt::Debug + Send + Sync {
    /// The URI for messages and logs: never a PIN, a PIN source or a module path.
    fn display_uri(&self) -> String;
    /// The label of the key it names, if the URI gives one.
    fn label(&self) -> Option<&str>;
    /// The same key store, naming the key labelled `label` instead (key rotation).
    fn with_label(&self, label: &str) -> Arc<dyn KeyManager>;
    /// The public key; needs no secret.
    fn public_key(&self) -> Result<VerifyingKey, KeyError>;
    /// Obtains the secret that unlocks the store (a PIN: from the URI's `pin-source`, the
    /// environment or `prompt`), once per process; keys opened later use it.
    fn unlock(&self, prompt: &dyn PinPrompt) -> Result<(), KeyError>;
    /// Creates the key; never overwrites one. Needs [`Self::unlock`].
    fn create(&self) -> Result<Box<dyn IssuerKey>, KeyError>;
    /// Opens the key for signing: every call is an independent handle (its own session), for
    /// one thread at a time. Needs [`Self::unlock`].
    fn open(&self) -> Result<Box<dyn IssuerKey>, KeyError>;
}

/// An issuer key opened for signing.
pub trait IssuerKey: Signer + Send + Sync {
    /// How the store protects it, read back from the store.
    fn describe(&self) -> Result<KeyFacts, KeyError>;
    /// Asks the store the cheapest question that needs this key's session, logged in (a
    /// readiness probe): `Ok` when it answers; a lost session or login is recovered on the way,
    /// as for a signature.
    fn ping(&self) -> Result<(), KeyError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_schemes_are_refused_by_name() {
        let err = manager("awskms:key/1234").unwrap_err();
        assert!(matches!(&err, KeyError::UnsupportedScheme { scheme, .. } if scheme == "awskms"));
        assert!(err.to_string().contains("pkcs11"), "{err}");
        assert!(matches!(
            manager("pkcs11:token=t;object=o").unwrap_err(),
            KeyError::Uri(_)
        ));
        let m = manager("pkcs11:token=t;object=o?module-path=/nonexistent.so").unwrap();
        assert_eq!(m.label(), Some("o"));
        assert_eq!(m.with_label("next").label(), Some("next"));
        assert_eq!(m.display_uri(), "pkcs11:token=t;object=o");
    }
}
