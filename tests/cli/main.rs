//! Integration tests: the real binaries against a real SoftHSM token per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attest;
mod c_abi;
mod common;
mod conformance;
mod desktop_software;
mod desktop_tpm;
mod desktop_trust;
mod durability;
mod ek_chain;
mod interop;
mod issuer;
mod matrix;
mod revocation;
mod service;
