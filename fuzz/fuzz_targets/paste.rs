//! Paste cleanup and what follows it, on arbitrary text: never panics, never leaves whitespace,
//! never makes the strict parser accept what it would refuse (nothing verifies without the key).
#![no_main]

use hwpass::{clean_paste, identify, verify_pass, Jwk, Jwks, MemoryKey, PassExpectations, Signer as _};
use libfuzzer_sys::fuzz_target;

static TRUST: std::sync::OnceLock<Jwks> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let trust = TRUST.get_or_init(|| {
        let key = MemoryKey::from_bytes(&[0x42; 32]).expect("valid scalar");
        Jwks::new([Jwk::new(*key.verifying_key())], None)
    });
    let _ = identify(text);
    let cleaned = clean_paste(text);
    assert!(!cleaned.chars().any(char::is_whitespace), "{cleaned:?}");
    let _ = identify(&cleaned);
    if let Some(d) = hwpass::Delivery::parse(&cleaned) {
        let _ = d.map(|d| d.open(&[0u8; 32]));
    }
    let expect = PassExpectations { trust, iss: "fuzz", aud: "fuzz" };
    assert!(verify_pass(&cleaned, &expect, 1_800_000_000).is_err());
});
