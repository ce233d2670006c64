//! One conformance suite for every device backend: the same checks, run on every backend the
//! build registers (`hwpass::desktop::BACKENDS`) — the software key, and the TPM on a swtpm of
//! its own. A backend added to the registry is tested here without a new test.

use hwpass::desktop::{Backend, DesktopError, DeviceOptions, BACKENDS};
use hwpass::{verify_es256, Jwk, Signer as _};

use crate::common::{Desktop, Swtpm};

/// The environment a backend needs on this machine: a machine identity file for the software
/// key, a simulator for the TPM. Kept alive for the test.
struct Rig {
    opts: DeviceOptions,
    /// Another machine: the same backend, another machine identity or another TPM.
    elsewhere: DeviceOptions,
    _tpms: Vec<Swtpm>,
    _desks: Vec<Desktop>,
}

fn rig(backend: &dyn Backend) -> Rig {
    let (a, b) = (Desktop::new(), Desktop::new());
    let software = |d: &Desktop| DeviceOptions {
        tcti: None,
        machine_id_file: Some(d.machine_id.clone()),
    };
    match backend.name() {
        "software" => Rig {
            opts: software(&a),
            elsewhere: software(&b),
            _tpms: Vec::new(),
            _desks: vec![a, b],
        },
        "tpm" => {
            let (here, there) = (Swtpm::start(), Swtpm::start());
            Rig {
                opts: DeviceOptions {
                    tcti: Some(here.tcti()),
                    machine_id_file: None,
                },
                elsewhere: DeviceOptions {
                    tcti: Some(there.tcti()),
                    machine_id_file: None,
                },
                _tpms: vec![here, there],
                _desks: vec![a, b],
            }
        }
        other => panic!("no conformance rig for the {other:?} backend: add one here"),
    }
}

fn conformance(backend: &dyn Backend) {
    let name = backend.name();
    let rig = rig(backend);
    backend
        .probe(&rig.opts)
        .unwrap_or_else(|e| panic!("{name}: probe: {e}"));

    // Create: a P-256 key that signs low-S ES256 and proves possession of itself.
    let hwpass::desktop::Created { device, record, .. } = backend
        .create(&rig.opts)
        .unwrap_or_else(|e| panic!("{name}: create: {e}"));
    let jwk = Jwk::new(*device.key().verifying_key());
    let sig = device.key().try_sign(b"conformance").unwrap();
    assert!(sig.normalize_s().is_none(), "{name}: high-S signature");
    verify_es256(jwk.verifying_key(), b"conformance", &sig.to_bytes()).unwrap();
    device
        .prove(&jwk)
        .unwrap_or_else(|e| panic!("{name}: prove: {e}"));

    // Seal: only this device, for this key thumbprint, opens the state.
    let sealed = device.seal(b"desktop state", &jwk.thumbprint()).unwrap();
    assert!(
        device.unseal(&sealed, "another-thumbprint").is_err(),
        "{name}"
    );
    drop(device);

    // Open from the record: same key, same sealing; a proof for another key fails.
    let again = backend
        .open(&record, &jwk, &rig.opts)
        .unwrap_or_else(|e| panic!("{name}: open: {e}"));
    assert_eq!(again.key().verifying_key(), jwk.verifying_key(), "{name}");
    assert_eq!(
        &again.unseal(&sealed, &jwk.thumbprint()).unwrap()[..],
        b"desktop state",
        "{name}"
    );
    let stranger = Jwk::new(*hwpass::MemoryKey::generate().verifying_key());
    assert!(
        again.prove(&stranger).is_err(),
        "{name}: proved a key it does not hold"
    );
    drop(again);

    // Another machine cannot use the record (exit 6: bound to another device).
    let foreign = backend
        .open(&record, &jwk, &rig.elsewhere)
        .and_then(|d| d.prove(&jwk).map(|_| ()));
    let err = foreign.expect_err("a device record worked on another machine");
    assert_eq!(err.exit_code(), 6, "{name}: {err}");

    // A damaged record is refused, never a panic.
    let damaged = backend.open(&serde_json::json!({"not": "a record"}), &jwk, &rig.opts);
    assert!(
        matches!(damaged, Err(ref e) if e.exit_code() == 6),
        "{name}: {damaged:?}"
    );
    let _: Option<DesktopError> = damaged.err();
}

#[test]
fn every_registered_device_backend_passes_the_same_suite() {
    let names: Vec<&str> = BACKENDS.iter().map(|b| b.name()).collect();
    assert!(
        names.contains(&"software") && names.contains(&"tpm"),
        "{names:?}"
    );
    for backend in BACKENDS {
        conformance(*backend);
    }
}
