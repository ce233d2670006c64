//! The deny list verifier (what `hwpass refresh` reads from a server or a file) on arbitrary
//! input, and the deny list claims parser behind it: never panics, never accepts a list the
//! fuzzer could not have signed.
#![no_main]

use hwpass::denylist::verify;
use hwpass::DenyList;
use hwpass::{MemoryKey, Signer as _};
use hwpass::{Jwk, Jwks, TrustParams};
use libfuzzer_sys::fuzz_target;

static TRUST: std::sync::OnceLock<Jwks> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let trust = TRUST.get_or_init(|| {
        let key = MemoryKey::from_bytes(&[0x42; 32]).expect("valid scalar");
        Jwks::new([Jwk::new(*key.verifying_key())], None)
    });
    let expect = TrustParams { iss: "fuzz".into(), aud: "fuzz".into() };
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(verify(text, trust, &expect, 1_800_000_000).is_err());
    }
    // The claims as they would be parsed after a valid signature.
    if let Ok(list) = serde_json::from_slice::<DenyList>(data) {
        let _ = list.trust();
        let _ = list.revokes("a", "b");
    }
});
