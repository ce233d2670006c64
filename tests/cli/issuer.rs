//! hwpass-issuer against SoftHSM: keygen, key protection, signing policy, audit, HSM errors.

use crate::common::*;

#[test]
fn keygen_creates_a_protected_key_and_refuses_to_overwrite() {
    let issuer = Issuer::new();
    let out = issuer.run(&["keygen", "--json"], None).ok().json();
    let kid = out["kid"].as_str().unwrap().to_string();

    let again = issuer.run(&["keygen"], None);
    assert_eq!(again.code, 10, "{again:?}");
    assert!(again.stderr.contains("never overwrites"), "{again:?}");

    // Read back through PKCS#11 by hwpass itself…
    let info = issuer.run(&["key-info", "--json"], None).ok().json();
    assert_eq!(
        info["kid"],
        kid.as_str(),
        "the same key after the refused keygen"
    );
    for (attr, want) in [
        ("token", true),
        ("private", true),
        ("sensitive", true),
        ("extractable", false),
        ("always_sensitive", true),
        ("never_extractable", true),
        ("sign", true),
        ("decrypt", false),
        ("derive", false),
        ("private_value_readable", false),
    ] {
        assert_eq!(info[attr], want, "{attr}: {info}");
    }

    // …and independently by OpenSC's pkcs11-tool.
    require("pkcs11-tool", "opensc");
    let out = std::process::Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &issuer.hsm.conf)
        .args([
            "--module",
            "/usr/lib/softhsm/libsofthsm2.so",
            "--token-label",
            "hwpass-test",
        ])
        .args([
            "--login",
            "--pin",
            PIN,
            "--list-objects",
            "--type",
            "privkey",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("issuer-key"), "{text}");
    assert!(
        text.contains("Access:")
            && text.contains("sensitive")
            && text.contains("never extractable"),
        "{text}"
    );
    assert!(!text.contains("Access:       extractable"), "{text}");
}

#[test]
fn jwks_is_the_key_and_needs_no_pin() {
    let issuer = Issuer::new();
    let kid = issuer.run(&["keygen", "--json"], None).ok().json()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut cmd = issuer.cmd(NOW);
    cmd.env_remove("HWPASS_PIN").arg("jwks");
    let jwks = run(cmd, None).ok().json();
    assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert!(jwks["keys"][0].get("d").is_none());
    assert_eq!(jwks["hwpass"]["iss"], "test-issuer");
    assert_eq!(jwks["hwpass"]["aud"], "analytics-desktop");
}

#[test]
fn old_hsm_section_is_still_read_with_a_notice_and_unknown_key_schemes_are_refused() {
    let issuer = Issuer::new();
    let kid = issuer.run(&["keygen", "--json"], None).ok().json()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&issuer.config).unwrap();
    assert!(text.contains("[key]\n"), "{text}");

    // A config from before the rename keeps working, and says what to change.
    std::fs::write(&issuer.config, text.replace("[key]\n", "[hsm]\n")).unwrap();
    let old = issuer.run(&["jwks"], None).ok();
    assert_eq!(old.json()["keys"][0]["kid"], kid.as_str());
    assert!(
        old.stderr.contains("the [hsm] section is now called [key]"),
        "{old:?}"
    );

    // Both at once is ambiguous.
    std::fs::write(
        &issuer.config,
        text.replace(
            "[key]\n",
            "[hsm]\nuri = \"pkcs11:token=x;object=y?module-path=/m.so\"\n\n[key]\n",
        ),
    )
    .unwrap();
    let both = issuer.run(&["jwks"], None);
    assert_eq!(both.code, 1, "{both:?}");
    assert!(both.stderr.contains("[key] only"), "{both:?}");

    // The key URI's scheme picks the key manager; an unknown one is named.
    let kms = text
        .lines()
        .map(|l| {
            if l.starts_with("uri = ") {
                "uri = \"awskms:arn:aws:kms:eu-west-1:1:key/2\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&issuer.config, kms).unwrap();
    let unknown = issuer.run(&["jwks"], None);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("scheme \"awskms\" is not supported")
            && unknown.stderr.contains("pkcs11"),
        "{unknown:?}"
    );
}

#[test]
fn sign_audits_before_printing_and_audit_verifies() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let req = desk.request("alice@corp", &["--valid-for", "2d"]);
    let out = issuer.sign(&req, NOW, &[]).ok();
    let pass = out.line();
    assert!(pass.len() <= 700, "pass is {} characters", pass.len());
    assert!(out.stderr.contains("audit record"), "{out:?}");

    let lines = issuer.audit_lines();
    assert_eq!(lines.len(), 1);
    let rec = &lines[0];
    assert_eq!(rec["sub"], "alice@corp");
    assert_eq!(rec["kind"], "software");
    assert_eq!(rec["exp"].as_i64(), Some(NOW + 2 * 86400));
    assert_eq!(rec["dev"], "test-laptop");
    let claims = hwpass::decode(&pass).unwrap().payload().unwrap();
    assert_eq!(rec["jti"], claims["jti"]);
    assert_eq!(rec["jkt"], claims["cnf"]["jkt"]);
    assert!(rec["prev"].as_str().unwrap().chars().all(|c| c == '0'));

    issuer.sign(&req, NOW, &[]).ok();
    let verify = issuer.run(&["audit", "verify"], None).ok();
    assert!(verify.stdout.contains("2 records"), "{verify:?}");
    let list = issuer.run(&["audit", "list", "--json"], None).ok();
    assert_eq!(list.stdout.lines().count(), 2);

    // An edited record breaks the chain.
    let text = std::fs::read_to_string(&issuer.audit).unwrap();
    std::fs::write(
        &issuer.audit,
        text.replacen("alice@corp", "mallory@corp", 1),
    )
    .unwrap();
    let verify = issuer.run(&["audit", "verify"], None);
    assert_eq!(verify.code, 11, "{verify:?}");
    assert!(
        verify.stderr.contains("line 2 does not follow line 1"),
        "{verify:?}"
    );
}

