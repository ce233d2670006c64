//! Why a token or document was refused: one clear sentence each, signature failures opaque.

use crate::core::claims::TextProblem;
use crate::core::paste::DocKind;
use crate::core::time::format_time;

/// Why a token was refused. Each variant is one clear sentence; signature failures stay opaque.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Input longer than the limit for its kind ([`crate::MAX_TOKEN_LEN`] for a pass).
    #[error("token is {len} bytes, more than the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    /// Empty input.
    #[error("token is empty")]
    Empty,
    /// Not three dot-separated segments.
    #[error("token has {0} segments; a compact JWS has exactly 3")]
    Segments(usize),
    /// A segment is not canonical unpadded base64url.
    #[error("token {0} is not valid unpadded base64url")]
    Base64(&'static str),
    /// A segment is not the JSON object we expect.
    #[error("token {part} is not valid: {detail}")]
    Json { part: &'static str, detail: String },
    /// `alg` other than ES256.
    #[error("algorithm {0:?} is not accepted; only ES256 is")]
    Alg(String),
    /// `typ` other than the one expected here.
    #[error("token type {found:?} where {expected:?} was expected")]
    Typ {
        found: String,
        expected: &'static str,
    },
    /// A pass carrying a `jwk` header: keys are taken only from the trust bundle.
    #[error("pass header embeds a key; passes are verified only against the trust bundle")]
    EmbeddedJwk,
    /// A pass header without `kid`, or a request header without `jwk`.
    #[error("token header lacks {0}")]
    MissingHeader(&'static str),
    /// `kid` not in the trust bundle.
    #[error("pass was signed by key {0:?}, which is not in the trust bundle")]
    UnknownKid(String),
    /// A JWK that is not an uncompressed P-256 public key.
    #[error("key is not a valid P-256 public key: {0}")]
    BadJwk(&'static str),
    /// A JWK with private members.
    #[error("key carries private key material ({0}); only public keys may be sent")]
    PrivateJwk(&'static str),
    /// Signature not 64 bytes.
    #[error("signature is {0} bytes; ES256 signatures are 64")]
    SignatureLength(usize),
    /// High-S encoding of a signature.
    #[error("signature is not in low-S form")]
    HighS,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is past.
    #[error("pass expired at {} (now {})", format_time(*exp), format_time(*now))]
    Expired { now: i64, exp: i64 },
    /// `nbf` (or a request's `iat`) is in the future.
    #[error("token is not valid before {} (now {})", format_time(*nbf), format_time(*now))]
    NotYetValid { now: i64, nbf: i64 },
    /// `aud` differs.
    #[error("pass is for audience {found:?}, not {expected:?}")]
    Audience { found: String, expected: String },
    /// `iss` differs.
    #[error("pass was issued by {found:?}, not {expected:?}")]
    Issuer { found: String, expected: String },
    /// `sub` or `dev` is unusable as text.
    #[error("{field} {problem}")]
    Text {
        /// `sub` or `dev`.
        field: &'static str,
        /// What is wrong.
        problem: TextProblem,
    },
    /// A time stamp outside the years 1970…9999.
    #[error("{claim} = {value} is outside the years 1970…9999")]
    TimeRange {
        /// The claim.
        claim: &'static str,
        /// Its value.
        value: i64,
    },
    /// A document of another kind where a token of this kind was expected.
    #[error("this is {}, not {}", found.describe(), expected.describe())]
    WrongDocument {
        /// What was given.
        found: DocKind,
        /// What was expected.
        expected: DocKind,
    },
    /// Claims that make no sense together.
    #[error("token claims are inconsistent: {0}")]
    Claims(&'static str),
}

impl TokenError {
    /// Whether this is what transport does to a token (cut short, re-encoded, wrapped in
    /// something else) rather than a signature or claim that does not hold up.
    pub fn is_transport_damage(&self) -> bool {
        matches!(
            self,
            Self::Empty
                | Self::TooLong { .. }
                | Self::Segments(_)
                | Self::Base64(_)
                | Self::SignatureLength(_)
                | Self::Json {
                    part: "header" | "payload",
                    ..
                }
        )
    }
}
