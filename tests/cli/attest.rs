//! Attestation building blocks checked against an independent implementation: tpm2-tools and
//! a real (simulated) TPM.

use tss_esapi::structures::Public;
use tss_esapi::traits::UnMarshall as _;

use crate::common::*;

/// Our software MakeCredential, activated by swtpm through tpm2-tools' ActivateCredential:
/// the TPM releases exactly our credential, and refuses it for another AK name.
#[test]
fn software_make_credential_is_activated_by_the_tpm() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    tpm.tool(&[
        "tpm2_createek",
        "-c",
        &p("ek.ctx"),
        "-G",
        "rsa",
        "-u",
        &p("ek.pub"),
    ])
    .ok();
    tpm.tool(&[
        "tpm2_createak",
        "-C",
        &p("ek.ctx"),
        "-c",
        &p("ak.ctx"),
        "-G",
        "ecc",
        "-g",
        "sha256",
        "-s",
        "ecdsa",
        "-u",
        &p("ak.pub"),
        "-n",
        &p("ak.name"),
    ])
    .ok();
    tpm.tool(&["tpm2_flushcontext", "-t"]).ok();

    let ek_pub = std::fs::read(p("ek.pub")).unwrap();
    let Public::Rsa { unique, .. } = Public::unmarshall(&ek_pub[2..]).unwrap() else {
        panic!("EK is not RSA")
    };
    let ek = hwpass::credential::rsa_ek(unique.value(), None).unwrap();
    let ak_name = std::fs::read(p("ak.name")).unwrap();
    let secret: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);

    let activate = |name: &[u8]| {
        let made = hwpass::credential::make_credential(&ek, name, &secret).unwrap();
        // tpm2-tools' credential file: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
        let mut file = vec![0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1];
        for part in [&made.id_object, &made.encrypted_secret] {
            file.extend_from_slice(&(part.len() as u16).to_be_bytes());
            file.extend_from_slice(part);
        }
        std::fs::write(p("cred"), file).unwrap();
        let _ = std::fs::remove_file(p("out"));
        tpm.tool(&[
            "tpm2_startauthsession",
            "--policy-session",
            "-S",
            &p("s.ctx"),
        ])
        .ok();
        tpm.tool(&["tpm2_policysecret", "-S", &p("s.ctx"), "-c", "e"])
            .ok();
        let r = tpm.tool(&[
            "tpm2_activatecredential",
            "-c",
            &p("ak.ctx"),
            "-C",
            &p("ek.ctx"),
            "-i",
            &p("cred"),
            "-o",
            &p("out"),
            "-P",
            &format!("session:{}", p("s.ctx")),
        ]);
        let _ = tpm.tool(&["tpm2_flushcontext", &p("s.ctx")]);
        tpm.tool(&["tpm2_flushcontext", "-t"]).ok();
        (r, std::fs::read(p("out")).ok())
    };

    let (r, out) = activate(&ak_name);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(out.as_deref(), Some(&secret[..]));

    // Made for another object's name: the TPM's integrity check refuses it.
    let mut other = ak_name.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    let (r, out) = activate(&other);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(out.is_none());
}

/// Signs a request with any key, the way a forger holding that key could.
fn forged_request(
    key: &dyn hwpass::keys::KeyBackend,
    att: Option<hwpass::attest::EvidenceClaims>,
) -> String {
    let claims = hwpass::token::RequestClaims {
        sub: "mallory@corp".into(),
        iat: NOW,
        kind: hwpass::token::BindingKind::Tpm,
        ttl: None,
        dev: None,
        att,
    };
    hwpass::token::sign_request(&claims, key).unwrap()
}

fn evidence_of(request: &str) -> hwpass::attest::EvidenceClaims {
    let payload = hwpass::token::decode(request).unwrap().payload().unwrap();
    serde_json::from_value(payload["att"].clone()).expect("request carries evidence")
}

#[test]
fn attested_request_is_delivered_sealed_to_its_tpm() {
    let ca = LocalCa::new();
    let tpm = Swtpm::provisioned(&ca);
    let issuer = Issuer::with_attestation(&ca.roots(), None, true);
    let trust = issuer.setup();
    let desk = Desktop::with_tpm(&trust, &tpm);
    let req = desk.request("eve@corp", &[]);
    let ev = evidence_of(&req);
    assert!(ev.ekc.is_some() && ev.ekp.is_none(), "{ev:?}");
    eprintln!("attested request: {} bytes", req.len());

    let out = issuer.sign(&req, NOW, &[]).ok();
    let delivery = out.line();
    assert!(delivery.starts_with("hwpass-dlv1."), "{delivery}");
    assert!(
        delivery.len() <= 2900,
        "delivery is {} bytes",
        delivery.len()
    );
    assert_eq!(issuer.audit_lines()[0]["att"], "ek-cert");

    desk.install(&delivery, NOW).ok();
    let (code, v) = desk.check(NOW);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["attestation"], "ek-cert");
    assert_eq!(v["binding"], "tpm");
    assert!(tpm.transient_handles().is_empty());
}