#[test]
fn policy_refusals_write_no_audit_record() {
    let issuer = Issuer::with_policy(
        "default_lifetime = \"1d\"\nmax_lifetime = \"7d\"\nallow_software = false\n",
    );
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let req = desk.request("alice@corp", &[]);
    let out = issuer.sign(&req, NOW, &[]);
    assert_eq!(out.code, 9, "{out:?}");
    assert!(
        out.stderr
            .contains("does not accept software-bound requests"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());

    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let req = desk.request("alice@corp", &["--valid-for", "5d"]);
    let out = issuer.sign(&req, NOW, &[]);
    assert_eq!(out.code, 9, "{out:?}");
    assert!(
        out.stderr
            .contains("exceeds the maximum of 3d for software passes"),
        "{out:?}"
    );
    let out = issuer.sign(
        &desk.request("alice@corp", &[]),
        NOW,
        &["--valid-for", "20d"],
    );
    assert_eq!(out.code, 9, "{out:?}");
    // A request signed too late.
    let out = issuer.sign(&req, NOW + 8 * 86400, &["--valid-for", "1d"]);
    assert_eq!(out.code, 9, "{out:?}");
    assert!(out.stderr.contains("older than"), "{out:?}");
    assert!(issuer.audit_lines().is_empty());
}

#[test]
fn bad_requests_are_refused_with_exit_4() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let req = desk.request("alice@corp", &[]);
    let pass = issuer.sign(&req, NOW, &[]).ok().line();
    let forged = with_payload(&req, |p| p["sub"] = "root@corp".into());
    for (input, needle) in [
        (forged.as_str(), "bad signature"),
        (pass.as_str(), "this is an access pass, not a pass request"),
        ("not a token", "segments"),
        ("", "token is empty"),
    ] {
        let out = issuer.sign(input, NOW, &[]);
        assert_eq!(out.code, 4, "{out:?}");
        assert!(out.stderr.contains(needle), "{needle}: {out:?}");
    }
    assert_eq!(issuer.audit_lines().len(), 1);
}

#[test]
fn wrong_pin_is_a_clear_error_and_writes_no_audit_record() {
    let mut issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let req = desk.request("alice@corp", &[]);
    issuer.pin = "wrong-pin".into();
    let out = issuer.sign(&req, NOW, &[]);
    // README: a PIN problem is exit 1 (the person fixes the PIN), not an HSM failure (10).
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("refused the PIN"), "{out:?}");
    assert!(out.stderr.contains("lock-out"), "{out:?}");
    assert!(
        !out.stderr.contains("wrong-pin"),
        "the PIN never appears in messages"
    );
    assert!(out.stdout.is_empty());
    assert!(issuer.audit_lines().is_empty());
    assert!(!issuer.audit.exists());
}

