//! Self-service through the company's sign-in: a real OpenID Provider (node-oidc-provider,
//! tests/oidc/) per test, the real service and desktop binaries, and Debian's headless
//! Chromium for the browser flows.

use std::process::Command;

use crate::common::*;
use crate::service::*;

/// The groups most tests use: `hwpass-users` get passes of up to 7 days, two a day.
const GROUPS: &str = r#"
[[policy.group]]
name = "contractors"
allowed = false

[[policy.group]]
name = "hwpass-users"
max_lifetime = "7d"
passes_per_day = 2

[[policy.group]]
name = "engineering"
software = false
"#;

/// What the browser did and saw (tests/browser/self_service.py's summary).
fn browser(
    server: &Server,
    user: &IdpUser,
    files: &[(&str, &str)],
    tag: &str,
) -> serde_json::Value {
    require_browser();
    let artifacts = repo().join("target/test-artifacts/self-service");
    std::fs::create_dir_all(&artifacts).unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("username.txt"), &user.preferred_username).unwrap();
    std::fs::write(work.path().join("password.txt"), &user.password).unwrap();
    std::fs::write(work.path().join("tag.txt"), tag).unwrap();
    for (name, text) in files {
        std::fs::write(work.path().join(name), text).unwrap();
    }
    let out = Command::new("/usr/bin/python3")
        .arg(repo().join("tests/browser/self_service.py"))
        .arg(&server.url)
        .arg(work.path())
        .arg(&artifacts)
        .env_remove("HWPASS_PIN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser failed:\n{stdout}\n{stderr}");
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert!(
        result["exception"].is_null(),
        "the browser flow broke: {result}\n{stderr}"
    );
    result
}

#[test]
fn an_employee_signs_in_gets_their_own_pass_and_the_audit_names_them() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let olga = IdpUser::new("olga", &["staff", "hwpass-users"]);
    let (server, idp) = Server::start_with_idp(&issuer, std::slice::from_ref(&olga), GROUPS);
    let d = Desktop::enrolled(&trust);
    let request = d.request(&olga.email, &["--valid-for", "3d"]);
    let r = browser(
        &server,
        &olga,
        &[("request.txt", &request), ("lifetime.txt", "86400")],
        "employee",
    );
    assert_eq!(r["signed_in_as"], "olga@corp.example", "{r}");
    assert_eq!(r["group"], "hwpass-users");
    assert!(
        r["rule"].as_str().unwrap().contains("up to 7d")
            && r["rule"].as_str().unwrap().contains("2 more"),
        "{r}"
    );
    assert_eq!(r["admin_page"], false, "an employee sees no admin list");
    assert_eq!(r["subject_shown"], "olga@corp.example");
    // The group's 7 days bound the lifetimes offered.
    let offered: Vec<i64> = r["lifetimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(offered.iter().all(|&l| l <= 3 * 86400), "{offered:?}");
    let pass = r["pass"].as_str().unwrap();
    d.install(pass, NOW).ok();
    let (code, verdict) = d.check(NOW);
    assert_eq!(code, 0, "{verdict}");
    assert_eq!(verdict["subject"], "olga@corp.example");

    let records = issuer.audit_lines();
    assert_eq!(records.len(), 1);
    let rec = &records[0];
    assert_eq!(rec["by"], "olga@corp.example");
    assert_eq!(rec["idp"], idp.issuer());
    assert_eq!(rec["group"], "hwpass-users");
    assert_eq!(rec["sub"], "olga@corp.example");
    assert_eq!(
        rec["exp"].as_i64().unwrap() - rec["nbf"].as_i64().unwrap(),
        86400
    );
    // The issuance list names them too.
    let listed = issuer.run(&["audit", "list"], None).ok().stdout;
    assert!(
        listed.contains(&format!(
            "by olga@corp.example (group hwpass-users, via {})",
            idp.issuer()
        )),
        "{listed}"
    );
    let (code, log) = server.stop();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains(&olga.password), "no password in the log");
    assert!(
        !log.contains(idp.web_client_secret()),
        "no client secret in the log"
    );
}
