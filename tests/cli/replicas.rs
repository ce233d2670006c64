//! The PostgreSQL store and issuer replicas (issue 15): a real PostgreSQL per test, the CLI
//! and `serve` replicas against it, a token shared through `p11-kit server`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::modules::{poll, Kind};
use crate::pg::{PgIssuer, Postgres};
use crate::service::{answer, sign_body, Server};

/// The payload of a compact JWS (a pass or a deny list), not verified.
fn payload_of(token: &str) -> serde_json::Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let payload = token.trim().split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[test]
fn pg_cli_needs_migrate_then_signs_revokes_verifies_and_exports() {
    let issuer = PgIssuer::new(Kind::SoftHsm);
    issuer.run(&["keygen"], None).ok();
    let jwks = issuer.run(&["jwks"], None).ok();
    let trust = issuer.dir.path().join("issuer.jwks");
    std::fs::write(&trust, &jwks.stdout).unwrap();
    let d = Desktop::enrolled(&trust);
    let request = d.request("alice@corp", &[]);

    // No schema yet: nothing is signed, and the hint names the command.
    let r = issuer.run(&["sign"], Some(&request));
    assert_eq!(r.code, 11, "{r:?}");
    assert!(r.stdout.is_empty(), "no pass without its record: {r:?}");
    assert!(r.stderr.contains("has no hwpass schema"), "{r:?}");
    assert!(r.stderr.contains("hwpass-issuer db migrate"), "{r:?}");
    let tables = issuer
        .pg
        .count("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'hwpass_%'");
    assert_eq!(tables, 0, "nothing but `db migrate` creates tables");

    let m = issuer.run(&["db", "migrate", "--json"], None).ok().json();
    assert_eq!((m["from"].as_i64(), m["to"].as_i64()), (Some(0), Some(1)));
    let again = issuer.run(&["db", "migrate", "--json"], None).ok().json();
    assert_eq!(
        (again["from"].as_i64(), again["to"].as_i64()),
        (Some(1), Some(1))
    );

    let mut jtis = Vec::new();
    for _ in 0..3 {
        let pass = issuer.run(&["sign"], Some(&request)).ok().line();
        jtis.push(payload_of(&pass)["jti"].as_str().unwrap().to_string());
    }
    let v = issuer.verify();
    assert_eq!(v["records"], 3, "{v}");
    assert_eq!(
        v["checkpoint"]["size"], 3,
        "the CLI covers its own entries: {v}"
    );
    assert_eq!(v["uncovered"], 0, "{v}");

    let r = issuer
        .run(&["revoke", "--pass", &jtis[1], "--json"], None)
        .ok()
        .json();
    assert_eq!(
        (r["seq"].as_u64(), r["already"].as_bool()),
        (Some(1), Some(false)),
        "{r}"
    );
    assert!(r["audit_error"].is_null(), "{r}");
    let r = issuer
        .run(&["revoke", "--pass", &jtis[1], "--json"], None)
        .ok()
        .json();
    assert_eq!(
        (r["seq"].as_u64(), r["already"].as_bool()),
        (Some(1), Some(true)),
        "{r}"
    );
    let list = issuer.run(&["denylist"], None).ok().line();
    let claims = payload_of(&list);
    // As with the file store, the first list also records the keys: one more number.
    assert_eq!(claims["seq"], 2, "{claims}");
    assert_eq!(claims["passes"][0]["jti"], jtis[1].as_str());

    let listed = issuer.run(&["audit", "list", "--json"], None).ok();
    let entries: Vec<serde_json::Value> = listed
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 4, "three passes and a revocation");
    assert_eq!(entries[3]["event"], "revoke");
    assert_eq!(
        issuer
            .pg
            .count("SELECT count(*) FROM hwpass_audit_entries WHERE position BETWEEN 0 AND 3"),
        4
    );

    // Export for an auditor: verifies offline with the trust bundle alone.
    let out = issuer.dir.path().join("export/audit.jsonl");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let e = issuer
        .run(
            &["audit", "export", "-o", out.to_str().unwrap(), "--json"],
            None,
        )
        .ok()
        .json();
    assert_eq!(
        (e["records"].as_u64(), e["left_out"].as_u64()),
        (Some(4), Some(0))
    );
    let offline = issuer
        .run(
            &[
                "audit",
                "verify",
                "--log",
                out.to_str().unwrap(),
                "--trust",
                trust.to_str().unwrap(),
                "--json",
            ],
            None,
        )
        .ok()
        .json();
    assert_eq!(offline["records"], 4, "{offline}");
    assert_eq!(offline["checkpoint"]["size"], 4, "{offline}");
    let again = issuer.run(&["audit", "export", "-o", out.to_str().unwrap()], None);
    assert_ne!(again.code, 0, "an export never overwrites: {again:?}");

    // An edited entry and a deleted one are both caught.
    issuer.pg.sql(
        "hwpass",
        "UPDATE hwpass_audit_entries SET line = replace(line, 'alice@corp', 'mallory@corp') WHERE position = 1",
    );
    let r = issuer.run(&["audit", "verify"], None);
    assert_eq!(r.code, 11, "{r:?}");
    assert!(r.stderr.contains("line 3 does not follow line 2"), "{r:?}");
    issuer.pg.sql(
        "hwpass",
        "UPDATE hwpass_audit_entries SET line = replace(line, 'mallory@corp', 'alice@corp') WHERE position = 1",
    );
    issuer.run(&["audit", "verify"], None).ok();
    issuer.pg.sql(
        "hwpass",
        "DELETE FROM hwpass_audit_entries WHERE position = 2",
    );
    let r = issuer.run(&["audit", "verify"], None);
    assert_eq!(r.code, 11, "{r:?}");
    assert!(r.stderr.contains("position 3 where 2 was due"), "{r:?}");
}
