//! One conformance suite for every issuer key manager the build registers
//! (`hwpass::issuer::REGISTRY`): the same checks on each, through the `KeyManager` seam only.
//! `pkcs11:` runs against a SoftHSM token of its own.
//!
//! Its own test binary (one process, one test): SoftHSM reads SOFTHSM2_CONF when the module is
//! initialised, and a process has one PKCS#11 module instance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;

use hwpass::issuer::{manager, KeyManager, NoPrompt, REGISTRY};
use hwpass::{verify_es256, Jwk, Signer as _};

/// A key store for `scheme` on this machine, and the URI of a key label in it. Kept alive for
/// the test.
fn rig(scheme: &str) -> (tempfile::TempDir, String) {
    match scheme {
        "pkcs11" => {
            let dir = tempfile::tempdir().unwrap();
            let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm/setup-token"))
                .arg(dir.path())
                .arg("conformance")
                .env("HWPASS_PIN", "1234-conformance")
                .output()
                .expect("softhsm/setup-token (needs softhsm2: run ci/setup)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Single-threaded: this is the only test in this binary.
            std::env::set_var("SOFTHSM2_CONF", dir.path().join("softhsm2.conf"));
            std::env::set_var("HWPASS_PIN", "1234-conformance");
            let uri = "pkcs11:token=conformance;object=issuer-a?module-path=/usr/lib/softhsm/libsofthsm2.so";
            (dir, uri.to_string())
        }
        other => panic!("no conformance rig for the {other:?} key manager: add one here"),
    }
}

fn conformance(m: Arc<dyn KeyManager>) {
    let uri = m.display_uri();
    assert!(
        !uri.contains("module-path") && !uri.contains("pin"),
        "{uri}"
    );
    assert_eq!(m.label(), Some("issuer-a"));
    assert!(m.public_key().is_err(), "{uri}: a key before keygen");
    assert!(m.open().is_err(), "{uri}: opened before unlock");

    m.unlock(&NoPrompt).unwrap();
    let created = m.create().unwrap();
    let public = *created.verifying_key();
    assert_eq!(
        m.public_key().unwrap(),
        public,
        "{uri}: public key without a PIN"
    );
    assert!(
        m.create().is_err(),
        "{uri}: a second create overwrote the key"
    );

    // Sensitive, not extractable, sign only — read back from the store.
    let facts = created.describe().unwrap();
    for (flag, want) in [
        ("sensitive", true),
        ("extractable", false),
        ("sign", true),
        ("decrypt", false),
        ("derive", false),
    ] {
        assert_eq!(facts.flag(flag), Some(want), "{uri}: {flag} in {facts:?}");
    }
    assert!(!facts.private_value_readable, "{uri}");

    // Every open is an independent handle; all sign low-S ES256 with the same key.
    let handles: Vec<_> = (0..3).map(|_| m.open().unwrap()).collect();
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || {
                for i in 0..20u8 {
                    let sig = h.try_sign(&[i; 7]).unwrap();
                    assert!(sig.normalize_s().is_none());
                    verify_es256(&public, &[i; 7], &sig.to_bytes()).unwrap();
                }
            });
        }
    });

    // Another label in the same store is another key (rotation).
    let next = m.with_label("issuer-b");
    assert_eq!(next.label(), Some("issuer-b"));
    let second = next.create().unwrap();
    assert_ne!(*second.verifying_key(), public);
    assert_eq!(
        Jwk::new(next.public_key().unwrap()).thumbprint(),
        Jwk::new(*second.verifying_key()).thumbprint()
    );
    assert_eq!(
        m.public_key().unwrap(),
        public,
        "{uri}: the first key moved"
    );
}

#[test]
fn every_registered_key_manager_passes_the_same_suite() {
    assert!(REGISTRY.iter().any(|r| r.scheme == "pkcs11"));
    for reg in REGISTRY {
        let (_store, uri) = rig(reg.scheme);
        conformance(manager(&uri).unwrap());
    }
}
