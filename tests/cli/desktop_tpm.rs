//! The desktop with the TPM backend, against a swtpm simulator per test.

use std::path::Path;

use hwpass::b64url_decode;
use hwpass::Signer as _;

use crate::common::*;

/// A swtpm, an issuer on its own SoftHSM token, its trust bundle, and a desktop enrolled with
/// the TPM backend.
fn tpm_desktop() -> (Swtpm, Issuer, std::path::PathBuf, Desktop) {
    let tpm = Swtpm::start();
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::with_tpm(&trust, &tpm);
    (tpm, issuer, trust, desk)
}

fn flow(issuer: &Issuer, desk: &Desktop) -> String {
    let req = desk.request("bob@corp", &[]);
    let claims = hwpass::decode(&req).unwrap().payload().unwrap();
    assert_eq!(claims["kind"], "tpm");
    let pass = issuer.sign(&req, NOW, &[]).ok().line();
    desk.install(&pass, NOW).ok();
    pass
}

#[test]
fn full_flow_with_the_tpm_backend_leaves_no_handles() {
    let (mut tpm, issuer, _trust, desk) = tpm_desktop();
    let pass = flow(&issuer, &desk);
    assert!(pass.len() <= 600, "pass is {} characters", pass.len());
    let (code, v) = desk.check(NOW + 60);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["binding"], "tpm");
    // Tpm-bound passes get the policy's 7d default, not the 3d software maximum.
    assert_eq!(v["expires_at"].as_i64(), Some(NOW + 7 * 86400));
    assert_eq!(issuer.audit_lines()[0]["kind"], "tpm");
    assert!(
        tpm.transient_handles().is_empty(),
        "{:?}",
        tpm.transient_handles()
    );
    // The record holds TPM blobs and no software key.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(desk.state.join("device.json")).unwrap())
            .unwrap();
    assert_eq!(record["backend"], "tpm");
    assert!(record.get("software").is_none());
    assert_eq!(record["tpm"]["parent"], "persistent");
    // A reboot (TPM restart with its state kept) changes nothing: the SRK is persistent.
    tpm.restart();
    let mut moved = Desktop::new();
    moved.tcti = Some(tpm.tcti());
    moved.state = desk.state.clone();
    moved.machine_id = desk.machine_id.clone();
    assert_eq!(moved.check(NOW + 120).0, 0);
}

/// The TPM commands (TPM_CC codes) a desktop command sends, read from tpm2-tss's TCTI log.
fn tpm_commands(
    desk: &Desktop,
    args: &[&str],
    stdin: Option<&str>,
    now: i64,
) -> (Run, Vec<String>) {
    let mut cmd = desk.cmd(now);
    cmd.env("TSS2_LOG", "tcti+debug").args(args);
    let r = run(cmd, stdin);
    let codes = r
        .stderr
        .lines()
        .filter(|l| l.contains("Sending command"))
        .filter_map(|l| l.split("TPM_CC ").nth(1)?.split(' ').next())
        .map(str::to_owned)
        .collect();
    (r, codes)
}

/// NV writes among TPM commands: NV_DefineSpace, NV_Write, NV_Increment.
fn nv_writes(codes: &[String]) -> usize {
    codes
        .iter()
        .filter(|c| matches!(c.as_str(), "0x12a" | "0x137" | "0x134"))
        .count()
}

