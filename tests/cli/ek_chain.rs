//! EK certificate chains validated by the book (issue 19): hierarchies made here with rcgen,
//! each refusal naming the certificate and the rule, and swtpm_setup's RSA and ECC EK
//! certificates accepted end to end (request → sealed delivery → install → check).
//!
//! The refusal cases use a real TPM's evidence (its AK, its certification of the device key)
//! with an EK certificate from the test's own hierarchy for that TPM's RSA EK, so everything
//! but the chain is genuine: a chain check that let a case through would issue a pass (the
//! good hierarchy shows that, end to end).

use std::path::PathBuf;
use std::str::FromStr as _;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use rsa::pkcs1::EncodeRsaPublicKey as _;
use time::OffsetDateTime;
use tss_esapi::structures::Public;
use tss_esapi::traits::UnMarshall as _;
use x509_cert::der::Encode as _;

use crate::common::*;

const TCG_KP_EK_CERTIFICATE: [u64; 5] = [2, 23, 133, 8, 1];

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

/// Valid around NOW (2027-01-15): 2026-01-01 … 2036-01-01.
fn valid(params: &mut CertificateParams) {
    params.not_before = at(1_767_225_600);
    params.not_after = at(2_082_758_400);
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hwpass tests");
    dn.push(DnType::CommonName, cn);
    dn
}

/// A CA (or a would-be CA) of a test hierarchy.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

impl Ca {
    fn params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        valid(&mut p);
        p.distinguished_name = dn(cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    fn root(cn: &str) -> Self {
        let params = Self::params(cn);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Self { params, key, der }
    }

    fn issue(&self, params: CertificateParams) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let der = params.signed_by(&key, &issuer).unwrap().der().to_vec();
        Self { params, key, der }
    }

    fn sign_ek(&self, params: &CertificateParams, ek: &EkKey) -> Vec<u8> {
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        params.signed_by(ek, &issuer).unwrap().der().to_vec()
    }
}

/// An endorsement key's public half, as rcgen puts it in a certificate.
struct EkKey {
    der: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for EkKey {
    fn der_bytes(&self) -> &[u8] {
        &self.der
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// The subjectAltName of an EK certificate (TCG EK Credential Profile §3.2.9): a
/// directoryName with the TPM manufacturer, model and version.
fn tpm_san(manufacturer: &str) -> CustomExtension {
    let name = x509_cert::name::Name::from_str(&format!(
        "2.23.133.2.3=id:00020008,2.23.133.2.2=hwpass-vtpm,2.23.133.2.1={manufacturer}"
    ))
    .unwrap();
    let san = x509_cert::ext::pkix::SubjectAltName(vec![
        x509_cert::ext::pkix::name::GeneralName::DirectoryName(name),
    ]);
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 17], san.to_der().unwrap());
    ext.set_criticality(true);
    ext
}

/// An EK certificate as the TCG profile describes it: empty subject, critical SAN with the
/// TPM attributes, keyEncipherment only, the EK EKU, notAfter 99991231235959Z.
fn ek_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.not_before = at(1_767_225_600);
    p.not_after = at(253_402_300_799);
    p.distinguished_name = DistinguishedName::new();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(
        TCG_KP_EK_CERTIFICATE.to_vec(),
    )];
    p.custom_extensions = vec![tpm_san("id:494E5443")];
    p
}