#[test]
fn delivery_for_tpm_a_cannot_be_opened_on_tpm_b() {
    let ca = LocalCa::new();
    let tpm_a = Swtpm::provisioned(&ca);
    let tpm_b = Swtpm::provisioned(&ca);
    let issuer = Issuer::with_attestation(&ca.roots(), None, true);
    let trust = issuer.setup();
    let a = Desktop::with_tpm(&trust, &tpm_a);
    let b = Desktop::with_tpm(&trust, &tpm_b);
    let delivery = issuer
        .sign(&a.request("eve@corp", &[]), NOW, &[])
        .ok()
        .line();
    let out = b.install(&delivery, NOW);
    assert_eq!(out.code, 6, "{out:?}");
    assert!(
        out.stderr.contains("sealed to another machine's TPM"),
        "{out:?}"
    );
    // A's whole state copied to B cannot open it either.
    let mut copy = Desktop::new();
    copy_dir(&a.state, &copy.state);
    copy.tcti = Some(tpm_b.tcti());
    assert_eq!(copy.install(&delivery, NOW).code, 6);
    a.install(&delivery, NOW).ok();
    assert!(tpm_a.transient_handles().is_empty() && tpm_b.transient_handles().is_empty());
}

#[test]
fn ek_certificate_from_an_untrusted_ca_is_refused() {
    let ca = LocalCa::new();
    let other_ca = LocalCa::new();
    let tpm = Swtpm::provisioned(&ca);
    let _provisions_other_ca = Swtpm::provisioned(&other_ca);
    let issuer = Issuer::with_attestation(&other_ca.roots(), None, true);
    let trust = issuer.setup();
    let desk = Desktop::with_tpm(&trust, &tpm);
    let out = issuer.sign(&desk.request("eve@corp", &[]), NOW, &[]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr
            .contains("does not chain to a trusted TPM manufacturer CA"),
        "{out:?}"
    );
    assert!(issuer.audit_lines().is_empty());
}

#[test]
fn tpm_without_ek_certificate_needs_the_allow_list() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("ek-allowlist");
    std::fs::write(&list, "# EK names allowed without a certificate\n").unwrap();
    let issuer = Issuer::with_attestation(&[], Some(&list), true);
    let trust = issuer.setup();
    let desk = Desktop::with_tpm(&trust, &tpm);
    let req = desk.request("eve@corp", &[]);
    assert!(evidence_of(&req).ekp.is_some());
    let out = issuer.sign(&req, NOW, &[]);
    assert_eq!(out.code, 4, "{out:?}");
    let name = out
        .stderr
        .split("endorsement key ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("{out:?}"))
        .to_string();
    // The admin checks the name against the machine (tpm2_readpublic of the EK) and adds it.
    std::fs::write(&list, format!("{name}  # eve's laptop\n")).unwrap();
    let delivery = issuer.sign(&req, NOW, &[]).ok().line();
    assert_eq!(issuer.audit_lines()[0]["att"], "ek-allowlist");
    desk.install(&delivery, NOW).ok();
    assert_eq!(desk.check(NOW).1["attestation"], "ek-allowlist");
}

#[test]
fn forged_tpm_claims_are_refused() {
    let ca = LocalCa::new();
    let tpm_a = Swtpm::provisioned(&ca);
    let tpm_b = Swtpm::provisioned(&ca);
    let issuer = Issuer::with_attestation(&ca.roots(), None, true);
    let trust = issuer.setup();
    let a = Desktop::with_tpm(&trust, &tpm_a);
    let evidence = evidence_of(&a.request("eve@corp", &[]));

    // A software key that says "tpm" and brings no evidence: refused by policy.
    let soft = hwpass::keys::MemoryKey::generate();
    let out = issuer.sign(&forged_request(&soft, None), NOW, &[]);
    assert_eq!(out.code, 9, "{out:?}");
    assert!(
        out.stderr.contains("carries no attestation evidence"),
        "{out:?}"
    );

    // The same key with evidence copied from a real TPM: the certification names another key.
    let out = issuer.sign(&forged_request(&soft, Some(evidence.clone())), NOW, &[]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("made for another key"), "{out:?}");

    // A key in TPM B with the evidence of TPM A.
    let b = Desktop::with_tpm(&trust, &tpm_b);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.state.join("device.json")).unwrap())
            .unwrap();
    let file: hwpass::tpm::TpmKeyFile = serde_json::from_value(record["tpm"].clone()).unwrap();
    let key_b = hwpass::tpm::TpmDevice::open(&file, Some(&tpm_b.tcti())).unwrap();
    let out = issuer.sign(&forged_request(&key_b, Some(evidence.clone())), NOW, &[]);
    assert_eq!(out.code, 4, "{out:?}");

    // Evidence whose certification was altered: the AK signature no longer verifies.
    let mut bent = evidence.clone();
    let mut cert = hwpass::token::b64url_decode(&bent.cert).unwrap();
    let last = cert.len() - 1;
    cert[last] ^= 1;
    bent.cert = hwpass::token::b64url(&cert);
    let out = issuer.sign(&forged_request(&soft, Some(bent)), NOW, &[]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr.contains("not signed by the attestation key"),
        "{out:?}"
    );
    assert!(issuer.audit_lines().is_empty());
}
