//! The pass parser and verifier on arbitrary input: never panics, never accepts garbage.
#![no_main]

use hwpass::{MemoryKey, Signer as _};
use hwpass::{verify_pass, Jwk, Jwks, PassExpectations};
use libfuzzer_sys::fuzz_target;

static TRUST: std::sync::OnceLock<Jwks> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // A fixed trust bundle: the fuzzer cannot hold its private key, so nothing may verify.
    let trust = TRUST.get_or_init(|| {
        let key = MemoryKey::from_bytes(&[0x42; 32]).expect("valid scalar");
        Jwks::new([Jwk::new(*key.verifying_key())], None)
    });
    let expect = PassExpectations { trust, iss: "fuzz", aud: "fuzz" };
    assert!(verify_pass(text, &expect, 1_800_000_000).is_err());
    if let Ok(d) = hwpass::decode(text) {
        let _ = d.payload();
    }
});