#[test]
fn a_check_issues_eight_tpm_commands_and_nv_writes_are_budgeted() {
    let (_tpm, issuer, trust, desk) = tpm_desktop();
    let (r, codes) = tpm_commands(&desk, &["request", "--subject", "bob@corp"], None, NOW);
    assert_eq!(nv_writes(&codes), 0, "request: {codes:?}");
    let pass = issuer
        .sign(&r.line(), NOW, &["--valid-for", "2d"])
        .ok()
        .line();
    let (r, codes) = tpm_commands(&desk, &["install", "-"], Some(&pass), NOW);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(nv_writes(&codes), 1, "install: {codes:?}");

    // An ordinary check: NV_ReadPublic + NV_Read (the state key), NV_ReadPublic + NV_Read (the
    // counter), ReadPublic (SRK), Load, Certify (the key certifies itself over the challenge:
    // proof of possession and the signed TPM clock), FlushContext. No NV write.
    let (r, codes) = tpm_commands(&desk, &["check"], None, NOW + 60);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        codes,
        ["0x169", "0x14e", "0x169", "0x14e", "0x173", "0x157", "0x148", "0x165"],
        "{}",
        r.stderr
    );
    // The time mark is written at most hourly: one NV write after an hour, none right after.
    let (_, codes) = tpm_commands(&desk, &["check"], None, NOW + 3600);
    assert_eq!(nv_writes(&codes), 1, "hourly mark: {codes:?}");
    let (_, codes) = tpm_commands(&desk, &["check"], None, NOW + 3700);
    assert_eq!(nv_writes(&codes), 0, "{codes:?}");
    // The first check past expiry records it (one write); later ones do not.
    let (r, codes) = tpm_commands(&desk, &["check"], None, NOW + 3 * 86400);
    assert_eq!((r.code, nv_writes(&codes)), (5, 1), "{r:?}");
    let (r, codes) = tpm_commands(&desk, &["check"], None, NOW + 4 * 86400);
    assert_eq!((r.code, nv_writes(&codes)), (5, 0), "{r:?}");
    // A deny list that changes something: one write; the same list again: none.
    let list = issuer.denylist("list.jwt", NOW);
    let f = list.to_str().unwrap();
    let (r, codes) = tpm_commands(&desk, &["refresh", "--file", f], None, NOW + 4 * 86400);
    assert_eq!((r.code, nv_writes(&codes)), (0, 1), "{r:?}");
    let (r, codes) = tpm_commands(&desk, &["refresh", "--file", f], None, NOW + 4 * 86400);
    assert_eq!((r.code, nv_writes(&codes)), (0, 0), "{r:?}");
    // Enrolment: two NV_DefineSpace, the state key's NV_Write, the counter's first increment
    // and the first state's.
    let again = Desktop::new();
    let mut t = again.clone_with_tcti(&desk);
    t.state = again.state.clone();
    let (r, codes) = tpm_commands(
        &t,
        &[
            "enroll",
            "--backend",
            "tpm",
            "--trust",
            trust.to_str().unwrap(),
        ],
        None,
        NOW,
    );
    assert_eq!((r.code, nv_writes(&codes)), (0, 5), "{r:?}");
}

#[test]
fn replay_on_another_tpm_fails_with_exit_6() {
    let tpm_a = Swtpm::start();
    let tpm_b = Swtpm::start();
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let a = Desktop::with_tpm(&trust, &tpm_a);
    let pass = flow(&issuer, &a);
    assert_eq!(a.check(NOW).0, 0);

    // Machine B has never seen hwpass: no storage key at 0x81000001.
    let mut copy = Desktop::new();
    copy_dir(&a.state, &copy.state);
    copy.tcti = Some(tpm_b.tcti());
    let (code, v) = copy.check(NOW);
    assert_eq!(code, 6, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("cleared, or this is another machine"),
        "{v}"
    );

    // Machine B already has its own SRK (another desktop enrolled there): the blobs from A do
    // not load under it.
    let _b = Desktop::with_tpm(&trust, &tpm_b);
    let (code, v) = copy.check(NOW);
    assert_eq!(code, 6, "{v}");
    // The pass itself, installed on B's own enrolment, is bound to A's key.
    let out = _b.install(&pass, NOW);
    assert_eq!(out.code, 6, "{out:?}");

    // Independently, with tpm2-tools: A's key blob cannot be loaded into B's TPM, but loads in A.
    let dir = tempfile::tempdir().unwrap();
    let (public, private) = blobs(&a, dir.path());
    let ctx = dir.path().join("k.ctx");
    let load = |tpm: &Swtpm| tpm.load_under_srk(&public, &private, ctx.to_str().unwrap());
    assert_eq!(load(&tpm_a).code, 0);
    tpm_a.tool(&["tpm2_flushcontext", "-t"]).ok();
    let on_b = load(&tpm_b);
    assert_ne!(on_b.code, 0, "{on_b:?}");
    assert!(tpm_a.transient_handles().is_empty() && tpm_b.transient_handles().is_empty());
}

#[test]
fn key_attributes_read_back_from_the_tpm() {
    let (tpm, _issuer, _trust, desk) = tpm_desktop();
    let dir = tempfile::tempdir().unwrap();
    let (public, private) = blobs(&desk, dir.path());
    let ctx = dir.path().join("k.ctx");
    tpm.load_under_srk(&public, &private, ctx.to_str().unwrap())
        .ok();
    let out = tpm
        .tool(&["tpm2_readpublic", "-c", ctx.to_str().unwrap()])
        .ok();
    let raw = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("attributes:"))
        .nth(1)
        .and_then(|l| l.trim().strip_prefix("value: "))
        .unwrap_or_else(|| panic!("{out:?}"))
        .to_string();
    let mut attrs: Vec<&str> = raw.split('|').collect();
    attrs.sort();
    assert_eq!(
        attrs,
        [
            "fixedparent",
            "fixedtpm",
            "noda",
            "sensitivedataorigin",
            "sign",
            "userwithauth"
        ],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("curve-id:\n  value: NIST p256"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("scheme:\n  value: ecdsa\n  raw: 0x18\nscheme-halg:\n  value: sha256"),
        "{}",
        out.stdout
    );
    tpm.tool(&["tpm2_flushcontext", "-t"]).ok();
    assert!(tpm.transient_handles().is_empty());
    // The public key the TPM reports is the one in the request.
    let jwk = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(desk.state.join("device.json")).unwrap(),
    )
    .unwrap()["jwk"]
        .clone();
    let x = hex::encode(b64url_decode(jwk["x"].as_str().unwrap()).unwrap());
    assert!(out.stdout.contains(&x), "x {x} not in {}", out.stdout);
}

