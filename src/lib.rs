//! hwpass: hardware-backed offline access passes.
//!
//! An issuer signs short-lived passes with a key inside a PKCS#11 HSM; a desktop verifies them
//! offline and proves, on every check, that it holds the device key the pass is bound to (in a
//! TPM 2.0, or a clearly weaker software key). The contract is `SPEC.md`; the README explains
//! the threat model.
//!
//! Layout: [`token`], [`policy`], [`attest`] and [`credential`] are pure (no files, no clock);
//! [`keys`] is the one seam for keys, with one module per device library ([`pkcs11`] for
//! cryptoki, [`tpm`] for tss-esapi, [`software`]); [`issuer`], [`audit`] and [`desktop`] tie them
//! to files; the binaries only parse arguments and print.

pub mod attest;
pub mod audit;
pub mod credential;
pub mod denylist;
pub mod desktop;
pub mod fetch;
pub mod fsutil;
pub mod issuer;
pub mod keys;
pub mod pkcs11;
pub mod pkcs11_uri;
pub mod policy;
pub mod pool;
pub mod revocation;
pub mod serve;
pub mod software;
pub mod token;
pub mod tpm;
pub mod util;
