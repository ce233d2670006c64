//! The desktop's promise, tried as an attacker and as a traveller would: no older state or
//! clock undoes an expiry or a revocation; an honest clock error, a mangled paste, the wrong
//! file or a missing TPM never strands anyone without a clear way out. On swtpm and on the
//! software backend.

use crate::common::*;

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;

/// An issuer, its trust bundle, and a desktop: software, or TPM on its own swtpm.
fn setup(tpm: bool) -> (Issuer, std::path::PathBuf, Desktop, Option<Swtpm>) {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    if tpm {
        let sim = Swtpm::start();
        let desk = Desktop::with_tpm(&trust, &sim);
        (issuer, trust, desk, Some(sim))
    } else {
        let desk = Desktop::enrolled(&trust);
        (issuer, trust, desk, None)
    }
}

fn pass_for(issuer: &Issuer, desk: &Desktop, now: i64, valid_for: &str) -> String {
    let mut cmd = desk.cmd(now);
    cmd.args([
        "request",
        "--subject",
        "ann@corp",
        "--device-name",
        "laptop",
    ]);
    let request = run(cmd, None).ok().line();
    issuer
        .sign(&request, now, &["--valid-for", valid_for])
        .ok()
        .line()
}

fn message(v: &serde_json::Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

fn hint(v: &serde_json::Value) -> &str {
    v["hint"].as_str().unwrap_or_default()
}

#[test]
fn an_older_state_after_a_refresh_does_not_undo_a_revocation_on_the_tpm() {
    let (issuer, _trust, desk, _tpm) = setup(true);
    let pass = pass_for(&issuer, &desk, NOW, "2d");
    desk.install(&pass, NOW).ok();
    let before = std::fs::read(desk.state.join("state.sealed")).unwrap();
    let jti = hwpass::decode(&pass).unwrap().payload().unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_string();
    issuer.run(&["revoke", "--pass", &jti], None).ok();
    let list = issuer.denylist("list.jwt", NOW + 60);
    desk.run(
        &["refresh", "--file", list.to_str().unwrap()],
        None,
        NOW + 60,
    )
    .ok();
    assert_eq!(desk.check(NOW + 120).0, 8);

    std::fs::write(desk.state.join("state.sealed"), &before).unwrap();
    let (code, v) = desk.check(NOW + 180);
    assert_eq!(code, 7, "{v}");
    assert!(
        message(&v).contains("an older copy of state.sealed was put back"),
        "{v}"
    );
    // `status` does not pretend either.
    let r = desk.run(&["status"], None, NOW + 180);
    assert_eq!(r.code, 7, "{r:?}");
    assert!(r.stderr.contains("older copy"), "{r:?}");
}

#[test]
fn an_expiry_once_seen_stays_seen_when_the_clock_is_turned_back() {
    for tpm in [false, true] {
        let (issuer, _trust, desk, _sim) = setup(tpm);
        desk.install(&pass_for(&issuer, &desk, NOW, "2d"), NOW).ok();
        // Checked after expiry…
        assert_eq!(desk.check(NOW + 32 * DAY).0, 5, "tpm {tpm}");
        // …then the clock turned back into the pass's lifetime: refused, not valid.
        let (code, v) = desk.check(NOW + DAY + 60);
        assert_eq!(code, 7, "tpm {tpm}: {v}");
        assert!(message(&v).contains("this desktop already saw"), "{v}");
    }
}

#[test]
fn an_expiry_stays_seen_across_a_reboot_with_the_clock_turned_back() {
    let (issuer, _trust, desk, sim) = setup(true);
    let mut sim = sim.unwrap();
    desk.install(&pass_for(&issuer, &desk, NOW, "1d"), NOW).ok();
    assert_eq!(desk.check(NOW + 2 * DAY).0, 5);
    sim.restart();
    let mut after = Desktop::new();
    after.tcti = Some(sim.tcti());
    after.state = desk.state.clone();
    after.machine_id = desk.machine_id.clone();
    // Twenty minutes back, inside the pass's lifetime by the wall clock: still refused.
    let (code, v) = after.check(NOW + DAY - 20 * 60);
    assert_ne!(code, 0, "{v}");
    assert_eq!(code, 7, "{v}");
}

#[test]
fn a_clock_that_ran_ahead_is_recovered_by_a_fresh_pass_and_only_by_one() {
    for tpm in [false, true] {
        let (issuer, _trust, desk, _sim) = setup(tpm);
        desk.install(&pass_for(&issuer, &desk, NOW, "2d"), NOW).ok();
        // A pass requested now and kept for later.
        let kept = pass_for(&issuer, &desk, NOW, "2d");
        // The clock runs five hours ahead for a while; checks pass and the desktop records it.
        assert_eq!(desk.check(NOW + 5 * HOUR).0, 0, "tpm {tpm}");
        // Back at the right time: refused, in plain words.
        let (code, v) = desk.check(NOW + 60);
        assert_eq!(code, 7, "tpm {tpm}: {v}");
        assert!(message(&v).contains("4h 59m later"), "{v}");
        assert!(hint(&v).contains("request a new pass"), "{v}");
        // The pass requested before the clock ran ahead cannot reset the mark: an expired
        // pass could otherwise be revived by turning the clock back.
        let r = desk.install(&kept, NOW + 120);
        assert_eq!(r.code, 7, "tpm {tpm}: {r:?}");
        // A pass requested now, at this state, resets it to the issuer's signed time.
        let fresh = pass_for(&issuer, &desk, NOW + 180, "2d");
        let r = desk.install(&fresh, NOW + 240);
        assert_eq!(r.code, 0, "tpm {tpm}: {r:?}");
        assert_eq!(desk.check(NOW + 300).0, 0, "tpm {tpm}");
        // And still nothing earlier than that signed time is accepted.
        assert_eq!(desk.check(NOW - HOUR).0, 7, "tpm {tpm}");
    }
}

/// A long token as mail clients and chat tools pass it on.
fn mangled(token: &str) -> Vec<(&'static str, String)> {
    let wrap = |width: usize| {
        token
            .as_bytes()
            .chunks(width)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    };
    vec![
        ("wrapped at 64", wrap(64)),
        ("wrapped at 76 with CRLF", wrap(76).replace('\n', "\r\n")),
        ("quoted", format!("\"{token}\"")),
        ("in backticks", format!("`{token}`")),
        (
            "mail-quoted",
            wrap(76)
                .lines()
                .map(|l| format!("> {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ]
}

#[test]
fn passes_damaged_by_mail_and_chat_still_install_and_files_are_read() {
    let (issuer, _trust, desk, _sim) = setup(false);
    let pass = pass_for(&issuer, &desk, NOW, "2d");
    for (what, text) in mangled(&pass) {
        let r = desk.install(&text, NOW);
        assert_eq!(r.code, 0, "{what}: {r:?}");
        // As an argument too.
        let r = desk.run(&["install", &text], None, NOW);
        assert_eq!(r.code, 0, "{what} as an argument: {r:?}");
    }
    // A file name where the pass belongs is read.
    let file = desk.dir.path().join("pass.txt");
    std::fs::write(&file, format!("{}\n", mangled(&pass)[1].1)).unwrap();
    let r = desk.run(&["install", file.to_str().unwrap()], None, NOW);
    assert_eq!(r.code, 0, "{r:?}");
    let r = desk.run(&["install", "no-such-pass.txt"], None, NOW);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("there is no file no-such-pass.txt"),
        "{r:?}"
    );
    // Damage is named as damage in transit, with the fix.
    let r = desk.install(&pass[..pass.len() - 30], NOW);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("damaged on its way"), "{r:?}");
    assert!(!r.stderr.contains("enroll --force"), "{r:?}");
}

#[test]
fn a_sealed_delivery_survives_wrapping_and_a_cut_one_is_not_blamed_on_the_device() {
    let ca = LocalCa::new();
    let sim = Swtpm::provisioned(&ca);
    let issuer = Issuer::with_attestation(&ca.roots(), None, true);
    let trust = issuer.setup();
    let desk = Desktop::with_tpm(&trust, &sim);
    let delivery = issuer
        .sign(&desk.request("ann@corp", &[]), NOW, &[])
        .ok()
        .line();
    assert!(delivery.starts_with("hwpass-dlv1."));
    // `inspect` says what it is without the TPM.
    let r = desk.run(&["inspect", &delivery], None, NOW).ok();
    assert!(r.stdout.contains("a pass sealed to a TPM"), "{r:?}");
    for cut in [delivery.len() - 40, delivery.len() / 2, 200] {
        let r = desk.install(&delivery[..cut], NOW);
        assert_ne!(r.code, 6, "cut at {cut}: {r:?}");
        assert_eq!(r.code, 4, "cut at {cut}: {r:?}");
        assert!(
            r.stderr.contains("damaged on its way"),
            "cut at {cut}: {r:?}"
        );
        assert!(!r.stderr.contains("enroll --force"), "cut at {cut}: {r:?}");
    }
    for (what, text) in mangled(&delivery) {
        let r = desk.install(&text, NOW);
        assert_eq!(r.code, 0, "{what}: {r:?}");
    }
    assert_eq!(desk.check(NOW + 60).0, 0);
}

#[test]
fn the_wrong_document_is_named_for_what_it_is() {
    let (issuer, trust, desk, _sim) = setup(false);
    // The issuer's config given as the trust bundle.
    let fresh = Desktop::new();
    let r = fresh.run(
        &[
            "enroll",
            "--backend",
            "software",
            "--trust",
            issuer.config.to_str().unwrap(),
        ],
        None,
        NOW,
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains("this is an issuer config file, not a trust bundle"),
        "{r:?}"
    );
    assert!(r.stderr.contains("hwpass-issuer jwks"), "{r:?}");
    // The trust bundle given as a deny list.
    let r = desk.run(&["refresh", "--file", trust.to_str().unwrap()], None, NOW);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("this is a trust bundle, not a deny list"),
        "{r:?}"
    );
    // The request pasted where the pass belongs.
    let request = desk.request("ann@corp", &[]);
    let r = desk.install(&request, NOW);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains("this is a pass request, not an access pass")
            && r.stderr.contains("give it to your admin"),
        "{r:?}"
    );
}

#[test]
fn tpm_trouble_names_its_cause_and_status_still_answers() {
    let (issuer, trust, desk, sim) = setup(true);
    let mut sim = sim.unwrap();
    desk.install(&pass_for(&issuer, &desk, NOW, "2d"), NOW).ok();
    let t = trust.to_str().unwrap();
    // No device node.
    let fresh = Desktop::new();
    let r = fresh.run(
        &[
            "--tcti",
            "device:/dev/no-such-tpm",
            "enroll",
            "--backend",
            "tpm",
            "--trust",
            t,
        ],
        None,
        NOW,
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("there is no TPM device at /dev/no-such-tpm")
            && r.stderr.contains("firmware"),
        "{r:?}"
    );
    // A simulator that is not running.
    sim.kill();
    let (code, v) = desk.check(NOW + 60);
    assert_eq!(code, 1, "{v}");
    assert!(message(&v).contains("no TPM simulator is listening"), "{v}");
    assert!(hint(&v).contains("start the TPM simulator"), "{v}");
    // `status` answers with what the record says, and why the rest is unknown.
    let r = desk.run(&["status"], None, NOW + 60);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("unreachable: no TPM simulator is listening"),
        "{r:?}"
    );
    let r = desk.run(&["status", "--json"], None, NOW + 60);
    assert_eq!(r.json()["backend"], "tpm");
    assert!(r.json()["device_error"].is_string());
}

