//! The issuer: config, policy, attestation, the sign flow, the batch signer and the issuing
//! service, around two seams:
//!
//! - [`keys`](KeyManager): the issuer key's whole life (create, open, public key, describe,
//!   sign), chosen by the key URI's scheme in one registry — `pkcs11:` today.
//! - [`store`](AuditStore): the audit log and the revocation register behind traits, with
//!   files on one machine as the embedded default.
//!
//! It never imports `desktop`; both share only `core`.

mod attest;
mod batch;
mod config;
mod credential;
mod error;
mod keys;
mod policy;
mod serve;
mod sign;
mod store;

pub use attest::{AttestError, AttestationPolicy, CertRef, EkCertError, TpmIdentity};
pub use batch::{issue_batch, BatchItem, BatchOptions};
pub use config::{IssuerConfig, ServeConfig};
pub use credential::EkPublic;
pub use error::{exit, IssuerError};
pub use keys::pkcs11::{Ckr, PIN_ENV};
pub use keys::pool::KeyPool;
pub use keys::{
    manager, IssuerKey, KeyError, KeyFacts, KeyManager, NoPrompt, PinPrompt, Pkcs11Error,
    Registration, UriError, REGISTRY,
};
pub use policy::{Policy, PolicyError};
pub use serve::run as serve;
pub use sign::{
    approve, issue, publish_denylist, revoke_device, revoke_pass, sign_one, trust_bundle, Approved,
};
pub use store::{
    record_hash, AuditError, AuditRecord, AuditStore, ChainSummary, Register, RevocationError,
    RevocationStore, Revoked, Target, GENESIS,
};

/// Items for this crate's own integration tests: not part of the API.
#[doc(hidden)]
pub mod internal {
    pub use super::attest::{parse_pem_certificates, verify as verify_evidence, Verified};
    pub use super::credential::{kdfa, kdfe, make_credential, rsa_ek, MadeCredential};
    pub use super::keys::pkcs11::{Hsm, Pkcs11Manager};
    pub use super::keys::pkcs11_uri::Pkcs11Uri;
    pub use super::store::file::{FileAuditLog, FileRegister};
}
