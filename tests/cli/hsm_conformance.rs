//! One HSM conformance suite, the same test function run over four independent PKCS#11
//! implementations (`conformance_softhsm`, `conformance_p11kit`, `conformance_kryoptic`,
//! `conformance_tpm2_pkcs11`): keygen (flags read back through `key-info --json`), a second
//! keygen refused, `jwks`, `sign`, `sign --batch` on several sessions under a session cap,
//! every pass verified by an independent JOSE library (`jsonwebtoken`), a wrong PIN, a session
//! and a login lost and re-opened, the session cap, the template fallback, key rotation and the
//! token taken away.
//!
//! The in-process part (session loss, session cap, template) runs in a child process of this
//! test binary: a process has one instance of a PKCS#11 module, configured by environment
//! variables (SOFTHSM2_CONF, P11_KIT_SERVER_ADDRESS, KRYOPTIC_CONF, TPM2_PKCS11_STORE).

use std::path::PathBuf;
use std::process::Command;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use secrecy::SecretString;

use hwpass::issuer::internal::{
    EcPointEncoding, ExtraAttribute, Hsm, KeyTemplate, LoginScope, Pkcs11Uri, SignMechanism,
    TokenOptions,
};

use crate::common::*;
use crate::modules::{Kind, Module, MODULE_PIN};

/// Set in the child process that runs the in-process part; holds the key URI.
const CHILD_URI: &str = "HWPASS_CONFORMANCE_URI";

#[test]
fn conformance_softhsm() {
    suite(Kind::SoftHsm);
}

#[test]
fn conformance_p11kit() {
    suite(Kind::P11Kit);
}

#[test]
fn conformance_kryoptic() {
    suite(Kind::Kryoptic);
}

#[test]
fn conformance_tpm2_pkcs11() {
    suite(Kind::Tpm2Pkcs11);
}

/// What each module is known to do differently: the suite checks that hwpass noticed.
struct Expected {
    mechanism: SignMechanism,
    ec_point: EcPointEncoding,
    /// Whether the module refuses CKA_ALWAYS_SENSITIVE in a key template.
    refuses_always_sensitive: bool,
    /// Whether the module reports a lost login with a generic code, not CKR_USER_NOT_LOGGED_IN.
    generic_lost_login: bool,
}

fn expected(kind: Kind) -> Expected {
    match kind {
        // SoftHSM 2.6.1 has no CKM_ECDSA_SHA256; it refuses read-only attributes in templates.
        Kind::SoftHsm | Kind::P11Kit => Expected {
            mechanism: SignMechanism::Ecdsa,
            ec_point: EcPointEncoding::Der,
            refuses_always_sensitive: true,
            generic_lost_login: false,
        },
        // Kryoptic hashes in the module. Its "Bytes" EC point default (KRYOPTIC_EC_POINT_ENCODING)
        // applies to Edwards and Montgomery keys only (kryoptic-lib 1.5.4 fns/objmgmt.rs): a
        // P-256 point comes back DER-wrapped. The raw form is covered by the unit tests of
        // `ec_point_sec1`.
        Kind::Kryoptic => Expected {
            mechanism: SignMechanism::EcdsaSha256,
            ec_point: EcPointEncoding::Der,
            // It accepts CKA_ALWAYS_SENSITIVE(true) in a template: the full one is used.
            refuses_always_sensitive: false,
            // After a logout elsewhere, C_SignInit says CKR_GENERAL_ERROR.
            generic_lost_login: true,
        },
        Kind::Tpm2Pkcs11 => Expected {
            mechanism: SignMechanism::EcdsaSha256,
            ec_point: EcPointEncoding::Der,
            refuses_always_sensitive: true,
            generic_lost_login: false,
        },
    }
}

/// An issuer (config and audit log in a temp dir) on one module's token.
struct ModuleIssuer {
    /// The key URI of `object=issuer-key`.
    uri: String,
    env: Vec<(String, std::ffi::OsString)>,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl ModuleIssuer {
    fn new(module: &Module) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("issuer.toml");
        let issuer = Self {
            uri: module.uri("issuer-key"),
            env: module.env.clone(),
            dir,
            config,
        };
        issuer.configure("issuer-key", &[], None);
        issuer
    }