fn pem(ders: &[&[u8]]) -> String {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// A TPM-enrolled desktop (its TPM without an EK certificate), an issuer, and the desktop's
/// request: the evidence every case reuses with another EK certificate.
struct Lab {
    tpm: Swtpm,
    issuer: Issuer,
    desk: Desktop,
    claims: serde_json::Value,
    ek: EkKey,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let tpm = Swtpm::start();
        let issuer = Issuer::new();
        let trust = issuer.setup();
        let desk = Desktop::with_tpm(&trust, &tpm);
        let request = desk.request("eve@corp", &[]);
        let claims = hwpass::decode(&request).unwrap().payload().unwrap();
        let ekp = hwpass::b64url_decode(claims["att"]["ekp"].as_str().unwrap()).unwrap();
        let Public::Rsa { unique, .. } = Public::unmarshall(&ekp).unwrap() else {
            panic!("the EK is not RSA")
        };
        let key = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(unique.value()),
            rsa::BigUint::from(65537u32),
        )
        .unwrap();
        let ek = EkKey {
            der: key.to_pkcs1_der().unwrap().as_bytes().to_vec(),
            alg: &rcgen::PKCS_RSA_SHA256,
        };
        Self {
            tpm,
            issuer,
            desk,
            claims,
            ek,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, certs: &[&Ca]) -> PathBuf {
        let path = self.dir.path().join(name);
        let ders: Vec<&[u8]> = certs.iter().map(|c| c.der.as_slice()).collect();
        std::fs::write(&path, pem(&ders)).unwrap();
        path
    }

    /// Configures the issuer: `roots` as anchors, `intermediates` to build paths.
    fn trust(&self, roots: &[&Ca], intermediates: &[&Ca], extra: &str) {
        let roots = self.file("roots.pem", roots);
        let mut section = format!("require = true\nek_roots = [{:?}]\n", roots.display());
        if !intermediates.is_empty() {
            let inter = self.file("intermediates.pem", intermediates);
            section.push_str(&format!("ek_intermediates = [{:?}]\n", inter.display()));
        }
        section.push_str(extra);
        self.issuer.set_attestation(&section);
    }

    /// The desktop's request with `ek_cert` (and `carried` CA certificates) as its EK
    /// evidence, signed by its TPM key.
    fn request(&self, ek_cert: &[u8], carried: &[&[u8]]) -> String {
        let mut claims = self.claims.clone();
        let att = claims["att"].as_object_mut().unwrap();
        att.remove("ekp");
        att.insert("ekc".into(), hwpass::b64url(ek_cert).into());
        if !carried.is_empty() {
            let list: Vec<String> = carried.iter().map(|c| hwpass::b64url(c)).collect();
            att.insert("eki".into(), list.into());
        }
        let claims: hwpass::RequestClaims = serde_json::from_value(claims).unwrap();
        let key = hwpass::desktop::internal::TpmDevice::open(
            &self.desk.tpm_key_file(),
            Some(&self.tpm.tcti()),
        )
        .unwrap();
        hwpass::sign_request(&claims, &key).unwrap()
    }

    fn sign(&self, ek_cert: &[u8], carried: &[&[u8]]) -> Run {
        self.issuer.sign(&self.request(ek_cert, carried), NOW, &[])
    }

    /// Asserts the issuer refuses with exit 4 and a message containing `expected`, issuing
    /// nothing.
    fn refused(&self, ek_cert: &[u8], carried: &[&[u8]], expected: &str) {
        let issued = self.issuer.audit_lines().len();
        let out = self.sign(ek_cert, carried);
        assert_eq!(out.code, 4, "{out:?}");
        assert!(out.stderr.contains(expected), "{out:?}");
        assert_eq!(self.issuer.audit_lines().len(), issued);
    }
}

/// Root → intermediate (pathLen 0) → EK certificate: the good case the refusals vary.
fn good_hierarchy() -> (Ca, Ca) {
    let root = Ca::root("hwpass test TPM root");
    let mut p = Ca::params("hwpass test EK CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let inter = root.issue(p);
    (root, inter)
}

#[test]
fn a_chain_by_the_tcg_profile_is_accepted_end_to_end() {
    let lab = Lab::new();
    let (root, inter) = good_hierarchy();
    lab.trust(&[&root], &[&inter], "");
    let ek = inter.sign_ek(&ek_params(), &lab.ek);
    let delivery = lab.sign(&ek, &[]).ok().line();
    assert!(delivery.starts_with("hwpass-dlv1."), "{delivery}");
    assert_eq!(lab.issuer.audit_lines()[0]["att"], "ek-cert");
    lab.desk.install(&delivery, NOW).ok();
    let (code, v) = lab.desk.check(NOW);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["attestation"], "ek-cert");
}

