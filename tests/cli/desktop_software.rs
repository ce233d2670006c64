//! The desktop with the software backend, end to end through both binaries.

use std::os::unix::fs::PermissionsExt as _;

use crate::common::*;

fn issued(issuer: &Issuer, desk: &Desktop, extra: &[&str]) -> String {
    let req = desk.request("alice@corp", extra);
    issuer.sign(&req, NOW, &[]).ok().line()
}

#[test]
fn happy_path_enroll_request_sign_install_check_status() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);

    // State files are private.
    for f in ["device.json", "state.sealed"] {
        let mode = std::fs::metadata(desk.state.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let dir_mode = std::fs::metadata(&desk.state).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    // The device key is not stored in plaintext: the record holds only the public key and a
    // ciphertext.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(desk.state.join("device.json")).unwrap())
            .unwrap();
    assert!(record["jwk"].get("d").is_none());
    assert_eq!(record["software"]["kdf"], "hkdf-sha256:machine-id");

    let (code, v) = desk.check(NOW);
    assert_eq!((code, v["status"].as_str()), (3, Some("no-pass")));

    let pass = issued(&issuer, &desk, &[]);
    let installed = desk.install(&pass, NOW + 60).ok();
    assert!(
        installed.stdout.contains("installed: pass for alice@corp"),
        "{installed:?}"
    );

    let (code, v) = desk.check(NOW + 120);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["status"], "valid");
    assert_eq!(v["subject"], "alice@corp");
    assert_eq!(v["issuer"], "test-issuer");
    assert_eq!(v["binding"], "software");
    assert_eq!(v["attestation"], "none");
    // Software passes default to the policy's software maximum (3d), not the 7d default.
    assert_eq!(v["expires_at"].as_i64(), Some(NOW + 3 * 86400));
    assert_eq!(v["remaining_seconds"].as_i64(), Some(3 * 86400 - 120));

    let human = desk.run(&["check"], None, NOW + 120).ok();
    assert!(human.stdout.contains("valid until"), "{human:?}");

    let status = desk.run(&["status", "--json"], None, NOW).ok().json();
    assert_eq!(status["binding"], "software");
    assert_eq!(status["pass"]["subject"], "alice@corp");

    // The library call gives the same verdict as the CLI.
    let opts = hwpass::desktop::DeviceOptions {
        machine_id_file: Some(desk.machine_id.clone()),
        ..Default::default()
    };
    let lib = hwpass::desktop::check(&desk.state, &opts, NOW + 120);
    assert_eq!(serde_json::to_value(&lib).unwrap(), v);
}

#[test]
fn pass_for_device_a_is_refused_on_device_b() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let a = Desktop::enrolled(&trust);
    let b = Desktop::enrolled(&trust);
    let pass = issued(&issuer, &a, &[]);
    let out = b.install(&pass, NOW);
    assert_eq!(out.code, 6, "{out:?}");
    assert!(out.stderr.contains("bound to another device"), "{out:?}");
    let (code, v) = b.check(NOW);
    assert_eq!(
        (code, v["status"].as_str()),
        (3, Some("no-pass")),
        "B still has no pass"
    );
    a.install(&pass, NOW).ok();
    assert_eq!(a.check(NOW).0, 0);
}

#[test]
fn state_dir_copied_to_another_machine_cannot_be_opened() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let a = Desktop::enrolled(&trust);
    a.install(&issued(&issuer, &a, &[]), NOW).ok();
    // Another machine: a different machine identity, the same files.
    let other = Desktop::new();
    copy_dir(&a.state, &other.state);
    let (code, v) = other.check(NOW);
    assert_eq!(code, 6, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("another machine"),
        "{v}"
    );
    // The original files are left as they were, not replaced.
    assert_eq!(
        std::fs::read(a.state.join("state.sealed")).unwrap(),
        std::fs::read(other.state.join("state.sealed")).unwrap()
    );
}

