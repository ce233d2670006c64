//! Public JWKs (RFC 7517/7518 §6.2), trust bundles (JWK Sets) and RFC 7638 thumbprints.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::core::error::TokenError;

/// An EC P-256 public key as a JWK (RFC 7517/7518 §6.2), always validated to be on the curve.
#[derive(Clone, PartialEq, Eq)]
pub struct Jwk {
    key: VerifyingKey,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwk({})", self.thumbprint())
    }
}

/// Wire form of a public JWK. Unknown members are refused, private ones named in the error.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwkWire {
    kty: String,
    crv: String,
    x: String,
    y: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(default, skip_serializing)]
    d: Option<serde_json::Value>,
}

impl Jwk {
    /// Wraps a verifying key.
    pub fn new(key: VerifyingKey) -> Self {
        Self { key }
    }

    /// The key for verification.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    fn coordinates(&self) -> (String, String) {
        let point = self.key.to_encoded_point(false);
        // Invariant: an uncompressed encoding of a valid point always has both coordinates.
        let x = point
            .x()
            .map(|x| URL_SAFE_NO_PAD.encode(x))
            .unwrap_or_default();
        let y = point
            .y()
            .map(|y| URL_SAFE_NO_PAD.encode(y))
            .unwrap_or_default();
        (x, y)
    }

    /// RFC 7638 thumbprint: base64url(SHA-256) of the required members in lexicographic order.
    pub fn thumbprint(&self) -> String {
        let (x, y) = self.coordinates();
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// The public JWK as JSON, minimal (`kty`, `crv`, `x`, `y`).
    pub fn to_json(&self) -> serde_json::Value {
        self.to_json_with(None)
    }

    pub(crate) fn to_json_with(&self, kid: Option<String>) -> serde_json::Value {
        let (x, y) = self.coordinates();
        let signing = kid.is_some();
        let wire = JwkWire {
            kty: "EC".into(),
            crv: "P-256".into(),
            x,
            y,
            kid,
            use_: signing.then(|| "sig".into()),
            alg: signing.then(|| "ES256".into()),
            d: None,
        };
        serde_json::to_value(wire).unwrap_or(serde_json::Value::Null)
    }

    /// Parses a public JWK, refusing private members, other curves and points off the curve.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, TokenError> {
        if let Some(obj) = value.as_object() {
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                if obj.contains_key(private) {
                    return Err(TokenError::PrivateJwk(match private {
                        "d" => "d",
                        "k" => "k",
                        _ => "RSA private members",
                    }));
                }
            }
        }
        let wire: JwkWire = serde_json::from_value(value.clone())
            .map_err(|_| TokenError::BadJwk("not a JWK object with kty, crv, x and y"))?;
        Self::from_wire(&wire)
    }

    fn from_wire(wire: &JwkWire) -> Result<Self, TokenError> {
        if wire.d.is_some() {
            return Err(TokenError::PrivateJwk("d"));
        }
        if wire.kty != "EC" {
            return Err(TokenError::BadJwk("kty must be EC"));
        }
        if wire.crv != "P-256" {
            return Err(TokenError::BadJwk("crv must be P-256"));
        }
        if let Some(alg) = &wire.alg {
            if alg != "ES256" {
                return Err(TokenError::BadJwk("alg must be ES256"));
            }
        }
        let coord = |s: &str| -> Result<[u8; 32], TokenError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| TokenError::BadJwk("coordinate is not base64url"))?;
            // RFC 7518 §6.2.1.2: coordinates are the full 32 octets, leading zeros included.
            bytes
                .try_into()
                .map_err(|_| TokenError::BadJwk("coordinate is not 32 bytes"))
        };
        let (x, y) = (coord(&wire.x)?, coord(&wire.y)?);
        let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
        let key = VerifyingKey::from_encoded_point(&point)
            .map_err(|_| TokenError::BadJwk("point is not on the curve"))?;
        Ok(Self { key })
    }
}

/// A trust bundle: a JWK Set (RFC 7517 §5) of issuer keys, plus hwpass's issuer parameters
/// (an additional JWK Set member, which other JOSE libraries ignore as §5 requires).
#[derive(Debug, Clone)]
pub struct Jwks {
    /// Issuer keys by `kid` (their thumbprint).
    pub keys: Vec<(String, Jwk)>,
    /// Issuer name and audience, when the bundle carries them.
    pub hwpass: Option<TrustParams>,
}

/// What a desktop expects of a pass besides the signature.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustParams {
    /// Expected `iss`.
    pub iss: String,
    /// Expected `aud`.
    pub aud: String,
}

impl Jwks {
    /// A bundle of the given keys, with `kid` set to their thumbprints.
    pub fn new(keys: impl IntoIterator<Item = Jwk>, hwpass: Option<TrustParams>) -> Self {
        let keys = keys.into_iter().map(|k| (k.thumbprint(), k)).collect();
        Self { keys, hwpass }
    }

    /// Serializes the bundle.
    pub fn to_json(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|(kid, k)| k.to_json_with(Some(kid.clone())))
            .collect();
        let mut obj = serde_json::Map::new();
        obj.insert("keys".into(), keys.into());
        if let Some(p) = &self.hwpass {
            obj.insert("hwpass".into(), serde_json::to_value(p).unwrap_or_default());
        }
        obj.into()
    }

    /// Parses a bundle. Every key must be an ES256 P-256 key whose `kid`, when present, equals
    /// its RFC 7638 thumbprint (a mismatched kid would let one key pose as another).
    pub fn from_json(text: &str) -> Result<Self, TokenError> {
        #[derive(Deserialize)]
        struct Wire {
            keys: Vec<serde_json::Value>,
            #[serde(default)]
            hwpass: Option<TrustParams>,
        }
        crate::core::json::check_strict(text.as_bytes()).map_err(|detail| TokenError::Json {
            part: "trust bundle",
            detail,
        })?;
        let wire: Wire = serde_json::from_str(text).map_err(|e| TokenError::Json {
            part: "trust bundle",
            detail: e.to_string(),
        })?;
        if wire.keys.is_empty() {
            return Err(TokenError::Claims("trust bundle has no keys"));
        }
        let mut keys = Vec::new();
        for value in &wire.keys {
            let jwk = Jwk::from_json(value)?;
            let kid = jwk.thumbprint();
            if let Some(given) = value.get("kid") {
                if given.as_str() != Some(kid.as_str()) {
                    return Err(TokenError::BadJwk(
                        "kid is not the key's RFC 7638 thumbprint",
                    ));
                }
            }
            keys.push((kid, jwk));
        }
        Ok(Self {
            keys,
            hwpass: wire.hwpass,
        })
    }

    pub(crate) fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|(k, _)| k == kid).map(|(_, j)| j)
    }
}
