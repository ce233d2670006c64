//! Revocation and key rotation through the CLI and files (the air-gapped path): the issuer's
//! signed deny list, `hwpass refresh --file`, `check` exit 8, replay refusal, rotation overlap.

use crate::common::*;

fn jti_of(pass: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let payload = pass.split('.').nth(1).unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    v["jti"].as_str().unwrap().to_string()
}

fn kid_of(pass: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let header = pass.split('.').next().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    v["kid"].as_str().unwrap().to_string()
}

fn refresh(d: &Desktop, file: &std::path::Path, now: i64) -> Run {
    d.run(&["refresh", "--file", file.to_str().unwrap()], None, now)
}

#[test]
fn revoked_pass_is_refused_after_refresh_and_an_older_list_cannot_be_replayed() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let d = Desktop::enrolled(&trust);
    let pass = issuer
        .sign(&d.request("alice@corp", &[]), NOW, &[])
        .ok()
        .line();
    d.install(&pass, NOW).ok();

    let first = issuer.denylist("list1.jwt", NOW);
    let r = refresh(&d, &first, NOW + 10).ok();
    assert!(r.stdout.contains("installed deny list #1"), "{r:?}");
    assert_eq!(d.check(NOW + 20).0, 0);

    let jti = jti_of(&pass);
    let r = issuer
        .run(
            &[
                "revoke",
                "--pass",
                &jti,
                "--reason",
                "laptop lost",
                "--json",
            ],
            None,
        )
        .ok();
    assert_eq!(r.json()["seq"], 2);
    let again = issuer.run(&["revoke", "--pass", &jti, "--json"], None).ok();
    assert_eq!(again.json()["already"], true);
    // Not yet refreshed: the desktop is offline and still accepts it.
    assert_eq!(d.check(NOW + 30).0, 0);

    let second = issuer.denylist("list2.jwt", NOW + 40);
    let r = refresh(&d, &second, NOW + 50).ok();
    assert!(
        r.stdout.contains("installed deny list #2 (was #1)"),
        "{r:?}"
    );
    assert!(r.stderr.contains("the installed pass is revoked"), "{r:?}");
    let (code, v) = d.check(NOW + 60);
    assert_eq!((code, v["status"].as_str()), (8, Some("revoked")), "{v}");
    assert!(v["message"].as_str().unwrap().contains(&jti));
    // Installing the revoked pass again is refused the same way.
    assert_eq!(d.install(&pass, NOW + 61).code, 8);

    // Replaying the older list is refused and changes nothing.
    let r = refresh(&d, &first, NOW + 70);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("older than #2"), "{r:?}");
    assert_eq!(d.check(NOW + 71).0, 8);
    // The same list again is "up to date", not an error.
    let r = refresh(&d, &second, NOW + 72).ok();
    assert!(r.stdout.contains("already up to date"), "{r:?}");

    // A list with an edited payload, or from another issuer, is refused.
    let text = std::fs::read_to_string(&second).unwrap();
    let forged = with_payload(text.trim(), |p| {
        p["seq"] = 99.into();
        p["passes"] = serde_json::json!([]);
    });
    let r = d.run(&["refresh", "--file", "-"], Some(&forged), NOW + 80);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("bad signature"), "{r:?}");
    let other = Issuer::new();
    other.setup();
    let foreign = other.denylist("foreign.jwt", NOW);
    let r = refresh(&d, &foreign, NOW + 90);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("not in the trust bundle"), "{r:?}");

    // A new pass for the same device is not revoked.
    let fresh = issuer
        .sign(&d.request("alice@corp", &[]), NOW + 100, &[])
        .ok()
        .line();
    d.install(&fresh, NOW + 100).ok();
    assert_eq!(d.check(NOW + 110).0, 0);
    let status = d.run(&["status", "--json"], None, NOW + 111).ok().json();
    assert_eq!(status["denylist_seq"], 2);
}

#[test]
fn revoking_a_device_key_refuses_every_pass_bound_to_it() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let (a, b) = (Desktop::enrolled(&trust), Desktop::enrolled(&trust));
    for d in [&a, &b] {
        let pass = issuer
            .sign(&d.request("bob@corp", &[]), NOW, &[])
            .ok()
            .line();
        d.install(&pass, NOW).ok();
    }
    let jkt = a.run(&["status", "--json"], None, NOW).ok().json()["device_key"]
        .as_str()
        .unwrap()
        .to_string();
    let r = issuer.run(&["revoke", "--device", &jkt], None).ok();
    assert!(r.stdout.contains("revoked device key"), "{r:?}");
    let bad = issuer.run(&["revoke", "--device", "not-a-thumbprint"], None);
    assert_eq!(bad.code, 4, "{bad:?}");
    let unknown = issuer.run(&["revoke", "--pass", "AAAAAAAAAAAAAAAAAAAAAA"], None);
    assert_eq!(unknown.code, 4, "{unknown:?}");
    assert!(unknown.stderr.contains("no pass with id"), "{unknown:?}");

    let list = issuer.denylist("list.jwt", NOW + 10);
    for d in [&a, &b] {
        refresh(d, &list, NOW + 20).ok();
    }
    assert_eq!(a.check(NOW + 30).0, 8);
    assert_eq!(b.check(NOW + 30).0, 0);
    // A brand-new pass for the revoked device is refused too.
    let pass = issuer
        .sign(&a.request("bob@corp", &[]), NOW + 40, &[])
        .ok()
        .line();
    assert_eq!(a.install(&pass, NOW + 40).code, 8);
}

