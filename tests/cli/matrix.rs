//! The verification matrix: every way to bend a pass or a request, each through the real
//! binaries, with its exact exit code and its one-sentence message.

use p256::ecdsa::Signature;
use serde_json::{json, Value};

use hwpass::{b64url, b64url_decode, Jwk, Jwks, TrustParams, MAX_TOKEN_LEN};
use hwpass::{MemoryKey, Signer};

use crate::common::*;

/// Signs arbitrary header and payload bytes, as anyone holding `key` could.
fn raw(header: &str, payload: &str, key: &MemoryKey) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes())
    );
    let sig = key.try_sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64url(&sig.to_bytes()))
}

fn with_sig(token: &str, sig: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64url(sig))
}

fn sig_of(token: &str) -> Vec<u8> {
    b64url_decode(token.rsplit_once('.').unwrap().1).unwrap()
}

fn high_s(token: &str) -> String {
    let sig = Signature::from_slice(&sig_of(token)).unwrap();
    let (r, s) = sig.split_scalars();
    with_sig(token, &Signature::from_scalars(r, -*s).unwrap().to_bytes())
}

fn swap_payload(token: &str, payload: &Value) -> String {
    let p: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        p[0],
        b64url(payload.to_string().as_bytes()),
        p[2]
    )
}

struct Case {
    name: &'static str,
    token: String,
    code: i32,
    message: &'static str,
}

fn case(name: &'static str, token: String, code: i32, message: &'static str) -> Case {
    Case {
        name,
        token,
        code,
        message,
    }
}