#[test]
fn intermediates_carried_by_the_request_complete_the_chain_but_are_not_trusted() {
    let lab = Lab::new();
    let (root, inter) = good_hierarchy();
    let ek = inter.sign_ek(&ek_params(), &lab.ek);
    // Only the root configured: the request brings the intermediate.
    lab.trust(&[&root], &[], "");
    lab.refused(
        &ek,
        &[],
        "no configured root or intermediate is the issuer 'CN=hwpass test EK CA,O=hwpass tests' of the EK certificate",
    );
    lab.sign(&ek, &[&inter.der]).ok();
    // The intermediate alone, as an anchor candidate carried by the request, trusts nothing.
    lab.trust(&[&Ca::root("hwpass unrelated root")], &[], "");
    lab.refused(
        &ek,
        &[&inter.der],
        "does not chain to a trusted TPM manufacturer CA",
    );
    // More than 4 carried certificates are refused before any is parsed.
    let five: Vec<&[u8]> = std::iter::repeat_n(inter.der.as_slice(), 5).collect();
    let out = lab.sign(&ek, &five);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("carries 5 CA certificates"), "{out:?}");
}

#[test]
fn non_ca_intermediate_is_refused() {
    let lab = Lab::new();
    let root = Ca::root("hwpass test TPM root");
    let mut p = Ca::params("hwpass test not a CA");
    p.is_ca = IsCa::ExplicitNoCa;
    let inter = root.issue(p);
    lab.trust(&[&root], &[&inter], "");
    lab.refused(
        &inter.sign_ek(&ek_params(), &lab.ek),
        &[],
        "intermediate 'CN=hwpass test not a CA,O=hwpass tests' is not a CA (basicConstraints cA is not TRUE)",
    );
}

#[test]
fn intermediate_without_key_cert_sign_is_refused() {
    let lab = Lab::new();
    let root = Ca::root("hwpass test TPM root");
    let mut p = Ca::params("hwpass test CA without keyCertSign");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let inter = root.issue(p);
    lab.trust(&[&root], &[&inter], "");
    lab.refused(
        &inter.sign_ek(&ek_params(), &lab.ek),
        &[],
        "intermediate 'CN=hwpass test CA without keyCertSign,O=hwpass tests' may not sign certificates (its keyUsage lacks keyCertSign)",
    );
}

#[test]
fn path_length_exceeded_is_refused() {
    let lab = Lab::new();
    let root = Ca::root("hwpass test TPM root");
    let mut p = Ca::params("hwpass test CA pathLen 0");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let upper = root.issue(p);
    let lower = upper.issue(Ca::params("hwpass test CA below it"));
    lab.trust(&[&root], &[&upper, &lower], "");
    lab.refused(
        &lower.sign_ek(&ek_params(), &lab.ek),
        &[],
        "intermediate 'CN=hwpass test CA pathLen 0,O=hwpass tests' allows 0 CA certificates below it (pathLenConstraint), the chain has 1",
    );
}

#[test]
fn expired_intermediate_is_refused() {
    let lab = Lab::new();
    let root = Ca::root("hwpass test TPM root");
    let mut p = Ca::params("hwpass test expired CA");
    p.not_before = at(1_735_689_600); // 2025-01-01
    p.not_after = at(1_782_777_600); // 2026-06-30
    let inter = root.issue(p);
    lab.trust(&[&root], &[&inter], "");
    lab.refused(
        &inter.sign_ek(&ek_params(), &lab.ek),
        &[],
        "intermediate 'CN=hwpass test expired CA,O=hwpass tests' expired at 2026-06-30",
    );
}

#[test]
fn ek_certificate_without_the_ek_eku_is_refused_unless_the_policy_allows_it() {
    let lab = Lab::new();
    let (root, inter) = good_hierarchy();
    lab.trust(&[&root], &[&inter], "");
    let mut p = ek_params();
    p.extended_key_usages.clear();
    let no_eku = inter.sign_ek(&p, &lab.ek);
    lab.refused(
        &no_eku,
        &[],
        "the EK certificate breaks the TCG EK profile: it has no extended key usage tcg-kp-EKCertificate (2.23.133.8.1)",
    );
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let wrong_eku = inter.sign_ek(&p, &lab.ek);
    lab.refused(
        &wrong_eku,
        &[],
        "the extended key usage of the EK certificate does not include tcg-kp-EKCertificate",
    );
    // The documented switch for vendors known to omit the EKU: absent is accepted, a wrong
    // one still is not.
    lab.trust(&[&root], &[&inter], "allow_missing_ek_eku = true\n");
    lab.sign(&no_eku, &[]).ok();
    let out = lab.sign(&wrong_eku, &[]);
    assert_eq!(out.code, 4, "{out:?}");
}

