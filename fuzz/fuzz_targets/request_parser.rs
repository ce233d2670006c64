//! The request parser on arbitrary input (self-signed requests can verify, so only "no panic").
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(req) = hwpass::verify_request(text, 1_800_000_000) {
            // Whatever verifies carries a real P-256 key and a non-empty subject.
            assert!(!req.claims.sub.trim().is_empty());
            let _ = req.jwk.thumbprint();
        }
    }
});