    fn configure(&self, object: &str, also_trusted: &[&str], max_sessions: Option<usize>) {
        let also: Vec<String> = also_trusted.iter().map(|l| format!("{l:?}")).collect();
        let max = max_sessions.map_or(String::new(), |n| format!("max_sessions = {n}\n"));
        std::fs::write(
            &self.config,
            format!(
                "issuer = \"test-issuer\"\naudience = \"analytics-desktop\"\naudit_log = \"audit.jsonl\"\n\n[key]\nuri = \"{}\"\nalso_trusted = [{}]\n{max}\n[policy]\n{DEFAULT_POLICY}",
                self.uri.replace("object=issuer-key", &format!("object={object}")),
                also.join(", ")
            ),
        )
        .unwrap();
    }

    fn cmd_with_pin(&self, pin: Option<&str>, now: i64) -> Command {
        let mut cmd = bin("hwpass-issuer", now);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(pin) = pin {
            cmd.env("HWPASS_PIN", pin);
        }
        cmd.arg("--config").arg(&self.config);
        cmd
    }

    fn run(&self, args: &[&str], stdin: Option<&str>, now: i64) -> Run {
        let mut cmd = self.cmd_with_pin(Some(MODULE_PIN), now);
        cmd.args(args);
        run(cmd, stdin)
    }

    fn jwks(&self) -> String {
        // The trust bundle needs no PIN.
        let mut cmd = self.cmd_with_pin(None, NOW);
        cmd.arg("jwks");
        let out = run(cmd, None).ok();
        let path = self.dir.path().join("issuer.jwks");
        std::fs::write(&path, &out.stdout).unwrap();
        out.stdout
    }
}