#[test]
fn unknown_critical_extension_is_refused() {
    let lab = Lab::new();
    let root = Ca::root("hwpass test TPM root");
    let mut p = Ca::params("hwpass test CA with a critical extension");
    let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![5, 0]);
    ext.set_criticality(true);
    p.custom_extensions = vec![ext.clone()];
    let inter = root.issue(p);
    lab.trust(&[&root], &[&inter], "");
    lab.refused(
        &inter.sign_ek(&ek_params(), &lab.ek),
        &[],
        "intermediate 'CN=hwpass test CA with a critical extension,O=hwpass tests' has an unknown critical extension 1.3.6.1.4.1.55555.1",
    );
    // On the EK certificate itself.
    let (root, inter) = good_hierarchy();
    lab.trust(&[&root], &[&inter], "");
    let mut p = ek_params();
    p.custom_extensions.push(ext);
    lab.refused(
        &inter.sign_ek(&p, &lab.ek),
        &[],
        "the EK certificate has an unknown critical extension 1.3.6.1.4.1.55555.1",
    );
}

#[test]
fn wrong_signature_is_refused() {
    let lab = Lab::new();
    let (root, inter) = good_hierarchy();
    lab.trust(&[&root], &[&inter], "");
    let mut ek = inter.sign_ek(&ek_params(), &lab.ek);
    let last = ek.len() - 1;
    ek[last] ^= 1;
    lab.refused(
        &ek,
        &[],
        "the signature on the EK certificate does not verify with the key of 'CN=hwpass test EK CA,O=hwpass tests'",
    );
    // An intermediate signed by another key under the root's name.
    let impostor = Ca::root("hwpass test TPM root");
    let mut p = Ca::params("hwpass test EK CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let forged = impostor.issue(p);
    lab.trust(&[&root], &[&forged], "");
    lab.refused(
        &forged.sign_ek(&ek_params(), &lab.ek),
        &[],
        "the signature on intermediate 'CN=hwpass test EK CA,O=hwpass tests' does not verify with the key of 'CN=hwpass test TPM root,O=hwpass tests'",
    );
}

#[test]
fn chain_through_an_untrusted_root_is_refused() {
    let lab = Lab::new();
    let (root, _) = good_hierarchy();
    let (evil_root, evil_inter) = {
        let r = Ca::root("hwpass test untrusted root");
        let i = r.issue(Ca::params("hwpass test untrusted EK CA"));
        (r, i)
    };
    lab.trust(&[&root], &[], "");
    // The request brings the whole other hierarchy, root included: still not an anchor.
    lab.refused(
        &evil_inter.sign_ek(&ek_params(), &lab.ek),
        &[&evil_inter.der, &evil_root.der],
        "root 'CN=hwpass test untrusted root,O=hwpass tests' is not one of the configured EK roots",
    );
}

#[test]
fn manufacturer_policy_allows_only_listed_manufacturers() {
    let lab = Lab::new();
    let (root, inter) = good_hierarchy();
    let ek = inter.sign_ek(&ek_params(), &lab.ek);
    lab.trust(
        &[&root],
        &[&inter],
        "manufacturers = [\"id:49465800\", \"id:4e544300\"]\n",
    );
    lab.refused(
        &ek,
        &[],
        "the EK certificate's TPM manufacturer id:494E5443 is not among the allowed manufacturers",
    );
    lab.trust(&[&root], &[&inter], "manufacturers = [\"id:494e5443\"]\n");
    lab.sign(&ek, &[]).ok();
    // A malformed entry stops the issuer at start.
    lab.trust(&[&root], &[&inter], "manufacturers = [\"Intel\"]\n");
    let out = lab.sign(&ek, &[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("\"Intel\" is not \"id:\""), "{out:?}");
}

#[test]
fn an_ek_root_that_is_not_a_ca_is_refused_when_the_config_is_read() {
    let lab = Lab::new();
    let mut p = Ca::params("hwpass test self-signed leaf");
    p.is_ca = IsCa::ExplicitNoCa;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let der = p.self_signed(&key).unwrap().der().to_vec();
    let leaf = Ca {
        params: p,
        key,
        der,
    };
    lab.trust(&[&leaf], &[], "");
    let out = lab.sign(&leaf.sign_ek(&ek_params(), &lab.ek), &[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("'CN=hwpass test self-signed leaf,O=hwpass tests' is not a CA certificate"),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// swtpm_setup's certificates, end to end

/// An issuer trusting `ca`'s root, with its intermediate configured as such.
fn swtpm_issuer(ca: &LocalCa) -> Issuer {
    Issuer::with_ek_chain(&[ca.root()], &[ca.intermediate()], "")
}

fn end_to_end(tpm: &Swtpm, issuer: &Issuer, expect_cert: &str) {
    let trust = issuer.setup();
    let desk = Desktop::with_tpm(&trust, tpm);
    let req = desk.request("eve@corp", &[]);
    let payload = hwpass::decode(&req).unwrap().payload().unwrap();
    let ekc = hwpass::b64url_decode(payload["att"]["ekc"].as_str().unwrap()).unwrap();
    assert!(
        ekc.windows(expect_cert.len())
            .any(|w| w == expect_cert.as_bytes())
            || hex::encode(&ekc).contains(expect_cert),
        "the request carries the expected EK certificate"
    );
    let delivery = issuer.sign(&req, NOW, &[]).ok().line();
    assert!(delivery.starts_with("hwpass-dlv1."), "{delivery}");
    let record = &issuer.audit_lines()[0];
    assert_eq!(record["att"], "ek-cert");
    // The audit record names the TPM, as its EK certificate does (swtpm: IBM's vendor ID).
    assert!(
        record["tpm"]["manufacturer"]
            .as_str()
            .is_some_and(|m| m.starts_with("id:")),
        "{record}"
    );
    assert!(record["tpm"]["model"].is_string(), "{record}");
    let list = issuer.run(&["audit", "list"], None).ok();
    assert!(list.stdout.contains("  TPM id:"), "{list:?}");
    desk.install(&delivery, NOW).ok();
    let (code, v) = desk.check(NOW);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["attestation"], "ek-cert");
    assert!(tpm.transient_handles().is_empty());
}

/// DER of the OID rsaEncryption and of secp384r1, to tell which EK certificate was sent.
const RSA_ENCRYPTION_HEX: &str = "2a864886f70d010101";
const SECP384R1_HEX: &str = "2b81040022";

#[test]
fn swtpm_rsa_ek_certificate_is_accepted_end_to_end() {
    let ca = LocalCa::new();
    let tpm = Swtpm::provisioned(&ca);
    end_to_end(&tpm, &swtpm_issuer(&ca), RSA_ENCRYPTION_HEX);
}

#[test]
fn swtpm_ecc_p384_ek_certificate_is_accepted_end_to_end() {
    let ca = LocalCa::new();
    let tpm = Swtpm::provisioned(&ca);
    // A TPM whose only EK certificate is the ECC one (the RSA certificate's NV index removed
    // with platform authorization): the desktop sends it and activates with the P-384 EK.
    tpm.tool(&["tpm2_nvundefine", "0x01c00002", "-C", "p"]).ok();
    end_to_end(&tpm, &swtpm_issuer(&ca), SECP384R1_HEX);
}

#[test]
fn ecc_p256_ek_certificate_in_the_low_range_is_used_end_to_end() {
    // A TPM without any EK certificate gets one for its P-256 EK (template L-2) from the test
    // hierarchy in NV 0x01c0000a, as a manufacturer would: the desktop sends it, the issuer
    // makes an ECDH credential, and the desktop activates it with a P-256 EK it creates from
    // the template (no persistent one), under the EK's PolicySecret policy.
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    tpm.tool(&[
        "tpm2_createek",
        "-c",
        &p("ek.ctx"),
        "-G",
        "ecc",
        "-u",
        &p("ek.pub"),
    ])
    .ok();
    tpm.tool(&["tpm2_flushcontext", "-t"]).ok();
    let bytes = std::fs::read(p("ek.pub")).unwrap();
    let Public::Ecc { unique, .. } = Public::unmarshall(&bytes[2..]).unwrap() else {
        panic!("EK is not ECC")
    };
    let ek = EkKey {
        der: [&[4u8][..], unique.x().value(), unique.y().value()].concat(),
        alg: &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let (root, inter) = good_hierarchy();
    let mut params = ek_params();
    params.key_usages = vec![KeyUsagePurpose::KeyAgreement];
    let cert = inter.sign_ek(&params, &ek);
    std::fs::write(p("ek.der"), &cert).unwrap();
    tpm.tool(&[
        "tpm2_nvdefine",
        "0x01c0000a",
        "-C",
        "o",
        "-s",
        &cert.len().to_string(),
        "-a",
        "ownerread|ownerwrite|authread|authwrite|no_da",
    ])
    .ok();
    tpm.tool(&["tpm2_nvwrite", "0x01c0000a", "-C", "o", "-i", &p("ek.der")])
        .ok();

    let roots = dir.path().join("root.pem");
    std::fs::write(&roots, pem(&[&root.der])).unwrap();
    let inters = dir.path().join("inter.pem");
    std::fs::write(&inters, pem(&[&inter.der])).unwrap();
    let issuer = Issuer::with_ek_chain(&[roots], &[inters], "");
    end_to_end(&tpm, &issuer, "2a8648ce3d030107");
}

mod facts {
    //! What a verified EK certificate tells the issuer (for the audit record and the review
    //! page), read through the library.

    use super::*;
    use hwpass::issuer::AttestationPolicy;

    #[test]
    fn swtpm_ek_certificates_name_the_tpm_and_their_chain() {
        let ca = LocalCa::new();
        let tpm = Swtpm::provisioned(&ca);
        let issuer = Issuer::new();
        let trust = issuer.setup();
        let desk = Desktop::with_tpm(&trust, &tpm);
        let certs = |path: PathBuf| {
            hwpass::issuer::internal::parse_pem_certificates(
                &std::fs::read_to_string(path).unwrap(),
            )
            .unwrap()
        };
        let policy = AttestationPolicy {
            require: true,
            roots: certs(ca.root()),
            intermediates: certs(ca.intermediate()),
            manufacturers: vec!["id:00001014".into()],
            ..Default::default()
        };
        let file = desk.tpm_key_file();
        let key = hwpass::desktop::internal::TpmDevice::open(&file, Some(&tpm.tcti())).unwrap();
        let jwk = hwpass::Jwk::new(*hwpass::Signer::verifying_key(&key));
        drop(key);
        for kind in [hwpass::EkKind::Rsa2048, hwpass::EkKind::EccP384] {
            if kind == hwpass::EkKind::EccP384 {
                tpm.tool(&["tpm2_nvundefine", "0x01c00002", "-C", "p"]).ok();
            }
            let req = desk.request("eve@corp", &[]);
            let payload = hwpass::decode(&req).unwrap().payload().unwrap();
            let ev: hwpass::EvidenceClaims =
                serde_json::from_value(payload["att"].clone()).unwrap();
            let v = hwpass::issuer::internal::verify_evidence(&ev, &jwk, &policy, NOW).unwrap();
            assert_eq!(v.ek_kind(), kind);
            let tpm_id = v.tpm.expect("the TPM attributes");
            assert_eq!(tpm_id.manufacturer, "id:00001014");
            assert_eq!(tpm_id.model, "swtpm");
            assert_eq!(tpm_id.version, "id:20191023");
            assert_eq!(v.chain, ["CN=swtpm-localca", "CN=swtpm-localca-rootca"]);
            let other = AttestationPolicy {
                manufacturers: vec!["id:494E5443".into()],
                ..policy.clone()
            };
            assert!(matches!(
                hwpass::issuer::internal::verify_evidence(&ev, &jwk, &other, NOW),
                Err(hwpass::issuer::AttestError::EkCertificate(
                    hwpass::issuer::EkCertError::ManufacturerNotAllowed { .. }
                ))
            ));
        }
    }
}