#[test]
fn sealed_state_swapped_between_enrolments_is_refused() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let a = Desktop::enrolled(&trust);
    let b = Desktop::enrolled(&trust);
    a.install(&issued(&issuer, &a, &[]), NOW).ok();
    // Same machine identity, B's key, A's sealed state.
    std::fs::copy(&a.machine_id, &b.machine_id).unwrap();
    let b2 = Desktop::new();
    copy_dir(&b.state, &b2.state);
    std::fs::copy(&a.machine_id, &b2.machine_id).unwrap();
    let fresh = Desktop::enrolled(&trust);
    std::fs::copy(&a.machine_id, &fresh.machine_id).unwrap();
    std::fs::copy(
        a.state.join("state.sealed"),
        fresh.state.join("state.sealed"),
    )
    .unwrap();
    let (code, _) = fresh.check(NOW);
    assert_eq!(code, 6);
}

#[test]
fn tampered_passes_are_refused_with_exit_4() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let pass = issued(&issuer, &desk, &[]);
    let cases = [
        with_payload(&pass, |p| p["exp"] = (NOW + 365 * 86400).into()),
        with_payload(&pass, |p| p["sub"] = "root@corp".into()),
        with_payload(&pass, |p| p["hwb"]["kind"] = "tpm".into()),
        format!("{pass}x"),
        pass[..pass.len() - 2].to_string(),
        pass.replacen('.', "..", 1),
    ];
    for tampered in &cases {
        let out = desk.install(tampered, NOW);
        assert_eq!(out.code, 4, "{tampered}: {out:?}");
    }
    // Nothing was installed by any of them.
    assert_eq!(desk.check(NOW).0, 3);
}

#[test]
fn pass_from_another_issuer_is_refused() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let rogue = Issuer::new();
    rogue.setup();
    let desk = Desktop::enrolled(&trust);
    let req = desk.request("alice@corp", &[]);
    let pass = rogue.sign(&req, NOW, &[]).ok().line();
    let out = desk.install(&pass, NOW);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("not in the trust bundle"), "{out:?}");
}

#[test]
fn expiry_and_not_yet_valid_follow_the_injected_clock() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    // The issuer's clock runs an hour ahead of the desktop's: the pass is not yet valid here.
    let req = desk.request("alice@corp", &["--valid-for", "1d"]);
    let early_pass = issuer.sign(&req, NOW + 3600, &[]).ok().line();
    let early = desk.install(&early_pass, NOW);
    assert_eq!(early.code, 5, "{early:?}");
    assert!(early.stderr.contains("not valid before"), "{early:?}");

    assert_eq!(
        desk.install(&early_pass, NOW + 3600 - 60).code,
        0,
        "valid within the leeway"
    );
    let exp = NOW + 3600 + 86400;
    assert_eq!(desk.check(exp - 1).0, 0);
    assert_eq!(desk.check(exp + 59).0, 0, "inside the 60 s leeway");
    let (code, v) = desk.check(exp + 60);
    assert_eq!(code, 5, "{v}");
    assert_eq!(v["status"], "expired");
    assert!(v["hint"].as_str().unwrap().contains("request a new pass"));
}

#[test]
fn clock_far_behind_what_was_seen_is_a_rollback() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    desk.install(&issued(&issuer, &desk, &["--valid-for", "1d"]), NOW)
        .ok();
    assert_eq!(desk.check(NOW + 7200).0, 0);
    // Turning the clock back an hour, still inside the pass's window: refused.
    let (code, v) = desk.check(NOW + 3600);
    assert_eq!(code, 7, "{v}");
    assert_eq!(v["status"], "rollback");
    // Small skew within the tolerance is fine.
    assert_eq!(desk.check(NOW + 7200 - 60).0, 0);
}

