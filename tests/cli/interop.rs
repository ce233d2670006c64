//! An independent JOSE implementation (the `jsonwebtoken` crate) verifies hwpass passes with
//! nothing but the published JWKS.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

use crate::common::*;

#[test]
fn jsonwebtoken_verifies_a_pass_with_the_jwks() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    // Sign at the real current time: jsonwebtoken reads the system clock.
    let now = hwpass::os::now().unwrap();
    let req = desk
        .run(&["request", "--subject", "alice@corp"], None, now)
        .ok()
        .line();
    let pass = issuer.sign(&req, now, &[]).ok().line();

    let set: JwkSet = serde_json::from_str(&std::fs::read_to_string(&trust).unwrap()).unwrap();
    let header = decode_header(&pass).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("hwpass+jwt"));
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid is in the JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["analytics-desktop"]);
    validation.set_issuer(&["test-issuer"]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    let data = decode::<serde_json::Value>(&pass, &key, &validation).unwrap();
    assert_eq!(data.claims["sub"], "alice@corp");

    // And it refuses the same pass with one claim changed.
    let forged = with_payload(&pass, |p| p["sub"] = "root@corp".into());
    assert!(decode::<serde_json::Value>(&forged, &key, &validation).is_err());
}