/// An independent JOSE library verifies the pass with nothing but the published JWKS.
fn third_party_verify(pass: &str, jwks: &str) -> serde_json::Value {
    let set: JwkSet = serde_json::from_str(jwks).unwrap();
    let header = decode_header(pass).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("the pass's kid is in the JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["analytics-desktop"]);
    validation.set_issuer(&["test-issuer"]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    decode::<serde_json::Value>(pass, &key, &validation)
        .unwrap_or_else(|e| panic!("jsonwebtoken refused the pass: {e}"))
        .claims
}

fn kid_of(pass: &str) -> String {
    decode_header(pass).unwrap().kid.unwrap()
}

fn suite(kind: Kind) {
    if let Ok(uri) = std::env::var(CHILD_URI) {
        return in_process(kind, &uri);
    }
    let name = kind.name();
    let want = expected(kind);
    let mut module = Module::start(kind);
    let issuer = ModuleIssuer::new(&module);

    // keygen: a P-256 key in the token, flags read back through key-info.
    let created = issuer.run(&["keygen", "--json"], None, NOW).ok().json();
    let kid = created["kid"].as_str().unwrap().to_string();
    let again = issuer.run(&["keygen"], None, NOW);
    assert_eq!(again.code, 10, "{name}: a second keygen: {again:?}");
    assert!(
        again.stderr.contains("never overwrites"),
        "{name}: {again:?}"
    );

    let info = issuer.run(&["key-info", "--json"], None, NOW).ok().json();
    assert_eq!(info["kid"], kid.as_str(), "{name}: {info}");
    for (flag, value) in [
        ("token", true),
        ("private", true),
        ("sensitive", true),
        ("extractable", false),
        ("sign", true),
        ("decrypt", false),
        ("derive", false),
        ("unwrap", false),
        ("private_value_readable", false),
    ] {
        assert_eq!(info[flag], value, "{name}: {flag} in {info}");
    }
    // The module says who it is, and which quirks are in effect.
    assert_eq!(
        info["module"]["token_label"],
        module.token.as_str(),
        "{info}"
    );
    for field in ["manufacturer", "library", "library_version", "token_model"] {
        assert!(
            info["module"][field]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "{name}: module {field} in {info}"
        );
    }
    let quirk = |q: &str| info["quirks"][q].as_str().unwrap_or_default().to_string();
    assert!(
        quirk("mechanism").starts_with(&format!("{} (", want.mechanism.as_str())),
        "{name}: {info}"
    );
    let point = match want.ec_point {
        EcPointEncoding::Der => "DER",
        _ => "raw",
    };
    assert!(quirk("ec_point").starts_with(point), "{name}: {info}");
    let text = issuer.run(&["key-info"], None, NOW).ok();
    for needle in [
        "module ",
        "token  ",
        "quirk  mechanism: ",
        "quirk  max_sessions: ",
    ] {
        assert!(text.stdout.contains(needle), "{name}: {needle}: {text:?}");
    }

    // jwks without a PIN; sign; an independent library verifies at the real time.
    let jwks = issuer.jwks();
    assert!(jwks.contains(&kid), "{name}: {jwks}");
    let trust = issuer.dir.path().join("issuer.jwks");
    let desk = Desktop::enrolled(&trust);
    let now = hwpass::os::now().unwrap();
    let request = |sub: &str| {
        desk.run(&["request", "--subject", sub], None, now)
            .ok()
            .line()
    };
    let pass = issuer
        .run(&["sign", "-"], Some(&request("alice@corp")), now)
        .ok()
        .line();
    assert_eq!(third_party_verify(&pass, &jwks)["sub"], "alice@corp");
    assert_eq!(kid_of(&pass), kid);
    desk.install(&pass, now).ok();

    // sign --batch: 4 workers sharing at most 2 sessions (the cap from the config).
    issuer.configure("issuer-key", &[], Some(2));
    let info = issuer.run(&["key-info", "--json"], None, NOW).ok().json();
    assert!(
        info["quirks"]["max_sessions"]
            .as_str()
            .unwrap()
            .starts_with("2 ("),
        "{name}: {info}"
    );
    let subjects: Vec<String> = (0..12).map(|i| format!("user{i}@corp")).collect();
    let input: String = subjects.iter().map(|s| request(s) + "\n").collect();
    let out = issuer
        .run(&["sign", "--batch", "--workers", "4"], Some(&input), now)
        .ok();
    let passes: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(passes.len(), subjects.len(), "{name}: {out:?}");
    for (pass, sub) in passes.iter().zip(&subjects) {
        assert_eq!(third_party_verify(pass, &jwks)["sub"], sub.as_str());
    }
    issuer.run(&["audit", "verify"], None, now).ok();

    // A wrong PIN: one clear sentence, nothing signed, and one attempt only (the TPM counts
    // failed authorisations: exactly one more); the right PIN still works.
    let lockouts = (kind == Kind::Tpm2Pkcs11).then(|| module.tpm_lockout_counter());
    let mut cmd = issuer.cmd_with_pin(Some("wrong-pin-123"), now);
    cmd.args(["sign", "--batch", "--workers", "3"]);
    let wrong = run(cmd, Some(&input));
    assert_eq!(wrong.code, 1, "{name}: a refused PIN is exit 1: {wrong:?}");
    assert!(
        wrong.stderr.contains("refused the PIN"),
        "{name}: {wrong:?}"
    );
    assert!(wrong.stderr.contains("lock-out"), "{name}: {wrong:?}");
    assert!(!wrong.stderr.contains("wrong-pin-123") && wrong.stdout.is_empty());
    if let Some(before) = lockouts {
        assert_eq!(
            module.tpm_lockout_counter(),
            before + 1,
            "{name}: one wrong PIN counted more than once"
        );
    }
    issuer
        .run(&["sign", "-"], Some(&request("bob@corp")), now)
        .ok();

    // In process (a child of this test binary): session and login lost and re-opened, the
    // session cap under load, the template fallback, the quirks as typed values.
    // The test's name inside this binary: the module path without the crate's name.
    let here = module_path!().split_once("::").map_or("", |(_, m)| m);
    let test = format!("{here}::conformance_{name}");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            test.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .envs(module.env.iter().map(|(k, v)| (k, v)))
        .env(CHILD_URI, module.uri("issuer-key"))
        .env("HWPASS_PIN", MODULE_PIN)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && report.contains("1 passed"),
        "{name}: the in-process part failed:\n{report}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );

    // Key rotation: a second key in the same token, trusted first, then signing.
    let next = issuer
        .run(&["keygen", "--object", "issuer-next", "--json"], None, NOW)
        .ok()
        .json();
    let next_kid = next["kid"].as_str().unwrap().to_string();
    assert_ne!(next_kid, kid);
    issuer.configure("issuer-key", &["issuer-next"], None);
    let both = issuer.jwks();
    assert!(
        both.contains(&kid) && both.contains(&next_kid),
        "{name}: {both}"
    );
    issuer.configure("issuer-next", &["issuer-key"], None);
    let rotated = issuer
        .run(&["sign", "-"], Some(&request("carol@corp")), now)
        .ok()
        .line();
    assert_eq!(kid_of(&rotated), next_kid, "{name}: signed by the new key");
    assert_eq!(third_party_verify(&rotated, &both)["sub"], "carol@corp");
    // A pass from before the rotation still verifies with the bundle that carries both.
    third_party_verify(&pass, &both);

    // The token taken away: one clear error, exit 10 (HSM), a hint, no panic.
    module.take_token_away();
    for args in [&["jwks"][..], &["sign", "-"][..]] {
        let gone = issuer.run(args, Some(&request("dave@corp")), now);
        assert_eq!(
            gone.code, 10,
            "{name}: {args:?} without the token: {gone:?}"
        );
        let errors: Vec<&str> = gone
            .stderr
            .lines()
            .filter(|l| l.starts_with("hwpass-issuer: error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{name}: {gone:?}");
        assert!(
            gone.stderr.contains("\nhint: ") && !gone.stderr.contains("panicked"),
            "{name}: {gone:?}"
        );
    }
}

/// The in-process part, in the child process.
fn in_process(kind: Kind, uri: &str) {
    let name = kind.name();
    let want = expected(kind);
    let pin = SecretString::from(MODULE_PIN.to_string());
    let uri = Pkcs11Uri::parse(uri).unwrap();
    let hsm = Hsm::open_with(
        &uri,
        &TokenOptions {
            max_sessions: Some(2),
            ..TokenOptions::default()
        },
    )
    .unwrap();
    let msg = b"conformance";
    let check = |key: &dyn hwpass::Signer, step: &str| {
        let sig = key
            .try_sign(msg)
            .unwrap_or_else(|e| panic!("{name}: {step}: {e:?}"));
        assert!(sig.normalize_s().is_none(), "{name}: high-S");
        hwpass::verify_es256(key.verifying_key(), msg, &sig.to_bytes()).unwrap();
    };

    // Four handles on four threads share at most two sessions.
    let keys: Vec<_> = (0..4).map(|_| hsm.open_key(&pin).unwrap()).collect();
    std::thread::scope(|s| {
        for key in &keys {
            s.spawn(|| {
                for _ in 0..10 {
                    check(key, "four threads");
                }
            });
        }
    });
    let (open, peak, cap) = hsm.session_counts();
    assert_eq!(cap, Some(2), "{name}");
    assert!(
        peak <= 2 && open <= 2,
        "{name}: {open} open, {peak} at most"
    );

    let quirks = hsm.quirks().unwrap();
    assert_eq!(quirks.mechanism, want.mechanism, "{name}: {quirks:?}");
    assert_eq!(quirks.ec_point, Some(want.ec_point), "{name}: {quirks:?}");
    // Every module here keeps the login per token: the second session started logged in.
    assert_eq!(quirks.login, LoginScope::Token, "{name}: {quirks:?}");

    // The login lost (a logout elsewhere in the application): every handle logs in again.
    hsm.logout().unwrap();
    for key in &keys {
        check(key, "after a logout");
    }
    let reported = hsm.quirks().unwrap().loss_reported_as;
    assert_eq!(
        reported.is_some(),
        want.generic_lost_login,
        "{name}: lost login reported as {reported:?}"
    );
    // Every session lost (the module finalized and re-initialised, as a token reset or a
    // network HSM client reconnecting does): every handle opens a new session and signs.
    hsm.reset_module().unwrap();
    for key in &keys {
        check(key, "after a module reset");
    }
    let (_, peak, _) = hsm.session_counts();
    assert!(peak <= 2, "{name}: {peak} sessions after the reset");

    // A template the module refuses: the minimum one, with the flags read back.
    let other = Pkcs11Uri::parse(&format!(
        "pkcs11:token={};object=template-test?module-path={}",
        uri.token.as_deref().unwrap(),
        uri.module_path.display()
    ))
    .unwrap();
    let key = Hsm::open(&other)
        .unwrap()
        .generate_with(&pin, &[ExtraAttribute::AlwaysSensitive])
        .unwrap_or_else(|e| panic!("{name}: keygen with a refused template: {e}"));
    check(&key, "the key from the minimum template");
    let template = key.hsm().quirks().unwrap().template;
    if want.refuses_always_sensitive {
        assert!(
            matches!(template, Some(KeyTemplate::Minimum { .. })),
            "{name}: {template:?}"
        );
    }
    let p = key.protection().unwrap();
    assert!(p.weaknesses().is_empty(), "{name}: {p:?}");
    assert_eq!(key.try_extract_private_value().unwrap(), None, "{name}");
    println!("{name}: quirks {quirks:?}; template {template:?}");
}
