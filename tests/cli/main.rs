//! Integration tests: the real binaries against a real SoftHSM token per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod attest;
mod audit;
mod c_abi;
mod common;
mod conformance;
mod desktop_software;
mod desktop_tpm;
mod desktop_trust;
mod device_grant;
mod durability;
mod ek_chain;
mod hsm_conformance;
mod idp;
mod interop;
mod issuer;
mod matrix;
mod modules;
mod ops;
mod packages;
mod pg;
mod replicas;
mod revocation;
mod self_service;
mod service;
mod service_hardening;
