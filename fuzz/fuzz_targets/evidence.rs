//! The issuer's attestation evidence parser (TPM structures, X.509) on arbitrary evidence.
#![no_main]

use hwpass::fuzz::{verify_evidence as verify, AttestationPolicy};
use hwpass::EvidenceClaims;
use hwpass::{MemoryKey, Signer as _};
use hwpass::Jwk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(ev) = serde_json::from_slice::<EvidenceClaims>(data) else { return };
    let key = MemoryKey::from_bytes(&[0x42; 32]).expect("valid scalar");
    let policy = AttestationPolicy { require: true, allowlist: vec!["00".into()], ..Default::default() };
    // No trust anchors and an allow-list no EK name matches: nothing may verify.
    assert!(verify(&ev, &Jwk::new(*key.verifying_key()), &policy, 1_800_000_000).is_err());
});
