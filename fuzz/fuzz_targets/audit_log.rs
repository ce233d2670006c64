//! The audit log reader (the file store's log and checkpoint file, as `audit verify` reads
//! them) and the signed checkpoint note parser on arbitrary input: never a panic; a log that
//! verifies is exactly covered by checkpoints signed with the trusted key (which the seed
//! corpus carries, so the fuzzer starts from valid logs and bends them).
//!
//! Input: the log's bytes, then a NUL byte and the checkpoint file's bytes (or none).
#![no_main]

use hwpass::fuzz::fuzz_audit_log;
use hwpass::issuer::AuditTrust;
use hwpass::{MemoryKey, Signer as _};
use libfuzzer_sys::fuzz_target;

static TRUST: std::sync::OnceLock<AuditTrust> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let trust = TRUST.get_or_init(|| {
        let key = MemoryKey::from_bytes(&[0x42; 32]).expect("valid scalar");
        AuditTrust::new("test-issuer/hwpass-audit", [*key.verifying_key()]).expect("valid origin")
    });
    let (log, checkpoint) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(v) = fuzz_audit_log(log, checkpoint, trust) {
        let covered = v.checkpoint.as_ref().map_or(0, |c| c.size);
        assert_eq!(v.records, covered + v.pending, "every record is covered");
        assert!(v.records == 0 || v.checkpoint.is_some() || v.pending > 0);
    }
    if let Ok(note) = std::str::from_utf8(data) {
        if let Ok(c) = trust.open(note) {
            assert_eq!(c.origin, trust.origin());
        }
    }
});