#[test]
fn tpm_that_stops_answering_gives_a_clear_error() {
    let (mut tpm, issuer, _trust, desk) = tpm_desktop();
    flow(&issuer, &desk);
    // Mid-check: the connection is cut after 3 of the 8 commands (during the NV reads), then
    // twice after 6 (the device key loaded, the certification not yet made).
    for after in [3, 6, 6] {
        let proxy = CuttingProxy::start(tpm.port, after);
        let r = desk.run(&["--tcti", &proxy.tcti(), "check", "--json"], None, NOW);
        let v = r.json();
        assert_eq!(r.code, 1, "{r:?}");
        assert!(
            v["message"].as_str().unwrap().contains("stopped answering"),
            "{v}"
        );
        assert!(
            v["hint"].as_str().unwrap().contains("TPM is reachable"),
            "{v}"
        );
    }
    // The cut connections left their loaded objects in the TPM (swtpm has no resource manager
    // to flush them, unlike /dev/tpmrm0): the next check says so and what to do…
    let (code, v) = desk.check(NOW);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("tpm2_flushcontext -t"),
        "{v}"
    );
    // …and after doing it, the pass checks out again.
    tpm.tool(&["tpm2_flushcontext", "-t"]).ok();
    let (code, v) = desk.check(NOW);
    assert_eq!(code, 0, "{v}");
    assert!(tpm.transient_handles().is_empty());
    // The TPM gone entirely.
    tpm.kill();
    let (code, v) = desk.check(NOW);
    assert_eq!(code, 1, "{v}");
    assert!(v["message"].as_str().unwrap().contains("TPM"), "{v}");
}

