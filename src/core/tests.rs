use p256::ecdsa::Signature;
use serde_json::json;

use crate::core::b64::*;
use crate::core::claims::*;
use crate::core::error::*;
use crate::core::jwk::*;
use crate::core::jws::*;
use crate::core::signer::*;
use sha2::{Digest as _, Sha256};

const NOW: i64 = 1_800_000_000;

struct Fixture {
    issuer: MemoryKey,
    device: MemoryKey,
    trust: Jwks,
}

fn fixture() -> Fixture {
    let issuer = MemoryKey::generate();
    let trust = Jwks::new([Jwk::new(*issuer.verifying_key())], None);
    Fixture {
        issuer,
        device: MemoryKey::generate(),
        trust,
    }
}

fn claims(f: &Fixture) -> PassClaims {
    PassClaims {
        iss: "corp".into(),
        sub: "alice@corp".into(),
        aud: "desktop".into(),
        iat: NOW,
        nbf: NOW,
        exp: NOW + 3600,
        jti: random_jti().unwrap(),
        cnf: Confirmation {
            jkt: Jwk::new(*f.device.verifying_key()).thumbprint(),
        },
        hwb: HardwareBinding {
            kind: BindingKind::Software,
            att: Attestation::None,
        },
        dev: Some("laptop".into()),
        stm: None,
    }
}

fn expect(f: &Fixture) -> PassExpectations<'_> {
    PassExpectations {
        trust: &f.trust,
        iss: "corp",
        aud: "desktop",
    }
}

/// Signs arbitrary header and payload bytes with `key`, the way an attacker holding it could.
fn raw_token(header: &[u8], payload: &[u8], key: &MemoryKey) -> String {
    let input = format!("{}.{}", b64url(header), b64url(payload));
    let sig = key.try_sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64url(&sig.to_bytes()))
}

fn pass_header(f: &Fixture) -> serde_json::Value {
    json!({"alg":"ES256","typ":PASS_TYP,"kid":Jwk::new(*f.issuer.verifying_key()).thumbprint()})
}

fn pass_with(f: &Fixture, header: serde_json::Value, payload: serde_json::Value) -> String {
    raw_token(
        header.to_string().as_bytes(),
        payload.to_string().as_bytes(),
        &f.issuer,
    )
}

#[test]
fn pass_round_trip() {
    let f = fixture();
    let c = claims(&f);
    let token = sign_pass(&c, &f.issuer).unwrap();
    assert!(!token.contains(char::is_whitespace));
    assert_eq!(verify_pass(&token, &expect(&f), NOW + 10).unwrap(), c);
    let d = decode(&token).unwrap();
    assert_eq!(d.typ(), PASS_TYP);
    assert_eq!(d.kid(), Some(f.trust.keys[0].0.as_str()));
}

#[test]
fn request_round_trip() {
    let f = fixture();
    let c = RequestClaims {
        sub: "alice@corp".into(),
        iat: NOW,
        kind: BindingKind::Tpm,
        ttl: Some(86400),
        dev: None,
        att: None,
        stm: None,
    };
    let token = sign_request(&c, &f.device).unwrap();
    let v = verify_request(&token, NOW).unwrap();
    assert_eq!(v.claims, c);
    assert_eq!(v.jwk.verifying_key(), f.device.verifying_key());
}

#[test]
fn rfc7638_thumbprint_vector() {
    // RFC 7638 §3.1 gives an RSA example; for EC we check against the canonical form
    // computed independently here, plus stability under member order and extra members.
    let f = fixture();
    let jwk = Jwk::new(*f.device.verifying_key());
    let v = jwk.to_json();
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        v["x"].as_str().unwrap(),
        v["y"].as_str().unwrap()
    );
    assert_eq!(
        jwk.thumbprint(),
        b64url(&Sha256::digest(canonical.as_bytes()))
    );
    let reordered = json!({"y": v["y"], "x": v["x"], "kty": "EC", "crv": "P-256", "use": "sig"});
    assert_eq!(
        Jwk::from_json(&reordered).unwrap().thumbprint(),
        jwk.thumbprint()
    );
}

