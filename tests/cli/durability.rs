//! Crashes: the issuer killed with SIGKILL at random points while signing.

use std::process::{Command, Stdio};

use crate::common::*;

#[test]
fn every_printed_pass_is_audited_when_the_issuer_is_killed_at_random_points() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let request = desk.request("alice@corp", &[]);
    // A SIGKILL at the wrong moment can leave SoftHSM's own token file empty (it rewrites it
    // in place at login), and the token is gone; every later run would then stop at "no
    // token" and test nothing. The token is put back from this copy when that happens.
    let tokens = issuer.hsm.conf.with_file_name("tokens");
    let saved = issuer.dir.path().join("tokens.saved");
    copy_tree(&tokens, &saved);
    // How long one whole sign takes, so kill points spread over all of it.
    let started = std::time::Instant::now();
    let first = issuer.sign(&request, NOW, &[]).ok();
    let whole = started.elapsed().as_micros() as u64;
    let mut printed = vec![first.line()];
    let (mut killed, mut restored) = (0, 0);
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
            u64::from(*delay) * whole * 2 / 255 + (i as u64 % 7) * 100,
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
        if token_broken(&tokens) {
            std::fs::remove_dir_all(&tokens).unwrap();
            copy_tree(&saved, &tokens);
            restored += 1;
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
        "{} runs, {killed} killed, {} passes printed, {} audit records, SoftHSM token restored {restored} times",
        seed.len() + 1,
        printed.len(),
        audited.len()
    );
}

/// Copies a directory tree (a SoftHSM token store).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Whether a token's `token.object` was left empty.
fn token_broken(tokens: &std::path::Path) -> bool {
    std::fs::read_dir(tokens).unwrap().any(|e| {
        let object = e.unwrap().path().join("token.object");
        std::fs::metadata(object).is_ok_and(|m| m.len() == 0)
    })
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
