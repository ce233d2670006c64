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
    let ek = hwpass::issuer::EkPublic::Rsa2048(
        hwpass::issuer::internal::rsa_ek(unique.value(), None).unwrap(),
    );
    let ak_name = std::fs::read(p("ak.name")).unwrap();
    let secret: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);

    let activate = |name: &[u8]| {
        let made = hwpass::issuer::internal::make_credential(&ek, name, &secret).unwrap();
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
fn forged_request(key: &dyn hwpass::Signer, att: Option<hwpass::EvidenceClaims>) -> String {
    let claims = hwpass::RequestClaims {
        sub: "mallory@corp".into(),
        iat: NOW,
        kind: hwpass::BindingKind::Tpm,
        ttl: None,
        dev: None,
        att,
        stm: None,
    };
    hwpass::sign_request(&claims, key).unwrap()
}

fn evidence_of(request: &str) -> hwpass::EvidenceClaims {
    let payload = hwpass::decode(request).unwrap().payload().unwrap();
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
    // Another enrolment on the same TPM A has another AK: the TPM refuses to activate.
    let a2 = Desktop::with_tpm(&trust, &tpm_a);
    let out = a2.install(&delivery, NOW);
    assert_eq!(out.code, 6, "{out:?}");
    assert!(
        out.stderr
            .contains("sealed to another machine's TPM (or another enrolment)"),
        "{out:?}"
    );
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
    let soft = hwpass::MemoryKey::generate();
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
    let file = b.tpm_key_file();
    let key_b = hwpass::desktop::internal::TpmDevice::open(&file, Some(&tpm_b.tcti())).unwrap();
    let out = issuer.sign(&forged_request(&key_b, Some(evidence.clone())), NOW, &[]);
    assert_eq!(out.code, 4, "{out:?}");

    // Evidence whose certification was altered: the AK signature no longer verifies.
    let mut bent = evidence.clone();
    let mut cert = hwpass::b64url_decode(&bent.cert).unwrap();
    let last = cert.len() - 1;
    cert[last] ^= 1;
    bent.cert = hwpass::b64url(&cert);
    let out = issuer.sign(&forged_request(&soft, Some(bent)), NOW, &[]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr.contains("not signed by the attestation key"),
        "{out:?}"
    );
    assert!(issuer.audit_lines().is_empty());
}

mod with_tss {
    //! Evidence built by hand with tss-esapi and tpm2-tools, outside hwpass's own request code.

    use std::str::FromStr as _;

    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::handles::{KeyHandle, PersistentTpmHandle, TpmHandle};
    use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::interface_types::resource_handles::Hierarchy;
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::{
        Auth, Data, Digest, EccParameter, EccPoint, EccScheme, HashScheme, Private, Public,
        PublicBuilder, PublicEccParametersBuilder, Sensitive, Signature, SignatureScheme,
    };
    use tss_esapi::tcti_ldr::TctiNameConf;
    use tss_esapi::traits::{Marshall as _, UnMarshall as _};
    use tss_esapi::Context;

    use super::{evidence_of, forged_request};
    use crate::common::*;
    use hwpass::issuer::AttestationPolicy;
    use hwpass::{b64url, b64url_decode, Jwk};
    use hwpass::{qualifying_data, EvidenceClaims};
    use hwpass::{MemoryKey, Signer as _};

    fn signing_public(fixed: bool, point: EccPoint) -> Public {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(fixed)
            .with_fixed_parent(fixed)
            .with_sensitive_data_origin(fixed)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .build()
            .unwrap();
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_unrestricted_signing_key(
                    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                    EccCurve::NistP256,
                )
                .build()
                .unwrap(),
            )
            .with_ecc_unique_identifier(point)
            .build()
            .unwrap()
    }

    fn load(ctx: &mut Context, parent: KeyHandle, public: &str, private: &str) -> KeyHandle {
        let public = Public::unmarshall(&b64url_decode(public).unwrap()).unwrap();
        let private = Private::try_from(b64url_decode(private).unwrap()).unwrap();
        ctx.load(parent, private, public).unwrap()
    }

    fn certify(
        ctx: &mut Context,
        object: KeyHandle,
        signer: KeyHandle,
        qualifying: &[u8],
    ) -> (String, String) {
        ctx.set_sessions((
            Some(AuthSession::Password),
            Some(AuthSession::Password),
            None,
        ));
        let (attest, sig) = ctx
            .certify(
                object.into(),
                signer,
                Data::try_from(qualifying.to_vec()).unwrap(),
                SignatureScheme::Null,
            )
            .unwrap();
        let Signature::EcDsa(sig) = sig else {
            panic!("not ECDSA")
        };
        let mut raw = [0u8; 64];
        let (r, s) = (sig.signature_r().value(), sig.signature_s().value());
        raw[32 - r.len()..32].copy_from_slice(r);
        raw[64 - s.len()..].copy_from_slice(s);
        (b64url(&attest.marshall().unwrap()), b64url(&raw))
    }

    #[test]
    fn external_keys_unrestricted_aks_refused_and_tpm2_tools_certify_accepted() {
        let ca = LocalCa::new();
        let tpm = Swtpm::provisioned(&ca);
        let issuer = Issuer::with_attestation(&ca.roots(), None, true);
        let trust = issuer.setup();
        let desk = Desktop::with_tpm(&trust, &tpm);
        let real = evidence_of(&desk.request("eve@corp", &[]));
        let file = desk.tpm_key_file();

        let mut ctx = Context::new(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap();
        let srk = ctx
            .execute_without_session(|c| {
                c.tr_from_tpm_public(TpmHandle::Persistent(
                    PersistentTpmHandle::new(0x8100_0001).unwrap(),
                ))
            })
            .unwrap();
        let srk = KeyHandle::from(srk);
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        let ak = load(&mut ctx, srk, &file.ak_public, &file.ak_private);

        // 1. A key made outside the TPM and brought in with LoadExternal, certified by the real AK.
        let soft = MemoryKey::generate();
        let point = soft.verifying_key().to_encoded_point(false);
        let ecc_point = EccPoint::new(
            EccParameter::try_from(point.x().unwrap().to_vec()).unwrap(),
            EccParameter::try_from(point.y().unwrap().to_vec()).unwrap(),
        );
        let public = signing_public(false, ecc_point);
        let sensitive = Sensitive::Ecc {
            auth_value: Auth::default(),
            seed_value: Digest::default(),
            sensitive: EccParameter::try_from(soft.secret_bytes().to_vec()).unwrap(),
        };
        let external = ctx
            .execute_without_session(|c| {
                c.load_external(sensitive, public.clone(), Hierarchy::Null)
            })
            .unwrap();
        let jkt = Jwk::new(*soft.verifying_key()).thumbprint();
        let (cert, sig) = certify(&mut ctx, external, ak, &qualifying_data(&jkt));
        ctx.flush_context(external.into()).unwrap();
        let ev = EvidenceClaims {
            key: Some(b64url(&public.marshall().unwrap())),
            cert,
            sig,
            ..real.clone()
        };
        let out = issuer.sign(&forged_request(&soft, Some(ev)), NOW, &[]);
        assert_eq!(out.code, 4, "{out:?}");
        assert!(
            out.stderr.contains("was not created inside the TPM"),
            "{out:?}"
        );

        // 2. The real device key certified by an unrestricted signing key posing as the AK.
        ctx.flush_context(ak.into()).unwrap();
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        let fake_ak = ctx
            .create(
                srk,
                signing_public(true, EccPoint::default()),
                None,
                None,
                None,
                None,
            )
            .unwrap();
        let fake_ak_public = b64url(&fake_ak.out_public.marshall().unwrap());
        let fake = ctx
            .load(srk, fake_ak.out_private, fake_ak.out_public)
            .unwrap();
        let device = load(&mut ctx, srk, &file.key_public, &file.key_private);
        let device_key =
            hwpass::desktop::internal::TpmDevice::open(&file, Some(&tpm.tcti())).unwrap();
        let jkt = Jwk::new(*device_key.verifying_key()).thumbprint();
        let (cert, sig) = certify(&mut ctx, device, fake, &qualifying_data(&jkt));
        for h in [fake, device] {
            ctx.flush_context(h.into()).unwrap();
        }
        let ev = EvidenceClaims {
            ak: fake_ak_public,
            cert,
            sig,
            ..real.clone()
        };
        let out = issuer.sign(&forged_request(&device_key, Some(ev)), NOW, &[]);
        assert_eq!(out.code, 4, "{out:?}");
        assert!(
            out.stderr
                .contains("not a restricted, fixedTPM, fixedParent signing key"),
            "{out:?}"
        );
        drop(ctx);

        // 3. tpm2-tools' own TPM2_Certify of the device key by the AK: hwpass parses it and
        // verifies the AK signature over it. tpm2_certify 5.4 cannot set qualifying data, so the
        // one check left to fail is exactly that one — every earlier check passed.
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        for (prefix, public, private) in [
            ("ak", &file.ak_public, &file.ak_private),
            ("key", &file.key_public, &file.key_private),
        ] {
            let (pub_file, priv_file) = (p(&format!("{prefix}.pub")), p(&format!("{prefix}.priv")));
            write_tpm2b(
                std::path::Path::new(&pub_file),
                &b64url_decode(public).unwrap(),
            );
            write_tpm2b(
                std::path::Path::new(&priv_file),
                &b64url_decode(private).unwrap(),
            );
            tpm.load_under_srk(&pub_file, &priv_file, &p(&format!("{prefix}.ctx")))
                .ok();
            tpm.tool(&["tpm2_flushcontext", "-t"]).ok();
        }
        tpm.tool(&[
            "tpm2_certify",
            "-C",
            &p("ak.ctx"),
            "-c",
            &p("key.ctx"),
            "-g",
            "sha256",
            "-o",
            &p("attest"),
            "-s",
            &p("sig"),
            "-f",
            "plain",
        ])
        .ok();
        tpm.tool(&["tpm2_flushcontext", "-t"]).ok();
        let ev = EvidenceClaims {
            cert: b64url(&std::fs::read(p("attest")).unwrap()),
            // tpm2-tools writes ECDSA "plain" signatures as DER; the evidence carries r‖s.
            sig: b64url(
                &p256::ecdsa::Signature::from_der(&std::fs::read(p("sig")).unwrap())
                    .unwrap()
                    .to_bytes(),
            ),
            ..real.clone()
        };
        let roots: Vec<_> = ca
            .roots()
            .iter()
            .flat_map(|r| {
                hwpass::issuer::internal::parse_pem_certificates(
                    &std::fs::read_to_string(r).unwrap(),
                )
                .unwrap()
            })
            .collect();
        let policy = AttestationPolicy {
            require: true,
            roots,
            ..Default::default()
        };
        let jwk = Jwk::new(*device_key.verifying_key());
        assert_eq!(
            hwpass::issuer::internal::verify_evidence(&ev, &jwk, &policy, NOW).unwrap_err(),
            hwpass::issuer::AttestError::WrongQualifyingData
        );
        // The same signature over a changed structure does not verify.
        let mut bent = std::fs::read(p("attest")).unwrap();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        let ev = EvidenceClaims {
            cert: b64url(&bent),
            ..ev
        };
        assert_eq!(
            hwpass::issuer::internal::verify_evidence(&ev, &jwk, &policy, NOW).unwrap_err(),
            hwpass::issuer::AttestError::BadCertifySignature
        );
        // And hwpass's own evidence from the same TPM passes every check.
        let verified =
            hwpass::issuer::internal::verify_evidence(&real, &jwk, &policy, NOW).unwrap();
        assert_eq!(verified.att, hwpass::Attestation::EkCert);
        drop(device_key);
        assert!(tpm.transient_handles().is_empty());
    }
}

/// The ECC EKs' MakeCredential (ECDH with an ephemeral key, KDFe, KDFa, AES-CFB, HMAC),
/// checked by the TPM itself: swtpm's ActivateCredential releases exactly hwpass's
/// credential with a P-256 EK (template L-2, made by tpm2_createek) and with the P-384 EK
/// swtpm_setup persists (template H-3: SHA-384, AES-256), refuses it for another name, and
/// opens tpm2-tools' own `tpm2_makecredential` output of the same form the same way.
#[test]
fn software_ecc_make_credential_is_activated_by_the_tpm_like_tpm2_tools() {
    use hwpass::issuer::EkPublic;

    let ca = LocalCa::new();
    let tpm = Swtpm::provisioned(&ca);
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    tpm.tool(&[
        "tpm2_createek",
        "-c",
        &p("ek256.ctx"),
        "-G",
        "ecc",
        "-u",
        &p("ek256.pub"),
    ])
    .ok();
    tpm.tool(&["tpm2_readpublic", "-c", "0x81010016", "-o", &p("ek384.pub")])
        .ok();
    tpm.tool(&[
        "tpm2_createak",
        "-C",
        "0x81010001",
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
    let ak_name = std::fs::read(p("ak.name")).unwrap();
    let secret: [u8; 32] = std::array::from_fn(|i| (i * 11) as u8);
    std::fs::write(p("secret"), secret).unwrap();

    // (EK public file, EK context for the TPM, whether its policy needs PolicySecret).
    for (public, context, policy) in [
        (p("ek256.pub"), p("ek256.ctx"), true),
        (p("ek384.pub"), "0x81010016".to_string(), false),
    ] {
        let bytes = std::fs::read(&public).unwrap();
        let Public::Ecc { unique, .. } = Public::unmarshall(&bytes[2..]).unwrap() else {
            panic!("EK is not ECC")
        };
        let sec1 = [&[4u8][..], unique.x().value(), unique.y().value()].concat();
        let (ek, coordinate) = match unique.x().value().len() {
            32 => (
                EkPublic::P256(p256::PublicKey::from_sec1_bytes(&sec1).unwrap()),
                32,
            ),
            _ => (
                EkPublic::P384(p384::PublicKey::from_sec1_bytes(&sec1).unwrap()),
                48,
            ),
        };
        let activate = |cred: &[u8]| {
            std::fs::write(p("cred"), cred).unwrap();
            let _ = std::fs::remove_file(p("out"));
            let mut args = vec![
                "tpm2_activatecredential".to_string(),
                "-c".into(),
                p("ak.ctx"),
                "-C".into(),
                context.clone(),
                "-i".into(),
                p("cred"),
                "-o".into(),
                p("out"),
            ];
            if policy {
                tpm.tool(&[
                    "tpm2_startauthsession",
                    "--policy-session",
                    "-S",
                    &p("s.ctx"),
                ])
                .ok();
                tpm.tool(&["tpm2_policysecret", "-S", &p("s.ctx"), "-c", "e"])
                    .ok();
                args.extend(["-P".into(), format!("session:{}", p("s.ctx"))]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = tpm.tool(&args);
            if policy {
                let _ = tpm.tool(&["tpm2_flushcontext", &p("s.ctx")]);
            }
            tpm.tool(&["tpm2_flushcontext", "-t"]).ok();
            (r, std::fs::read(p("out")).ok())
        };
        let ours = |name: &[u8]| {
            let made = hwpass::issuer::internal::make_credential(&ek, name, &secret).unwrap();
            // The encrypted secret is the ephemeral point: two coordinates of the curve's size.
            assert_eq!(made.encrypted_secret.len(), 4 + 2 * coordinate);
            let mut file = vec![0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1];
            for part in [&made.id_object, &made.encrypted_secret] {
                file.extend_from_slice(&(part.len() as u16).to_be_bytes());
                file.extend_from_slice(part);
            }
            file
        };
        let (r, out) = activate(&ours(&ak_name));
        assert_eq!(r.code, 0, "{public}: {r:?}");
        assert_eq!(out.as_deref(), Some(&secret[..]));
        let mut other = ak_name.clone();
        let last = other.len() - 1;
        other[last] ^= 1;
        let (r, out) = activate(&ours(&other));
        assert_ne!(r.code, 0, "{r:?}");
        assert!(out.is_none());

        // tpm2-tools' software MakeCredential for the same EK: the same layout, the same result.
        tpm.tool(&[
            "tpm2_makecredential",
            "-T",
            "none",
            "-u",
            &public,
            "-s",
            &p("secret"),
            "-n",
            &hex::encode(&ak_name),
            "-o",
            &p("theirs"),
        ])
        .ok();
        let theirs = std::fs::read(p("theirs")).unwrap();
        let id_len = u16::from_be_bytes([theirs[8], theirs[9]]) as usize;
        assert_eq!(
            id_len,
            ours(&ak_name)[8..10]
                .iter()
                .fold(0usize, |a, &b| a << 8 | b as usize),
            "integrity HMAC and encrypted identity have the same sizes"
        );
        let (r, out) = activate(&theirs);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(out.as_deref(), Some(&secret[..]));
    }
    assert!(tpm.transient_handles().is_empty());
}