#[test]
fn known_ec_key_thumbprint() {
    // Key from RFC 7515 Appendix A.3 (ES256); its RFC 7638 thumbprint computed by hand over
    // the canonical JSON {"crv","kty","x","y"}.
    let jwk = Jwk::from_json(&json!({
        "kty":"EC","crv":"P-256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
    }))
    .unwrap();
    let canonical = r#"{"crv":"P-256","kty":"EC","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    assert_eq!(jwk.thumbprint(), b64url(&Sha256::digest(canonical)));
    assert_eq!(
        jwk.thumbprint(),
        "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U"
    );
}

#[test]
fn jwks_round_trip_and_kid_must_match() {
    let f = fixture();
    let params = TrustParams {
        iss: "corp".into(),
        aud: "desktop".into(),
    };
    let jwks = Jwks::new([Jwk::new(*f.issuer.verifying_key())], Some(params.clone()));
    let text = jwks.to_json().to_string();
    let back = Jwks::from_json(&text).unwrap();
    assert_eq!(back.keys, jwks.keys);
    assert_eq!(back.hwpass, Some(params));
    let mut v = jwks.to_json();
    v["keys"][0]["kid"] = json!("someone-else");
    assert!(matches!(
        Jwks::from_json(&v.to_string()),
        Err(TokenError::BadJwk(_))
    ));
    assert!(Jwks::from_json(r#"{"keys":[]}"#).is_err());
    assert!(Jwks::from_json("not json").is_err());
}

#[test]
fn rejects_wrong_alg() {
    let f = fixture();
    for alg in ["none", "HS256", "ES384", "es256", ""] {
        let mut h = pass_header(&f);
        h["alg"] = json!(alg);
        let t = pass_with(&f, h, serde_json::to_value(claims(&f)).unwrap());
        assert_eq!(
            verify_pass(&t, &expect(&f), NOW),
            Err(TokenError::Alg(alg.into())),
            "{alg}"
        );
    }
    let mut h = pass_header(&f);
    h.as_object_mut().unwrap().remove("alg");
    let t = pass_with(&f, h, serde_json::to_value(claims(&f)).unwrap());
    assert!(matches!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::Json { part: "header", .. })
    ));
}

#[test]
fn rejects_typ_confusion() {
    let f = fixture();
    let req = sign_request(
        &RequestClaims {
            sub: "a".into(),
            iat: NOW,
            kind: BindingKind::Software,
            ttl: None,
            dev: None,
            att: None,
            stm: None,
        },
        &f.device,
    )
    .unwrap();
    assert!(matches!(
        verify_pass(&req, &expect(&f), NOW),
        Err(TokenError::Typ { .. })
    ));
    let pass = sign_pass(&claims(&f), &f.issuer).unwrap();
    assert!(matches!(
        verify_request(&pass, NOW),
        Err(TokenError::Typ { .. })
    ));
}

#[test]
fn rejects_unknown_kid_and_embedded_jwk() {
    let f = fixture();
    let mut h = pass_header(&f);
    h["kid"] = json!("not-a-known-key");
    let t = pass_with(&f, h, serde_json::to_value(claims(&f)).unwrap());
    assert!(matches!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::UnknownKid(_))
    ));

    let mut h = pass_header(&f);
    h["jwk"] = Jwk::new(*f.issuer.verifying_key()).to_json();
    let t = pass_with(&f, h, serde_json::to_value(claims(&f)).unwrap());
    assert_eq!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::EmbeddedJwk)
    );

    let mut h = pass_header(&f);
    h.as_object_mut().unwrap().remove("kid");
    let t = pass_with(&f, h, serde_json::to_value(claims(&f)).unwrap());
    assert_eq!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::MissingHeader("kid"))
    );
}