#[test]
fn auto_uses_the_tpm_when_one_answers_and_software_otherwise() {
    let tpm = Swtpm::start();
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let t = trust.to_str().unwrap();
    let with = Desktop::new();
    let r = with
        .run(
            &["--tcti", &tpm.tcti(), "enroll", "--trust", t, "--json"],
            None,
            NOW,
        )
        .ok();
    assert_eq!(r.json()["kind"], "tpm");

    // A TPM named explicitly (--tcti, or HWPASS_TCTI) that does not answer is an error even
    // with `auto`: never a silent fallback to the weaker key.
    let closed = format!("swtpm:host=127.0.0.1,port={}", closed_port());
    for explicit in ["--tcti", "HWPASS_TCTI"] {
        let mut named = Desktop::new();
        let r = if explicit == "--tcti" {
            named.run(&["--tcti", &closed, "enroll", "--trust", t], None, NOW)
        } else {
            named.tcti = Some(closed.clone());
            named.run(&["enroll", "--trust", t], None, NOW)
        };
        assert_eq!(r.code, 1, "{explicit}: {r:?}");
        assert!(
            r.stderr
                .contains("no TPM simulator is listening at 127.0.0.1:")
                && r.stderr.contains("start the TPM simulator"),
            "{explicit}: {r:?}"
        );
        assert!(!named.state.join("device.json").exists(), "{explicit}");
    }
    // Without a TPM named, `auto` falls back to a software key with a visible warning that
    // says what it costs.
    let without = Desktop::new();
    let r = without
        .run(&["enroll", "--trust", t, "--json"], None, NOW)
        .ok();
    assert_eq!(r.json()["kind"], "software");
    assert!(
        r.stderr.contains("warning: no TPM answered")
            && r.stderr
                .contains("an issuer may refuse software-bound passes"),
        "{r:?}"
    );
    // Asking for the TPM explicitly when none answers is an error, not a silent fallback.
    let strict = Desktop::new();
    let r = strict.run(
        &[
            "--tcti",
            &closed,
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
    assert!(r.stderr.contains("no TPM simulator is listening"), "{r:?}");
    assert!(!strict.state.join("device.json").exists());
}

#[test]
fn many_tpm_signatures_all_verify_including_short_r_and_s() {
    let tpm = Swtpm::start();
    let device = hwpass::desktop::internal::TpmDevice::create(&tpm.tcti()).unwrap();
    let key = *device.verifying_key();
    let mut short = 0;
    for i in 0..2000u32 {
        let msg = i.to_be_bytes();
        let sig = device.try_sign(&msg).unwrap();
        let bytes = sig.to_bytes();
        if bytes[0] == 0 || bytes[32] == 0 {
            short += 1;
        }
        hwpass::verify_es256(&key, &msg, &bytes).unwrap_or_else(|e| panic!("signature {i}: {e}"));
    }
    // About 2000/128 ≈ 16 expected; none in 2000 has probability below 1e-6.
    assert!(short > 0, "no signature with a short r or s was seen");
    drop(device);
    assert!(tpm.transient_handles().is_empty());
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Writes the device key's public and private blobs as tpm2-tools files (TPM2B_PUBLIC,
/// TPM2B_PRIVATE: a 16-bit size then the contents).
fn blobs(desk: &Desktop, dir: &Path) -> (String, String) {
    let (public, private) = hwpass::desktop::internal::key_blobs(&desk.tpm_key_file()).unwrap();
    let write = |name: &str, body: &[u8]| {
        let path = dir.join(name);
        write_tpm2b(&path, body);
        path.to_str().unwrap().to_string()
    };
    (write("key.pub", &public), write("key.priv", &private))
}

#[test]
fn damaged_tpm_blobs_are_refused_with_exit_6() {
    let (tpm, issuer, _trust, desk) = tpm_desktop();
    flow(&issuer, &desk);
    let path = desk.state.join("device.json");
    let good = std::fs::read_to_string(&path).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&good).unwrap();
    // Flip one byte inside the encrypted part of the device key's blob.
    let mut blob = b64url_decode(record["tpm"]["key_private"].as_str().unwrap()).unwrap();
    let at = blob.len() - 5;
    blob[at] ^= 0x01;
    record["tpm"]["key_private"] = hwpass::b64url(&blob).into();
    std::fs::write(&path, record.to_string()).unwrap();
    let (code, v) = desk.check(NOW);
    assert_eq!(code, 6, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("another TPM"),
        "{v}"
    );
    assert!(tpm.transient_handles().is_empty());
    std::fs::write(&path, good).unwrap();
    assert_eq!(desk.check(NOW).0, 0);
}

#[test]
fn tpm_cleared_after_enrolment_says_enrol_again() {
    let (tpm, issuer, trust, desk) = tpm_desktop();
    flow(&issuer, &desk);
    tpm.tool(&["tpm2_clear", "-c", "p"]).ok();
    let (code, v) = desk.check(NOW);
    assert_eq!(code, 6, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("TPM was cleared"),
        "{v}"
    );
    assert!(
        v["hint"]
            .as_str()
            .unwrap()
            .contains("enrol this desktop again"),
        "{v}"
    );
    // Enrolling again on the cleared TPM works, with a new key.
    let nv = || {
        tpm.tool(&["tpm2_getcap", "handles-nv-index"])
            .ok()
            .stdout
            .lines()
            .filter(|l| l.contains("0x18"))
            .count()
    };
    assert_eq!(nv(), 0, "the clear removed the enrolment's NV indices");
    let t = trust.to_str().unwrap();
    desk.run(
        &["enroll", "--backend", "tpm", "--trust", t, "--force"],
        None,
        NOW,
    )
    .ok();
    let pass = issuer
        .sign(&desk.request("bob@corp", &[]), NOW, &[])
        .ok()
        .line();
    desk.install(&pass, NOW).ok();
    assert_eq!(desk.check(NOW).0, 0);
    assert_eq!(nv(), 2, "the state key and the counter");
    // Enrolling again with --force gives the old enrolment's NV indices back.
    desk.run(
        &["enroll", "--backend", "tpm", "--trust", t, "--force"],
        None,
        NOW,
    )
    .ok();
    assert_eq!(nv(), 2, "no NV index left behind by --force");
}

/// Moves the TPM's clock forward, as if the machine had been running that long.
fn run_tpm_for(tpm: &Swtpm, secs: u64) {
    let out = tpm.tool(&["tpm2_readclock"]).ok();
    let clock: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("clock: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    tpm.tool(&["tpm2_setclock", &(clock + secs * 1000).to_string()])
        .ok();
}

#[test]
fn tpm_clock_catches_a_wall_clock_turned_back() {
    let (tpm, issuer, _trust, desk) = tpm_desktop();
    flow(&issuer, &desk);
    assert_eq!(desk.check(NOW + 60).0, 0);
    // Three days of running, but the wall clock says one hour: it was turned back.
    run_tpm_for(&tpm, 3 * 86400);
    let (code, v) = desk.check(NOW + 3600);
    assert_eq!(code, 7, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("the TPM has been running for 3d"),
        "{v}"
    );
    // With the clock right, the pass is fine.
    assert_eq!(desk.check(NOW + 3 * 86400 + 60).0, 0);
}

#[test]
fn an_older_sealed_state_is_refused_and_an_expiry_seen_stays_seen_across_reboots() {
    let (tpm, issuer, _trust, desk) = tpm_desktop();
    let pass = issuer
        .sign(&desk.request("bob@corp", &[]), NOW, &["--valid-for", "1d"])
        .ok()
        .line();
    desk.install(&pass, NOW).ok();
    assert_eq!(desk.check(NOW + 60).0, 0);
    let old = std::fs::read(desk.state.join("state.sealed")).unwrap();

    run_tpm_for(&tpm, 2 * 86400);
    assert_eq!(desk.check(NOW + 2 * 86400).0, 5, "expired");
    let newest = std::fs::read(desk.state.join("state.sealed")).unwrap();
    // Put back the copy from the day it was valid: refused whatever the clock says, because
    // the TPM's NV counter has moved past the version that copy carries.
    std::fs::write(desk.state.join("state.sealed"), &old).unwrap();
    for now in [NOW + 3600, NOW + 2 * 86400 + 60] {
        let (code, v) = desk.check(now);
        assert_eq!(code, 7, "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("an older copy of state.sealed was put back"),
            "{v}"
        );
        assert!(v["hint"].as_str().unwrap().contains("newest copy"), "{v}");
    }
    // The newest copy back, and a reboot (TPM restart, state kept): with an honest clock the
    // pass is still expired, and turning the clock back does not revive it.
    std::fs::write(desk.state.join("state.sealed"), &newest).unwrap();
    let mut tpm = tpm;
    tpm.restart();
    let mut after = Desktop::new();
    after.tcti = Some(tpm.tcti());
    after.state = desk.state.clone();
    assert_eq!(
        after.check(NOW + 2 * 86400 + 60).0,
        5,
        "still expired, not a rollback"
    );
    for back in [NOW + 3600, NOW + 2 * 86400 - 20 * 60] {
        let (code, v) = after.check(back);
        assert_eq!(code, 7, "clock turned back to {back}: {v}");
    }
}

#[test]
fn dictionary_attack_lockout_does_not_affect_hwpass() {
    let (tpm, issuer, _trust, desk) = tpm_desktop();
    flow(&issuer, &desk);
    // Another program's DA-protected key, one wrong password, and a TPM allowing one failure.
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    tpm.tool(&[
        "tpm2_dictionarylockout",
        "-s",
        "-n",
        "1",
        "-t",
        "600",
        "-l",
        "600",
    ])
    .ok();
    tpm.tool(&["tpm2_createprimary", "-C", "o", "-c", &p("p.ctx")])
        .ok();
    tpm.tool(&[
        "tpm2_create",
        "-C",
        &p("p.ctx"),
        "-p",
        "secret",
        "-G",
        "ecc",
        "-u",
        &p("o.pub"),
        "-r",
        &p("o.priv"),
    ])
    .ok();
    tpm.tool(&["tpm2_flushcontext", "-t"]).ok();
    tpm.tool(&[
        "tpm2_load",
        "-C",
        &p("p.ctx"),
        "-u",
        &p("o.pub"),
        "-r",
        &p("o.priv"),
        "-c",
        &p("o.ctx"),
    ])
    .ok();
    tpm.tool(&["tpm2_flushcontext", "-t"]).ok();
    std::fs::write(p("m"), b"m").unwrap();
    for _ in 0..2 {
        assert_ne!(
            tpm.tool(&[
                "tpm2_sign",
                "-c",
                &p("o.ctx"),
                "-p",
                "wrong",
                "-o",
                &p("s"),
                &p("m")
            ])
            .code,
            0
        );
        tpm.tool(&["tpm2_flushcontext", "-t"]).ok();
    }
    let props = tpm.tool(&["tpm2_getcap", "properties-variable"]).ok();
    assert!(
        props.stdout.contains("inLockout:                 1"),
        "{}",
        props.stdout
    );
    // hwpass's objects are noDA: checks and requests go on during the lockout.
    let (code, v) = desk.check(NOW + 60);
    assert_eq!(code, 0, "{v}");
    desk.request("bob@corp", &[]);
}