#[test]
fn permission_denied_on_the_device_names_the_tss_group() {
    // Run as an account that may not open the device node, as a desktop user outside the
    // `tss` group would be (tests run as root, for whom every open succeeds).
    require("runuser", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("tpmrm0");
    std::fs::write(&node, b"").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let shared = state.path().join("issuer.jwks");
    std::fs::copy(&trust, &shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(env!("CARGO_BIN_EXE_hwpass"))
        .arg("--state-dir")
        .arg(state.path().join("s"))
        .args(["--tcti", &format!("device:{}", node.display())])
        .args(["enroll", "--backend", "tpm", "--trust"])
        .arg(&shared)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HWPASS_FAKE_NOW", NOW.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("tss group"),
        "{stderr}"
    );
}

#[test]
fn a_pass_about_to_expire_says_renew_and_status_tells_the_state_now() {
    let (issuer, trust, desk, _sim) = setup(false);
    let pass = pass_for(&issuer, &desk, NOW, "3d");
    desk.install(&pass, NOW).ok();
    let (code, v) = desk.check(NOW + 60);
    assert_eq!((code, v["renew"].as_bool()), (0, Some(false)), "{v}");
    // Less than max(24 h, 20 % of 3 d) left: still valid, with the warning.
    let (code, v) = desk.check(NOW + 3 * DAY - 7);
    assert_eq!((code, v["renew"].as_bool()), (0, Some(true)), "{v}");
    assert!(
        v["warning"]
            .as_str()
            .unwrap()
            .contains("renew before you go offline"),
        "{v}"
    );
    let r = desk.run(&["check"], None, NOW + 3 * DAY - 5);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("renew before you go offline"), "{r:?}");
    // `status` says what the pass is now.
    let r = desk.run(&["status"], None, NOW + 3 * DAY - 5).ok();
    assert!(r.stdout.contains("pass             valid"), "{r:?}");
    let r = desk.run(&["status", "--json"], None, NOW + 4 * DAY).ok();
    assert_eq!(r.json()["pass"]["state"], "expired");
    // Another desktop whose pass is revoked.
    let other = Desktop::enrolled(&trust);
    let pass = pass_for(&issuer, &other, NOW, "2d");
    let jti = hwpass::decode(&pass).unwrap().payload().unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_string();
    other.install(&pass, NOW).ok();
    issuer.run(&["revoke", "--pass", &jti], None).ok();
    let list = issuer.denylist("list.jwt", NOW + 60);
    other
        .run(
            &["refresh", "--file", list.to_str().unwrap()],
            None,
            NOW + 60,
        )
        .ok();
    let r = other.run(&["status"], None, NOW + 60).ok();
    assert!(r.stdout.contains("pass             revoked"), "{r:?}");
}