#[test]
fn rejects_pass_from_another_issuer() {
    let f = fixture();
    let other = fixture();
    let t = sign_pass(&claims(&f), &other.issuer).unwrap();
    assert!(matches!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::UnknownKid(_))
    ));
    // Same kid forged onto another key's signature.
    let t = pass_with(
        &other,
        pass_header(&f),
        serde_json::to_value(claims(&f)).unwrap(),
    );
    assert_eq!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn rejects_bad_signatures() {
    let f = fixture();
    let t = sign_pass(&claims(&f), &f.issuer).unwrap();
    let (input, sig) = t.rsplit_once('.').unwrap();
    let sig_bytes = b64url_decode(sig).unwrap();
    let mut flipped = sig_bytes.clone();
    flipped[10] ^= 1;
    let cases: Vec<(Vec<u8>, TokenError)> = vec![
        (flipped, TokenError::BadSignature),
        (sig_bytes[..63].to_vec(), TokenError::SignatureLength(63)),
        (vec![], TokenError::SignatureLength(0)),
        (vec![0; 64], TokenError::BadSignature),
        (
            [sig_bytes.clone(), vec![0]].concat(),
            TokenError::SignatureLength(65),
        ),
    ];
    for (bytes, want) in cases {
        let t = format!("{input}.{}", b64url(&bytes));
        assert_eq!(verify_pass(&t, &expect(&f), NOW), Err(want));
    }
}

#[test]
fn rejects_high_s_twin() {
    let f = fixture();
    let t = sign_pass(&claims(&f), &f.issuer).unwrap();
    let (input, sig) = t.rsplit_once('.').unwrap();
    let sig = Signature::from_slice(&b64url_decode(sig).unwrap()).unwrap();
    let (r, s) = sig.split_scalars();
    let high = Signature::from_scalars(r, -*s).unwrap();
    // The twin is a mathematically valid ECDSA signature…
    use p256::ecdsa::signature::Verifier as _;
    assert!(f
        .issuer
        .verifying_key()
        .verify(input.as_bytes(), &high)
        .is_ok());
    // …which hwpass refuses, because its signers only emit low-S.
    let t = format!("{input}.{}", b64url(&high.to_bytes()));
    assert_eq!(verify_pass(&t, &expect(&f), NOW), Err(TokenError::HighS));
}

#[test]
fn rejects_claims_changed_after_signing() {
    let f = fixture();
    let t = sign_pass(&claims(&f), &f.issuer).unwrap();
    let parts: Vec<&str> = t.split('.').collect();
    for (k, v) in [
        ("exp", json!(NOW + 999_999)),
        ("sub", json!("mallory")),
        ("cnf", json!({"jkt": "x"})),
    ] {
        let mut p = decode(&t).unwrap().payload().unwrap();
        p[k] = v;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64url(p.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(
            verify_pass(&forged, &expect(&f), NOW),
            Err(TokenError::BadSignature),
            "{k}"
        );
    }
}

#[test]
fn rejects_missing_and_unknown_claims() {
    let f = fixture();
    for k in [
        "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "cnf", "hwb",
    ] {
        let mut p = serde_json::to_value(claims(&f)).unwrap();
        p.as_object_mut().unwrap().remove(k);
        let t = pass_with(&f, pass_header(&f), p);
        assert!(
            matches!(
                verify_pass(&t, &expect(&f), NOW),
                Err(TokenError::Json { part: "claims", .. })
            ),
            "{k}"
        );
    }
    let mut p = serde_json::to_value(claims(&f)).unwrap();
    p["admin"] = json!(true);
    let t = pass_with(&f, pass_header(&f), p);
    assert!(matches!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::Json { .. })
    ));
}

#[test]
fn rejects_duplicate_keys() {
    let f = fixture();
    let p = serde_json::to_string(&claims(&f)).unwrap();
    let dup = p.replacen("{", &format!("{{\"exp\":{},", NOW + 999_999), 1);
    let t = raw_token(
        pass_header(&f).to_string().as_bytes(),
        dup.as_bytes(),
        &f.issuer,
    );
    let err = verify_pass(&t, &expect(&f), NOW).unwrap_err();
    assert!(
        matches!(&err, TokenError::Json { detail, .. } if detail.contains("duplicate")),
        "{err}"
    );
    let h = pass_header(&f)
        .to_string()
        .replacen("{", "{\"alg\":\"none\",", 1);
    let t = raw_token(h.as_bytes(), p.as_bytes(), &f.issuer);
    assert!(matches!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::Json { part: "header", .. })
    ));
}

