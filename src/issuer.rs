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
mod init;
mod keys;
mod policy;
mod serve;
mod sign;
mod store;

pub use attest::{AttestError, AttestationPolicy, CertRef, EkCertError, TpmIdentity};
pub use batch::{issue_batch, BatchItem, BatchOptions};
pub use config::{IssuerConfig, Limits, ProxyConfig, ServeConfig, Storage, PROXY_SECRET_HEADER};
pub use credential::EkPublic;
pub use error::{exit, Access, IssuerError};
pub use init::{init, Account, InitError, InitKey, InitOptions, InitReport, SOFTHSM_MODULE};
pub use keys::pkcs11::{Ckr, PIN_ENV};
pub use keys::pool::KeyPool;
pub use keys::{
    manager, IssuerKey, KeyError, KeyFacts, KeyManager, NoPrompt, PinPrompt, Pkcs11Error,
    Registration, UriError, REGISTRY,
};
pub use policy::{Policy, PolicyError};
pub use serve::{harden_process, hold_sighup, run as serve, Hardened};
pub use sign::{
    approve, audit_trust, issue, publish_denylist, revoke_device, revoke_pass, sign_one,
    trust_bundle, Approved, MAX_DELIVERY_LEN,
};
pub use store::file::{export_log, Exported, FileAuditLog, FileRegister};
pub use store::postgres::{DbError, Imported, Migrated, PgOptions, PgStore};
pub use store::{
    entry_hash, record_hash, verify_log, AuditEntry, AuditError, AuditRecord, AuditStore, AuditTpm,
    AuditTrust, ChainSummary, Checkpoint, CheckpointError, Checkpointer, LogContents, Notary,
    NotaryError, PendingAppend, RecordKind, Register, RevocationError, RevocationRecord,
    RevocationStore, Revoked, RevokedKind, Round, Target, Verified, GENESIS,
};

/// Items for this crate's own integration tests: not part of the API.
#[doc(hidden)]
pub mod internal {
    pub use super::attest::{parse_pem_certificates, verify as verify_evidence, Verified};
    pub use super::credential::{kdfa, kdfe, make_credential, rsa_ek, MadeCredential};
    pub use super::keys::pkcs11::{
        ec_point_sec1, EcPointEncoding, ExtraAttribute, Hsm, KeyTemplate, LoginScope,
        Pkcs11Manager, SignMechanism, TokenOptions,
    };
    pub use super::keys::pkcs11_uri::Pkcs11Uri;
    pub use super::serve::{encode_form, parse_form, Fields, FormError};
    #[cfg(fuzzing)]
    pub use super::store::file::fuzz_audit_log;
}