#[test]
fn hsm_errors_are_one_clear_sentence() {
    let issuer = Issuer::new();
    issuer.setup();
    let cases = [
        (
            "token=hwpass-test;object=issuer-key",
            "/nonexistent/libpkcs11.so",
            "does not exist",
        ),
        (
            "token=hwpass-test;object=issuer-key",
            "/etc/hostname",
            "cannot load the PKCS#11 module",
        ),
        (
            "token=no-such-token;object=issuer-key",
            "/usr/lib/softhsm/libsofthsm2.so",
            "no token matching pkcs11:token=no-such-token",
        ),
        (
            "token=hwpass-test;object=no-such-key",
            "/usr/lib/softhsm/libsofthsm2.so",
            "no EC public key at",
        ),
    ];
    for (uri, module, needle) in cases {
        issuer.write_config(uri, module, DEFAULT_POLICY);
        let out = issuer.run(&["jwks"], None);
        assert_eq!(out.code, 10, "{out:?}");
        assert!(out.stderr.contains(needle), "{needle}: {out:?}");
        assert_eq!(
            out.stderr
                .lines()
                .filter(|l| l.starts_with("hwpass-issuer: error"))
                .count(),
            1
        );
    }
    issuer.write_config(
        "token=hwpass-test;object=issuer-key?pin-value=1234&x=1",
        "/usr/lib/softhsm/libsofthsm2.so",
        DEFAULT_POLICY,
    );
    let out = issuer.run(&["jwks"], None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("pin-value"), "{out:?}");
}

#[test]
fn pin_from_a_file_named_in_the_uri() {
    let issuer = Issuer::new();
    let pin_file = issuer.dir.path().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(
        &pin_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    issuer.write_config(
        &format!(
            "token=hwpass-test;object=issuer-key?pin-source=file:{}",
            pin_file.display()
        ),
        "/usr/lib/softhsm/libsofthsm2.so",
        DEFAULT_POLICY,
    );
    // The module path comes after the pin-source in this URI; both are query attributes.
    let text = std::fs::read_to_string(&issuer.config)
        .unwrap()
        .replace("?module-path", "&module-path");
    std::fs::write(&issuer.config, text).unwrap();
    let mut cmd = issuer.cmd(NOW);
    cmd.env_remove("HWPASS_PIN").arg("keygen");
    run(cmd, None).ok();
}

#[test]
fn batch_signing_keeps_order_reports_refusals_and_audits_every_pass() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let a = Desktop::enrolled(&trust);
    let b = Desktop::enrolled(&trust);
    let (ra, rb) = (a.request("alice@corp", &[]), b.request("bob@corp", &[]));
    let mut lines: Vec<String> = (0..20)
        .map(|i| if i % 2 == 0 { ra.clone() } else { rb.clone() })
        .collect();
    lines.insert(2, "garbage".into());
    lines.insert(9, with_payload(&ra, |p| p["sub"] = "root@corp".into()));
    let input = lines.join("\n") + "\n";
    let out = issuer.sign(&input, NOW, &["--batch", "--workers", "2", "--chunk", "7"]);
    assert_eq!(out.code, 9, "refused lines: exit 9 {out:?}");
    let outputs: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(outputs.len(), 22, "one line out per request: {out:?}");
    assert!(outputs[2].is_empty() && outputs[9].is_empty(), "{out:?}");
    let report: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(report.len(), 2, "{out:?}");
    assert_eq!(
        (report[0]["line"].as_u64(), report[0]["exit_code"].as_i64()),
        (Some(3), Some(4))
    );
    assert_eq!(
        (report[1]["line"].as_u64(), report[1]["exit_code"].as_i64()),
        (Some(10), Some(4))
    );
    assert!(report[1]["error"]
        .as_str()
        .unwrap()
        .contains("bad signature"));
    assert!(
        out.stderr
            .contains("batch: 20 passes issued, 2 refused, 2 workers"),
        "{out:?}"
    );

    let audited: Vec<String> = issuer
        .audit_lines()
        .iter()
        .map(|r| r["jti"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(audited.len(), 20);
    for (i, pass) in outputs.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
        let claims = hwpass::decode(pass).unwrap().payload().unwrap();
        let want = if lines[i] == ra {
            "alice@corp"
        } else {
            "bob@corp"
        };
        assert_eq!(
            claims["sub"],
            want,
            "line {} is the pass for its own request",
            i + 1
        );
        assert!(audited.contains(&claims["jti"].as_str().unwrap().to_string()));
    }
    issuer.run(&["audit", "verify"], None).ok();
    // Each desktop installs its passes.
    a.install(outputs[0], NOW).ok();
    b.install(outputs[1], NOW).ok();
}