#[test]
fn rejects_wrong_audience_and_issuer() {
    let f = fixture();
    let mut c = claims(&f);
    c.aud = "other-app".into();
    let t = sign_pass(&c, &f.issuer).unwrap();
    assert!(matches!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::Audience { .. })
    ));
    let mut c = claims(&f);
    c.iss = "evil".into();
    let t = sign_pass(&c, &f.issuer).unwrap();
    assert!(matches!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::Issuer { .. })
    ));
}

#[test]
fn validity_window_and_leeway() {
    let f = fixture();
    let c = claims(&f);
    let t = sign_pass(&c, &f.issuer).unwrap();
    let e = expect(&f);
    assert!(verify_pass(&t, &e, c.exp + LEEWAY_SECS - 1).is_ok());
    assert_eq!(
        verify_pass(&t, &e, c.exp + LEEWAY_SECS),
        Err(TokenError::Expired {
            now: c.exp + LEEWAY_SECS,
            exp: c.exp
        })
    );
    assert!(verify_pass(&t, &e, c.nbf - LEEWAY_SECS).is_ok());
    assert_eq!(
        verify_pass(&t, &e, c.nbf - LEEWAY_SECS - 1),
        Err(TokenError::NotYetValid {
            now: c.nbf - LEEWAY_SECS - 1,
            nbf: c.nbf
        })
    );
}

#[test]
fn rejects_malformed_structure() {
    let f = fixture();
    let t = sign_pass(&claims(&f), &f.issuer).unwrap();
    let parts: Vec<&str> = t.split('.').collect();
    let e = expect(&f);
    assert_eq!(verify_pass("", &e, NOW), Err(TokenError::Empty));
    assert_eq!(
        verify_pass(&format!("{}.{}", parts[0], parts[1]), &e, NOW),
        Err(TokenError::Segments(2))
    );
    assert_eq!(
        verify_pass(&format!("{t}.x"), &e, NOW),
        Err(TokenError::Segments(4))
    );
    assert_eq!(
        verify_pass(&format!("{t}="), &e, NOW),
        Err(TokenError::Base64("signature"))
    );
    assert_eq!(
        verify_pass(&format!("{t}\n"), &e, NOW),
        Err(TokenError::Base64("signature"))
    );
    assert_eq!(
        verify_pass(&format!("{}=.{}.{}", parts[0], parts[1], parts[2]), &e, NOW),
        Err(TokenError::Base64("header"))
    );
    let std_b64 = t.replace('-', "+").replace('_', "/");
    if std_b64 != t {
        assert!(matches!(
            verify_pass(&std_b64, &e, NOW),
            Err(TokenError::Base64(_))
        ));
    }
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        verify_pass(&long, &e, NOW),
        Err(TokenError::TooLong {
            len: MAX_TOKEN_LEN + 1,
            max: MAX_TOKEN_LEN
        })
    );
    for (h, p) in [("not json", "{}"), ("[1,2]", "{}")] {
        let t = raw_token(h.as_bytes(), p.as_bytes(), &f.issuer);
        assert!(matches!(
            verify_pass(&t, &e, NOW),
            Err(TokenError::Json { part: "header", .. })
        ));
    }
    for p in ["not json", "[1]", "\"str\""] {
        let t = raw_token(
            pass_header(&f).to_string().as_bytes(),
            p.as_bytes(),
            &f.issuer,
        );
        assert!(
            matches!(
                verify_pass(&t, &e, NOW),
                Err(TokenError::Json {
                    part: "payload",
                    ..
                })
            ),
            "{p}"
        );
    }
}

#[test]
fn rejects_non_canonical_base64_trailing_bits() {
    let f = fixture();
    let t = sign_pass(&claims(&f), &f.issuer).unwrap();
    let (input, sig) = t.rsplit_once('.').unwrap();
    // 64 bytes encode to 86 chars; the last char carries 4 unused bits that must be zero.
    let last = sig.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    let tweaked = alphabet.chars().nth(idx | 1).unwrap();
    let t = format!("{input}.{}{tweaked}", &sig[..sig.len() - 1]);
    assert_eq!(
        verify_pass(&t, &expect(&f), NOW),
        Err(TokenError::Base64("signature"))
    );
}