fn assert_cases(cases: Vec<Case>, run_one: impl Fn(&str) -> Run) {
    let mut failures = Vec::new();
    for c in &cases {
        let out = run_one(&c.token);
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| {
                l.contains("error:") || l.contains(": invalid:") || l.contains(": expired:")
            })
            .collect();
        if out.code != c.code
            || !out.stderr.contains(c.message)
            || (c.code != 0 && errors.len() != 1)
        {
            failures.push(format!(
                "{}: want exit {} with {:?}, got {} {:?}",
                c.name, c.code, c.message, out.code, out.stderr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn pass_verification_matrix() {
    // An issuer key held by the test, so it can sign anything it likes.
    let issuer = MemoryKey::generate();
    let kid = Jwk::new(*issuer.verifying_key()).thumbprint();
    let params = TrustParams {
        iss: "test-issuer".into(),
        aud: "analytics-desktop".into(),
    };
    let trust = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        trust.path(),
        Jwks::new([Jwk::new(*issuer.verifying_key())], Some(params))
            .to_json()
            .to_string(),
    )
    .unwrap();
    let desk = Desktop::enrolled(trust.path());
    let status = desk.run(&["status", "--json"], None, NOW).ok().json();
    let jkt = status["device_key"].as_str().unwrap().to_string();

    let header = json!({"alg": "ES256", "typ": "hwpass+jwt", "kid": kid});
    let claims = json!({
        "iss": "test-issuer", "sub": "alice@corp", "aud": "analytics-desktop",
        "iat": NOW, "nbf": NOW, "exp": NOW + 86400, "jti": b64url(&[7u8; 16]),
        "cnf": {"jkt": jkt}, "hwb": {"kind": "software", "att": "none"},
    });
    let sign = |h: &Value, p: &Value| raw(&h.to_string(), &p.to_string(), &issuer);
    let hdr = |k: &str, v: Value| {
        let mut h = header.clone();
        if v.is_null() {
            h.as_object_mut().unwrap().remove(k);
        } else {
            h[k] = v;
        }
        sign(&h, &claims)
    };
    let clm = |k: &str, v: Value| {
        let mut p = claims.clone();
        if v.is_null() {
            p.as_object_mut().unwrap().remove(k);
        } else {
            p[k] = v;
        }
        sign(&header, &p)
    };
    let ended = |exp: i64| {
        let mut p = claims.clone();
        p["nbf"] = json!(NOW - 2 * 86400);
        p["exp"] = json!(exp);
        sign(&header, &p)
    };
    let good = sign(&header, &claims);
    let (h64, p64) = {
        let p: Vec<&str> = good.split('.').collect();
        (p[0].to_string(), p[1].to_string())
    };
    let mut sig = sig_of(&good);
    sig[5] ^= 0x40;
    let flipped = with_sig(&good, &sig);
    let other_issuer = MemoryKey::generate();
    let mut other_device = claims.clone();
    other_device["cnf"]["jkt"] =
        json!(Jwk::new(*MemoryKey::generate().verifying_key()).thumbprint());
    let request = desk.request("alice@corp", &[]);
    let dup = claims
        .to_string()
        .replacen('{', &format!("{{\"exp\":{},", NOW + 999_999), 1);

    let mut cases = vec![
        case(
            "alg none",
            hdr("alg", json!("none")),
            4,
            "algorithm \"none\" is not accepted; only ES256 is",
        ),
        case(
            "alg HS256",
            hdr("alg", json!("HS256")),
            4,
            "algorithm \"HS256\" is not accepted",
        ),
        case(
            "alg ES384",
            hdr("alg", json!("ES384")),
            4,
            "algorithm \"ES384\" is not accepted",
        ),
        case(
            "alg missing",
            hdr("alg", Value::Null),
            4,
            "token header is not valid: missing field `alg`",
        ),
        case(
            "a request as a pass",
            request,
            4,
            "this is a pass request, not an access pass",
        ),
        case(
            "unknown kid",
            hdr("kid", json!("x")),
            4,
            "signed by key \"x\", which is not in the trust bundle",
        ),
        case(
            "embedded jwk",
            hdr("jwk", Jwk::new(*issuer.verifying_key()).to_json()),
            4,
            "pass header embeds a key",
        ),
        case(
            "unknown header member",
            hdr("x5u", json!("https://evil")),
            4,
            "unknown field `x5u`",
        ),
        case("signature flipped", flipped, 4, "error: bad signature"),
        case(
            "signature truncated",
            with_sig(&good, &sig_of(&good)[..63]),
            4,
            "signature is 63 bytes; ES256 signatures are 64",
        ),
        case(
            "signature empty",
            with_sig(&good, &[]),
            4,
            "signature is 0 bytes",
        ),
        case(
            "signature all zero",
            with_sig(&good, &[0; 64]),
            4,
            "error: bad signature",
        ),
        case(
            "signature too long",
            with_sig(&good, &[sig_of(&good), vec![1]].concat()),
            4,
            "signature is 65 bytes",
        ),
        case(
            "high-S twin",
            high_s(&good),
            4,
            "signature is not in low-S form",
        ),
        case(
            "exp changed",
            swap_payload(&good, &{
                let mut p = claims.clone();
                p["exp"] = json!(NOW + 9_999_999);
                p
            }),
            4,
            "error: bad signature",
        ),
        case(
            "sub changed",
            swap_payload(&good, &{
                let mut p = claims.clone();
                p["sub"] = json!("root@corp");
                p
            }),
            4,
            "error: bad signature",
        ),
        case(
            "cnf changed",
            swap_payload(&good, &other_device),
            4,
            "error: bad signature",
        ),
        case(
            "wrong aud",
            clm("aud", json!("other-app")),
            4,
            "pass is for audience \"other-app\", not \"analytics-desktop\"",
        ),
        case(
            "wrong iss",
            clm("iss", json!("evil")),
            4,
            "pass was issued by \"evil\", not \"test-issuer\"",
        ),
        case("expired", ended(NOW - 3600), 5, "pass expired at"),
        case(
            "exp just outside leeway",
            ended(NOW - 60),
            5,
            "pass expired at",
        ),
        case(
            "not yet valid",
            clm("nbf", json!(NOW + 3600)),
            5,
            "token is not valid before",
        ),
        case(
            "nbf just outside leeway",
            clm("nbf", json!(NOW + 61)),
            5,
            "token is not valid before",
        ),
        case(
            "two segments",
            format!("{h64}.{p64}"),
            4,
            "token has 2 segments; a compact JWS has exactly 3",
        ),
        case(
            "four segments",
            format!("{good}.{p64}"),
            4,
            "token has 4 segments",
        ),
        case(
            "padded base64url",
            format!("{h64}=.{p64}.x"),
            4,
            "token header is not valid unpadded base64url",
        ),
        case(
            "standard base64",
            format!("{h64}.{p64}.{}", "+/+/".repeat(21) + "AA"),
            4,
            "token signature is not valid unpadded base64url",
        ),
        case(
            "header not JSON",
            raw("not json", &claims.to_string(), &issuer),
            4,
            "token header is not valid",
        ),
        case(
            "header not an object",
            raw("[1,2]", &claims.to_string(), &issuer),
            4,
            "token header is not valid",
        ),
        case(
            "payload not JSON",
            raw(&header.to_string(), "not json", &issuer),
            4,
            "token payload is not valid",
        ),
        case(
            "payload not an object",
            raw(&header.to_string(), "[1]", &issuer),
            4,
            "token payload is not valid: not a JSON object",
        ),
        case(
            "duplicate claim",
            raw(&header.to_string(), &dup, &issuer),
            4,
            "duplicate key \"exp\"",
        ),
        case(
            "unknown claim",
            clm("admin", json!(true)),
            4,
            "unknown field `admin`",
        ),
        case(
            "oversized",
            "a".repeat(MAX_TOKEN_LEN + 1),
            4,
            "more than the 8192-byte limit",
        ),
        case(
            "from another issuer",
            raw(&header.to_string(), &claims.to_string(), &other_issuer),
            4,
            "error: bad signature",
        ),
        case(
            "bound to another device",
            sign(&header, &other_device),
            6,
            "this pass is bound to another device",
        ),
        case("empty", String::new(), 4, "token is empty"),
    ];
    for claim in [
        "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "cnf", "hwb",
    ] {
        cases.push(Case {
            name: "missing claim",
            token: clm(claim, Value::Null),
            code: 4,
            message: "missing field",
        });
    }
    // Inside the 60 s leeway both ways: accepted (these install, so they go last).
    cases.push(case(
        "exp just inside leeway",
        ended(NOW - 59),
        0,
        "installed",
    ));
    cases.push(case(
        "nbf just inside leeway",
        clm("nbf", json!(NOW + 60)),
        0,
        "installed",
    ));
    assert_cases(cases, |token| {
        let out = desk.install(token, NOW);
        // Successful installs report on stdout; fold it in so one needle works for both.
        Run {
            stderr: format!("{}{}", out.stderr, out.stdout),
            ..out
        }
    });
}

#[test]
fn request_verification_matrix() {
    let issuer = Issuer::new();
    issuer.setup();
    let device = MemoryKey::generate();
    let jwk = Jwk::new(*device.verifying_key()).to_json();
    let header = json!({"alg": "ES256", "typ": "hwpass-req+jwt", "jwk": jwk});
    let claims = json!({"sub": "alice@corp", "iat": NOW, "kind": "software"});
    let sign = |h: &Value, p: &Value| raw(&h.to_string(), &p.to_string(), &device);
    let hdr = |k: &str, v: Value| {
        let mut h = header.clone();
        if v.is_null() {
            h.as_object_mut().unwrap().remove(k);
        } else {
            h[k] = v;
        }
        sign(&h, &claims)
    };
    let good = sign(&header, &claims);
    let mut sig = sig_of(&good);
    sig[9] ^= 1;
    let mut private = jwk.clone();
    private["d"] = json!(b64url(&device.secret_bytes()[..]));
    let other = Jwk::new(*MemoryKey::generate().verifying_key()).to_json();
    let pass_like = raw(
        &json!({"alg": "ES256", "typ": "hwpass+jwt", "kid": "k"}).to_string(),
        &claims.to_string(),
        &device,
    );
    let dup = claims
        .to_string()
        .replacen('{', "{\"sub\":\"root@corp\",", 1);
    let cases = vec![
        case(
            "alg none",
            hdr("alg", json!("none")),
            4,
            "algorithm \"none\" is not accepted",
        ),
        case(
            "alg HS256",
            hdr("alg", json!("HS256")),
            4,
            "algorithm \"HS256\" is not accepted",
        ),
        case(
            "a pass as a request",
            pass_like,
            4,
            "this is an access pass, not a pass request",
        ),
        case(
            "jwk not the signing key",
            hdr("jwk", other),
            4,
            "request refused: bad signature",
        ),
        case(
            "jwk with private key",
            hdr("jwk", private),
            4,
            "key carries private key material (d); only public keys may be sent",
        ),
        case(
            "jwk missing",
            hdr("jwk", Value::Null),
            4,
            "token header lacks jwk",
        ),
        case(
            "jwk on another curve",
            hdr("jwk", {
                let mut j = jwk.clone();
                j["crv"] = json!("P-384");
                j
            }),
            4,
            "crv must be P-256",
        ),
        case(
            "signature flipped",
            with_sig(&good, &sig),
            4,
            "request refused: bad signature",
        ),
        case(
            "high-S twin",
            high_s(&good),
            4,
            "signature is not in low-S form",
        ),
        case(
            "from the future",
            sign(
                &header,
                &json!({"sub": "a", "iat": NOW + 3600, "kind": "software"}),
            ),
            4,
            "token is not valid before",
        ),
        case(
            "too old",
            sign(
                &header,
                &json!({"sub": "a", "iat": NOW - 8 * 86400, "kind": "software"}),
            ),
            9,
            "older than the 7d this issuer accepts",
        ),
        case(
            "duplicate claim",
            raw(&header.to_string(), &dup, &device),
            4,
            "duplicate key \"sub\"",
        ),
        case(
            "unknown claim",
            sign(
                &header,
                &json!({"sub": "a", "iat": NOW, "kind": "software", "admin": true}),
            ),
            4,
            "unknown field `admin`",
        ),
        case(
            "bad kind",
            sign(&header, &json!({"sub": "a", "iat": NOW, "kind": "hsm"})),
            4,
            "unknown variant `hsm`",
        ),
        case(
            "two segments",
            good.rsplit_once('.').unwrap().0.to_string(),
            4,
            "token has 2 segments",
        ),
        case(
            "oversized",
            "a".repeat(MAX_TOKEN_LEN + 1),
            4,
            "more than the 8192-byte limit",
        ),
    ];
    assert_cases(cases, |token| issuer.sign(token, NOW, &[]));
    assert!(
        issuer.audit_lines().is_empty(),
        "no refused request was audited as issued"
    );
    // The untouched request is accepted.
    issuer.sign(&good, NOW, &[]).ok();
}
