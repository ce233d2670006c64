//! What can go wrong on the issuer, as typed facts, and the exit code each maps to.

use std::path::PathBuf;

use super::attest::AttestError;
use super::keys::KeyError;
use super::policy::PolicyError;
use super::store::{AuditError, RevocationError};
use crate::core::error::TokenError;
use crate::core::signer::SignError;

/// Issuer exit codes (documented in the README).
pub mod exit {
    /// Something else failed: config, files, the PIN (missing, exposed, or refused by the
    /// token).
    pub const OTHER: i32 = 1;
    /// The request is malformed, forged or not a request.
    pub const BAD_REQUEST: i32 = 4;
    /// The policy refused the request.
    pub const POLICY: i32 = 9;
    /// The HSM failed or refused (anything but the PIN).
    pub const HSM: i32 = 10;
    /// The audit log could not be written or does not verify.
    pub const AUDIT: i32 = 11;
}

/// What went wrong on the issuer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// The config file is missing or wrong.
    #[error("config {path}: {detail}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The config file is not TOML, or names a key hwpass does not know, or gives a value of
    /// the wrong type: where, and which key.
    #[error("config {}:{line}:{column}: {detail}", path.display())]
    ConfigAt {
        /// The file.
        path: PathBuf,
        /// Line, from 1.
        line: usize,
        /// Column (characters), from 1.
        column: usize,
        /// The key there, with its table (`serve.listen`), when the error is about a key.
        key: Option<String>,
        /// What is wrong.
        detail: String,
    },
    /// The request was refused by verification.
    #[error("request refused: {0}")]
    Request(#[from] TokenError),
    /// The request was refused by policy.
    #[error("request refused by policy: {0}")]
    Policy(#[from] PolicyError),
    /// The attestation evidence was refused.
    #[error("request refused: {0}")]
    Attest(#[from] AttestError),
    /// The key manager (HSM) failed, or no PIN could be obtained.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The audit log failed; no pass was printed.
    #[error("{0}")]
    Audit(#[from] AuditError),
    /// The revocation register failed.
    #[error("{0}")]
    Revocation(#[from] RevocationError),
    /// The web page's session store (the database the replicas share) failed.
    #[error("web sessions: {0}")]
    Sessions(#[source] crate::issuer::store::DbError),
    /// What was asked for does not exist (a pass id not in the audit log).
    #[error("{0}")]
    NotFound(String),
    /// Something inside the issuer failed (a batch worker stopped).
    #[error("{0}")]
    Internal(String),
    /// The signed pass (or its delivery) is longer than a desktop accepts; nothing was audited.
    #[error("the signed {what} would be {len} bytes, more than the {max} a desktop accepts; nothing was issued")]
    TooLarge {
        /// `pass` or `delivery`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The most a desktop takes.
        max: usize,
    },
    /// A file or directory the issuer trusts is open to other accounts: they may change it
    /// (config, its directories, the audit log's directory) or read it (a secret).
    #[error("{} is {access} by group or others (mode {mode:04o})", path.display())]
    Exposed {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What others may do that they must not.
        access: Access,
    },
}

/// What other accounts may do to a file that they must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Change it (or, for a directory, replace what is in it).
    Writable,
    /// Read it (a secret).
    Readable,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Writable => "writable",
            Self::Readable => "readable",
        })
    }
}

impl IssuerError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config { .. }
            | Self::ConfigAt { .. }
            | Self::Key(
                KeyError::Pin(_)
                | KeyError::PinFileExposed { .. }
                | KeyError::Uri(_)
                | KeyError::UnsupportedScheme { .. },
            )
            | Self::Exposed { .. }
            | Self::Internal(_)
            | Self::TooLarge { .. }
            | Self::Sessions(_)
            | Self::Revocation(_) => exit::OTHER,
            // A PIN the token refused is the person's to fix, like a missing one (README).
            Self::Key(k) if k.pin_refused() => exit::OTHER,
            Self::Request(_) | Self::NotFound(_) => exit::BAD_REQUEST,
            Self::Policy(_) | Self::Attest(AttestError::Missing) => exit::POLICY,
            Self::Attest(_) => exit::BAD_REQUEST,
            Self::Key(_) => exit::HSM,
            Self::Audit(a) if matches!(a.cause(), AuditError::Sign(_)) => exit::HSM,
            Self::Audit(_) => exit::AUDIT,
        }
    }
}

impl From<SignError> for IssuerError {
    fn from(e: SignError) -> Self {
        Self::Key(KeyError::Sign(e))
    }
}