#[test]
fn request_rejections() {
    let f = fixture();
    let rc = RequestClaims {
        sub: "alice".into(),
        iat: NOW,
        kind: BindingKind::Software,
        ttl: None,
        dev: None,
        att: None,
        stm: None,
    };
    let payload = serde_json::to_vec(&rc).unwrap();
    let jwk = Jwk::new(*f.device.verifying_key()).to_json();
    let header =
        |jwk: serde_json::Value| json!({"alg":"ES256","typ":REQUEST_TYP,"jwk":jwk}).to_string();

    // jwk that does not match the signing key.
    let other = Jwk::new(*f.issuer.verifying_key()).to_json();
    let t = raw_token(header(other).as_bytes(), &payload, &f.device);
    assert_eq!(
        verify_request(&t, NOW).unwrap_err(),
        TokenError::BadSignature
    );

    // jwk with private members.
    let mut private = jwk.clone();
    private["d"] = json!(b64url(&f.device.secret_bytes()[..]));
    let t = raw_token(header(private).as_bytes(), &payload, &f.device);
    assert_eq!(
        verify_request(&t, NOW).unwrap_err(),
        TokenError::PrivateJwk("d")
    );

    // Wrong curve, off-curve point, missing jwk.
    let mut p384 = jwk.clone();
    p384["crv"] = json!("P-384");
    let t = raw_token(header(p384).as_bytes(), &payload, &f.device);
    assert_eq!(
        verify_request(&t, NOW).unwrap_err(),
        TokenError::BadJwk("crv must be P-256")
    );
    let mut off = jwk.clone();
    off["y"] = off["x"].clone();
    let t = raw_token(header(off).as_bytes(), &payload, &f.device);
    assert!(matches!(
        verify_request(&t, NOW).unwrap_err(),
        TokenError::BadJwk(_)
    ));
    let h = json!({"alg":"ES256","typ":REQUEST_TYP}).to_string();
    let t = raw_token(h.as_bytes(), &payload, &f.device);
    assert_eq!(
        verify_request(&t, NOW).unwrap_err(),
        TokenError::MissingHeader("jwk")
    );

    // From the future, bad ttl, empty subject.
    let t = sign_request(
        &RequestClaims {
            iat: NOW + 3600,
            ..rc.clone()
        },
        &f.device,
    )
    .unwrap();
    assert!(matches!(
        verify_request(&t, NOW),
        Err(TokenError::NotYetValid { .. })
    ));
    let t = sign_request(
        &RequestClaims {
            ttl: Some(0),
            ..rc.clone()
        },
        &f.device,
    )
    .unwrap();
    assert!(matches!(
        verify_request(&t, NOW),
        Err(TokenError::Claims(_))
    ));
    let t = sign_request(
        &RequestClaims {
            sub: " ".into(),
            ..rc.clone()
        },
        &f.device,
    )
    .unwrap();
    assert!(matches!(
        verify_request(&t, NOW),
        Err(TokenError::Claims(_))
    ));
}

#[test]
fn attestation_names_match_the_wire_form() {
    for a in [
        Attestation::EkCert,
        Attestation::EkAllowlist,
        Attestation::None,
    ] {
        assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
    }
}

