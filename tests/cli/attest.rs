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