#[test]
fn enroll_refuses_to_overwrite_and_bad_trust_bundles() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let t = trust.to_str().unwrap();
    let again = desk.run(
        &["enroll", "--backend", "software", "--trust", t],
        None,
        NOW,
    );
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stderr.contains("already holds an enrolment"),
        "{again:?}"
    );
    desk.run(
        &["enroll", "--backend", "software", "--trust", t, "--force"],
        None,
        NOW,
    )
    .ok();

    let fresh = Desktop::new();
    let bad = fresh.dir.path().join("bad.jwks");
    std::fs::write(
        &bad,
        r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
    )
    .unwrap();
    let out = fresh.run(
        &[
            "enroll",
            "--backend",
            "software",
            "--trust",
            bad.to_str().unwrap(),
        ],
        None,
        NOW,
    );
    assert_eq!(out.code, 4, "{out:?}");
    let out = fresh.run(
        &["enroll", "--backend", "software", "--trust", "/nonexistent"],
        None,
        NOW,
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!fresh.state.join("device.json").exists());
    // A TPM-less build (or machine) says so when the TPM is demanded, and auto falls back
    // with a visible warning.
    let auto = fresh.run(&["enroll", "--trust", t], None, NOW).ok();
    assert!(
        auto.stderr.contains("warning:") && auto.stderr.contains("software"),
        "{auto:?}"
    );
}

#[test]
fn inspect_explains_without_trusting() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let req = desk.request("alice@corp", &["--valid-for", "2d"]);
    let pass = issuer.sign(&req, NOW, &[]).ok().line();
    let forged = with_payload(&pass, |p| p["sub"] = "root@corp".into());
    let out = run_inspect(&forged).ok();
    assert!(
        out.stdout.contains("access pass") && out.stdout.contains("root@corp"),
        "{out:?}"
    );
    assert!(out.stdout.contains("verifies no signature"), "{out:?}");
    let out = run_inspect(&req).ok();
    assert!(
        out.stdout.contains("pass request") && out.stdout.contains("requested lifetime: 2d"),
        "{out:?}"
    );
    let j = {
        let mut cmd = bin("hwpass", NOW);
        cmd.args(["inspect", "--json", &pass]);
        run(cmd, None).ok().json()
    };
    assert_eq!(j["kind"], "access pass");
    assert_eq!(j["signature_verified"], false);
    let out = run_inspect("garbage");
    assert_eq!(out.code, 4, "{out:?}");
}

fn run_inspect(token: &str) -> Run {
    let mut cmd = bin("hwpass", NOW);
    cmd.args(["inspect", "-"]);
    run(cmd, Some(token))
}

#[test]
fn corrupt_state_files_are_clear_errors_and_never_replaced() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let pass = issued(&issuer, &desk, &[]);
    desk.install(&pass, NOW).ok();
    let sealed = desk.state.join("state.sealed");
    let device = desk.state.join("device.json");
    let good_sealed = std::fs::read(&sealed).unwrap();
    let good_device = std::fs::read(&device).unwrap();

    let mut flipped = good_sealed.clone();
    let at = flipped.len() - 10;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    let cases: Vec<(&std::path::Path, Vec<u8>, &str)> = vec![
        (
            &sealed,
            good_sealed[..good_sealed.len() / 2].to_vec(),
            "damaged",
        ),
        (&sealed, Vec::new(), "damaged"),
        (&sealed, flipped, "another machine or was altered"),
        (
            &device,
            good_device[..good_device.len() / 2].to_vec(),
            "damaged",
        ),
        (&device, b"{}".to_vec(), "damaged"),
    ];
    for (path, bytes, needle) in cases {
        std::fs::write(path, &bytes).unwrap();
        let (code, v) = desk.check(NOW);
        assert_eq!(code, 6, "{v}");
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{needle}: {v}"
        );
        // install refuses too, and neither replaces the damaged file.
        assert_eq!(desk.install(&pass, NOW).code, 6);
        assert_eq!(
            std::fs::read(path).unwrap(),
            bytes,
            "the damaged file is left as it was"
        );
        std::fs::write(&sealed, &good_sealed).unwrap();
        std::fs::write(&device, &good_device).unwrap();
    }
    assert_eq!(desk.check(NOW).0, 0);
}
