//! Crashes: the issuer killed with SIGKILL at random points while signing.

use std::process::{Command, Stdio};

use crate::common::*;

#[test]
fn every_printed_pass_is_audited_when_the_issuer_is_killed_at_random_points() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let request = desk.request("alice@corp", &[]);
    let mut printed = Vec::new();
    let mut killed = 0;
    let mut seed = [0u8; 64];
    getrandom::getrandom(&mut seed).unwrap();
    for (i, delay) in seed.iter().enumerate() {
        let mut cmd: Command = issuer.cmd(NOW);
        cmd.arg("sign")
            .arg(&request)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        // Kill points spread over the whole run of a sign (start-up, HSM login, signing, audit
        // append, fsync, printing); the outcome is checked, not timed.
        std::thread::sleep(std::time::Duration::from_micros(
            u64::from(*delay) * 80 + (i as u64 % 7) * 500,
        ));
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill(); // SIGKILL
            killed += 1;
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // A pass counts as printed only when its whole line came out.
        if let Some(line) = text.strip_suffix('\n') {
            printed.push(line.to_string());
        }
    }
    assert!(
        killed > 0,
        "no process was killed; the test did not test anything"
    );
    // With the trust bundle's keys: a SIGKILL at the wrong moment can leave SoftHSM's own
    // token file empty (it rewrites it in place at login), and then the token is gone.
    let verify = issuer.run(
        &["audit", "verify", "--trust", trust.to_str().unwrap()],
        None,
    );
    assert_eq!(verify.code, 0, "{verify:?}");
    let audited: Vec<String> = issuer
        .audit_lines()
        .iter()
        .map(|r| r["jti"].as_str().unwrap().to_string())
        .collect();
    for pass in &printed {
        let jti = hwpass::decode(pass).unwrap().payload().unwrap()["jti"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            audited.contains(&jti),
            "printed pass {jti} has no audit record"
        );
    }
    eprintln!(
        "{} runs, {killed} killed, {} passes printed, {} audit records",
        seed.len(),
        printed.len(),
        audited.len()
    );
}

#[test]
fn concurrent_issuers_keep_one_audit_chain() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let request = desk.request("alice@corp", &[]);
    let children: Vec<_> = (0..8)
        .map(|_| {
            let mut cmd: Command = issuer.cmd(NOW);
            cmd.arg("sign")
                .arg(&request)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    // SoftHSM's file object store is not made for several processes opening the token at the
    // same moment: one can now and then fail to see it ("no token", CKR_GENERAL_ERROR). Such a
    // process prints nothing and writes no record; what this test pins is that the issuers that
    // did sign share one intact chain.
    let mut printed = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        if out.status.success() {
            printed += 1;
        } else {
            assert!(out.stdout.is_empty(), "a failed issuer printed something");
        }
    }
    assert!(printed >= 2, "fewer than two issuers ran concurrently");
    let verify = issuer.run(&["audit", "verify"], None).ok();
    assert!(
        verify.stdout.contains(&format!("{printed} records")),
        "{verify:?}"
    );
}
