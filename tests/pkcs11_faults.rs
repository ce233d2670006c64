//! PKCS#11 faults inside one process: a token login lost mid-run, and a second login.
//!
//! Its own test binary (one process, one test): SoftHSM reads SOFTHSM2_CONF when the module is
//! initialised, and a process has one PKCS#11 module instance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use hwpass::issuer::internal::Hsm;
use hwpass::issuer::internal::Pkcs11Uri;
use hwpass::Signer as _;
use secrecy::SecretString;

#[test]
fn lost_login_is_recovered_and_a_second_login_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm/setup-token"))
        .arg(dir.path())
        .arg("faults")
        .env("HWPASS_PIN", "1234-faults")
        .output()
        .expect("softhsm/setup-token (needs softhsm2: run ci/setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Single-threaded here: this is the only test in this binary.
    std::env::set_var("SOFTHSM2_CONF", dir.path().join("softhsm2.conf"));

    let uri = Pkcs11Uri::parse(
        "pkcs11:token=faults;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so",
    )
    .unwrap();
    let pin = SecretString::from("1234-faults".to_string());
    let hsm = Hsm::open(&uri).unwrap();
    let key = hsm.generate(&pin).unwrap();
    let msg = b"hello";
    let verify = |sig: p256::ecdsa::Signature| {
        hwpass::verify_es256(key.verifying_key(), msg, &sig.to_bytes()).unwrap()
    };
    verify(key.try_sign(msg).unwrap());

    // A second key object opened on the same token logs in again: CKR_USER_ALREADY_LOGGED_IN
    // is success.
    let again = hsm.open_key(&pin).unwrap();
    assert_eq!(again.verifying_key(), key.verifying_key());

    // The application is logged out (another part of it, or a token reset): both keys log in
    // again on their next use and sign.
    hsm.logout().unwrap();
    verify(key.try_sign(msg).unwrap());
    hsm.logout().unwrap();
    verify(again.try_sign(msg).unwrap());

    // A wrong PIN after that is still a clear refusal.
    let wrong = SecretString::from("0000".to_string());
    hsm.logout().unwrap();
    let err = hsm.open_key(&wrong).unwrap_err().to_string();
    assert!(err.contains("refused the PIN"), "{err}");
}