#[test]
fn refresh_remembers_its_server() {
    let (issuer, _trust, desk, _sim) = setup(false);
    let server = crate::service::Server::start(&issuer, "");
    let r = desk.run(&["refresh"], None, NOW);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no server to refresh from yet"), "{r:?}");
    desk.run(&["refresh", "--server", &server.url], None, NOW)
        .ok();
    // Bare: the same server again.
    let r = desk.run(&["refresh"], None, NOW + 60).ok();
    assert!(r.stdout.contains("already up to date"), "{r:?}");
    let r = desk.run(&["status"], None, NOW + 60).ok();
    assert!(
        r.stdout
            .contains(&format!("refresh server   {}", server.url)),
        "{r:?}"
    );
}

#[test]
fn the_issuer_takes_mangled_requests_names_other_documents_and_says_when_a_clock_ran_ahead() {
    let (issuer, _trust, desk, _sim) = setup(false);
    let request = desk.request("ann@corp", &[]);
    // Wrapped, quoted or mail-quoted, on stdin or as a file: signed.
    for (what, text) in mangled(&request) {
        let r = issuer.sign(&text, NOW, &[]);
        assert_eq!(r.code, 0, "{what}: {r:?}");
    }
    let file = desk.dir.path().join("request.txt");
    std::fs::write(&file, &mangled(&request)[1].1).unwrap();
    let r = issuer.run(&["sign", file.to_str().unwrap()], None);
    assert_eq!(r.code, 0, "{r:?}");
    // A pass where the request belongs is named, with what to do.
    let pass = r.line();
    let r = issuer.sign(&pass, NOW, &[]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains("this is an access pass, not a pass request")
            && r.stderr.contains("hwpass install"),
        "{r:?}"
    );
    // A cut request is damage in transit.
    let r = issuer.sign(&request[..request.len() - 20], NOW, &[]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("damaged on its way"), "{r:?}");
    // A desktop whose clock ran five hours ahead: the issuer says so when it signs.
    desk.install(&pass, NOW).ok();
    assert_eq!(desk.check(NOW + 5 * HOUR).0, 0);
    let mut cmd = desk.cmd(NOW + 60);
    cmd.args(["request", "--subject", "ann@corp"]);
    let ahead = run(cmd, None).ok().line();
    let r = issuer.sign(&ahead, NOW + 120, &[]).ok();
    assert!(r.stderr.contains("clock was 4h 58m ahead once"), "{r:?}");
    // The same through the service's JSON API, wrapped as a mail client would.
    let server = crate::service::Server::start(&issuer, "");
    let body = serde_json::json!({ "request": mangled(&ahead)[4].1 }).to_string();
    let (status, _, reply) = server.post("/v1/passes", Some(&server.bearer()), &body);
    assert_eq!(status, 201, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert!(
        reply["clock_ahead_seconds"].as_i64().unwrap() > 4 * HOUR,
        "{reply}"
    );
}