/// A request signed by `key` with these claims and this header `jwk` member (raw JSON text),
/// as an attacker holding the key could make it.
fn raw_request(key: &MemoryKey, jwk_json: &str, payload: &str) -> String {
    let header = format!(r#"{{"alg":"ES256","typ":"{REQUEST_TYP}","jwk":{jwk_json}}}"#);
    raw_token(header.as_bytes(), payload.as_bytes(), key)
}

#[test]
fn hostile_text_and_time_stamps_are_refused_not_signed() {
    let f = fixture();
    let jwk = Jwk::new(*f.device.verifying_key()).to_json().to_string();
    let req = |payload: String| verify_request(&raw_request(&f.device, &jwk, &payload), NOW);
    let ok = format!(r#"{{"sub":"alice","iat":{NOW},"kind":"tpm"}}"#);
    assert!(req(ok).is_ok());

    // Time stamps outside 1970…9999: before any arithmetic on them.
    for iat in [i64::MIN, -1, 253_402_300_800, i64::MAX] {
        let r = req(format!(r#"{{"sub":"alice","iat":{iat},"kind":"tpm"}}"#));
        assert_eq!(
            r.unwrap_err(),
            TokenError::TimeRange {
                claim: "iat",
                value: iat
            }
        );
    }
    let r = req(format!(
        r#"{{"sub":"alice","iat":{NOW},"kind":"tpm","ttl":{}}}"#,
        i64::MAX
    ));
    assert!(matches!(r, Err(TokenError::Claims(_))), "{r:?}");

    // Control, bidi and invisible characters, and lengths, in sub and dev.
    for (sub, dev, field, what) in [
        ("al\\u001b[31mice", "pc", "sub", "a control character"),
        ("alice\\r\\nforged line", "pc", "sub", "a control character"),
        ("ali\\u0000ce", "pc", "sub", "a control character"),
        (
            "alice",
            "pc\\u202egnp.exe",
            "dev",
            "a bidirectional control",
        ),
        ("ali\\u200bce", "pc", "sub", "an invisible character"),
    ] {
        let r = req(format!(
            r#"{{"sub":"{sub}","iat":{NOW},"kind":"tpm","dev":"{dev}"}}"#
        ));
        match r {
            Err(TokenError::Text {
                field: f,
                problem: TextProblem::Forbidden { what: w, .. },
            }) => assert_eq!((f, w), (field, what), "{sub} {dev}"),
            other => panic!("{sub} {dev}: {other:?}"),
        }
    }
    let long = "x".repeat(MAX_SUB_CHARS + 1);
    let r = req(format!(r#"{{"sub":"{long}","iat":{NOW},"kind":"tpm"}}"#));
    assert!(
        matches!(
            r,
            Err(TokenError::Text {
                field: "sub",
                problem: TextProblem::TooLong { .. }
            })
        ),
        "{r:?}"
    );
    let dev = "é".repeat(MAX_DEV_CHARS);
    assert!(req(format!(
        r#"{{"sub":"alice","iat":{NOW},"kind":"tpm","dev":"{dev}"}}"#
    ))
    .is_ok());

    // A pass with an out-of-range expiry is refused, not formatted.
    let mut c = claims(&f);
    c.exp = 253_402_300_800;
    let pass = sign_pass(&c, &f.issuer).unwrap();
    assert_eq!(
        verify_pass(&pass, &expect(&f), NOW),
        Err(TokenError::TimeRange {
            claim: "exp",
            value: 253_402_300_800
        })
    );
}

#[test]
fn duplicate_keys_and_nulls_are_refused_at_every_level() {
    let f = fixture();
    let jwk = Jwk::new(*f.device.verifying_key()).to_json();
    let (x, y) = (jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap());
    let payload = format!(r#"{{"sub":"alice","iat":{NOW},"kind":"tpm"}}"#);
    let dup_jwk = format!(r#"{{"kty":"EC","crv":"P-256","x":"{x}","x":"{x}","y":"{y}"}}"#);
    let r = verify_request(&raw_request(&f.device, &dup_jwk, &payload), NOW);
    assert!(
        matches!(r, Err(TokenError::Json { part: "header", .. })),
        "{r:?}"
    );
    let r = verify_request(&raw_request(&f.device, "null", &payload), NOW);
    assert!(
        matches!(r, Err(TokenError::Json { part: "header", .. })),
        "{r:?}"
    );

    let kid_null = json!({"alg":"ES256","typ":PASS_TYP,"kid":null}).to_string();
    let r = verify_pass(
        &raw_token(kid_null.as_bytes(), b"{}", &f.issuer),
        &expect(&f),
        NOW,
    );
    assert!(
        matches!(r, Err(TokenError::Json { part: "header", .. })),
        "{r:?}"
    );

    let mut bundle = f.trust.to_json();
    let key = bundle["keys"][0].clone();
    bundle["keys"] = json!([key]);
    let text = bundle
        .to_string()
        .replacen("\"kty\":\"EC\"", "\"kty\":\"EC\",\"kty\":\"EC\"", 1);
    assert!(matches!(
        Jwks::from_json(&text),
        Err(TokenError::Json {
            part: "trust bundle",
            ..
        })
    ));
}