#[test]
fn key_rotation_keeps_old_passes_valid_until_expiry_while_new_passes_use_the_new_key() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let old_kid = issuer.run(&["key-info", "--json"], None).ok().json()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let (d, laggard) = (Desktop::enrolled(&trust), Desktop::enrolled(&trust));
    let old_pass = issuer
        .sign(&d.request("carol@corp", &[]), NOW, &["--valid-for", "3d"])
        .ok()
        .line();
    d.install(&old_pass, NOW).ok();
    assert_eq!(kid_of(&old_pass), old_kid);

    // 1. The next key is made in the HSM and published beside the current one.
    let r = issuer
        .run(&["keygen", "--object", "issuer-key-2", "--json"], None)
        .ok();
    let new_kid = r.json()["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);
    let again = issuer.run(&["keygen", "--object", "issuer-key-2"], None);
    assert_ne!(again.code, 0, "keygen never overwrites: {again:?}");
    issuer.write_rotation_config("issuer-key", &["issuer-key-2"]);
    let jwks = issuer.run(&["jwks"], None).ok();
    let kids: Vec<String> = serde_json::from_str::<serde_json::Value>(&jwks.stdout).unwrap()
        ["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kids, [old_kid.clone(), new_kid.clone()]);
    let overlap = issuer.denylist("overlap.jwt", NOW + 3_600);
    let r = refresh(&d, &overlap, NOW + 3_600).ok();
    assert!(r.stdout.contains(&new_kid), "{r:?}");

    // 2. Switch signing to the new key; the old one stays trusted until its passes expire.
    issuer.write_rotation_config("issuer-key-2", &["issuer-key"]);
    let new_pass = issuer
        .sign(
            &d.request("carol@corp", &[]),
            NOW + 7_200,
            &["--valid-for", "3d"],
        )
        .ok()
        .line();
    assert_eq!(kid_of(&new_pass), new_kid);
    let audit = issuer.audit_lines();
    assert_eq!(audit.last().unwrap()["kid"], new_kid.as_str());
    // The old pass still verifies on the refreshed desktop…
    assert_eq!(d.check(NOW + 86_400).0, 0);
    // …and so does the new one.
    let d2 = Desktop::enrolled(&trust);
    let list = issuer.denylist("rotated.jwt", NOW + 7_200);
    let r = refresh(&d2, &overlap, NOW + 7_200).ok();
    assert!(r.stdout.contains("#1"), "{r:?}");
    let r = refresh(&d2, &list, NOW + 7_200).ok();
    assert!(
        r.stdout.contains("already up to date"),
        "same keys, same sequence: {r:?}"
    );
    let p2 = issuer
        .sign(&d2.request("dave@corp", &[]), NOW + 7_200, &[])
        .ok()
        .line();
    d2.install(&p2, NOW + 7_200).ok();
    assert_eq!(d2.check(NOW + 7_300).0, 0);
    // A desktop that never refreshed does not know the new key: that is why the overlap exists.
    let r = laggard.install(&p2, NOW + 7_300);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("not in the trust bundle"), "{r:?}");
    // The laggard can still catch up from the rotated list: it is signed by the new key, which
    // it does not trust yet, so it needs the overlap list first.
    assert_eq!(refresh(&laggard, &list, NOW + 7_300).code, 4);
    refresh(&laggard, &overlap, NOW + 7_300).ok();

    // 3. The old pass expires (3 days); then the old key is retired.
    assert_eq!(d.check(NOW + 3 * 86_400 + 3_600).0, 5);
    issuer.write_rotation_config("issuer-key-2", &[]);
    let retired = issuer.denylist("retired.jwt", NOW + 4 * 86_400);
    let r = refresh(&d, &retired, NOW + 4 * 86_400).ok();
    assert!(
        r.stdout.contains("#2") && !r.stdout.contains(&old_kid),
        "{r:?}"
    );
    // The old pass is refused for its key now, and passes by the new key go on working.
    let r = d.install(&old_pass, NOW + 4 * 86_400);
    assert!(r.stderr.contains("not in the trust bundle"), "{r:?}");
    let p3 = issuer
        .sign(&d.request("carol@corp", &[]), NOW + 4 * 86_400, &[])
        .ok()
        .line();
    d.install(&p3, NOW + 4 * 86_400).ok();
    assert_eq!(d.check(NOW + 4 * 86_400 + 60).0, 0);
    let status = d
        .run(&["status", "--json"], None, NOW + 4 * 86_400)
        .ok()
        .json();
    assert_eq!(status["trusted_keys"], serde_json::json!([new_kid]));
}

#[test]
fn a_pass_id_starting_with_a_hyphen_is_read_as_an_id_not_as_an_option() {
    // One pass id in 64 starts with '-' (base64url): it must reach the register, not clap.
    let issuer = Issuer::new();
    issuer.setup();
    let r = issuer.run(&["revoke", "--pass", "-C0o5YxK3yq8ZJtCw3SEZg"], None);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains("no pass with id \"-C0o5YxK3yq8ZJtCw3SEZg\""),
        "{r:?}"
    );
    let r = issuer.run(&["revoke", "--device", "-abc"], None);
    assert_eq!(r.code, 4, "{r:?}");
}
