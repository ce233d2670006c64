//! Paste cleanup: what mail clients, chat tools and terminals do to a long token on its way
//! from the issuer to the desktop, undone before strict verification — which stays strict:
//! the cleaned text must still be canonical base64url with the right structure.
//!
//! Removed: leading and trailing whitespace, `>` mail-quote prefixes on every line, one pair of
//! wrapping quotes or backticks (also a fenced ``` block), and whitespace or line breaks
//! anywhere inside. Nothing else changes: no character of a token is whitespace, `>`, a quote or
//! a backtick, so cleaning never turns one valid token into another.

/// The token a person pasted, with transport damage undone.
pub fn clean(text: &str) -> String {
    // The usual case, a token pasted whole: nothing to undo.
    if text
        .bytes()
        .all(|b| crate::core::b64::is_b64url_byte(b) || b == b'.')
    {
        return text.to_string();
    }
    // Mail quoting first, line by line: "> > eyJ…" → "eyJ…".
    let unquoted: Vec<&str> = text
        .lines()
        .map(|line| {
            let mut l = line.trim_start();
            while let Some(rest) = l.strip_prefix('>') {
                l = rest.trim_start();
            }
            l
        })
        .collect();
    let mut joined: String = unquoted
        .join("")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    // A fenced code block: ```text … ``` (the info string ends at the first line break, which
    // is gone now, so only a bare fence is recognised).
    if let Some(inner) = joined
        .strip_prefix("```")
        .and_then(|r| r.strip_suffix("```"))
    {
        joined = inner.to_string();
    }
    for (open, close) in [('"', '"'), ('\'', '\''), ('`', '`'), ('“', '”'), ('‘', '’')] {
        if let Some(inner) = joined
            .strip_prefix(open)
            .and_then(|r| r.strip_suffix(close))
        {
            return inner.to_string();
        }
    }
    joined
}

/// What a piece of text is, judged from its shape only (nothing is verified): so that a
/// document given in the wrong place can be named for what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DocKind {
    /// An access pass (JWS, `typ` `hwpass+jwt`).
    Pass,
    /// A pass request (`hwpass-req+jwt`).
    Request,
    /// A signed deny list (`hwpass-deny+jwt`).
    DenyList,
    /// A pass sealed to a TPM (`hwpass-dlv1.…`).
    Delivery,
    /// A trust bundle (a JWK Set).
    TrustBundle,
    /// An issuer config file (TOML).
    IssuerConfig,
    /// A JWS of another type.
    OtherJws,
    /// Anything else.
    Unknown,
}

impl DocKind {
    /// What a person calls it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Pass => "an access pass",
            Self::Request => "a pass request",
            Self::DenyList => "a deny list",
            Self::Delivery => "a pass sealed to a TPM",
            Self::TrustBundle => "a trust bundle",
            Self::IssuerConfig => "an issuer config file",
            Self::OtherJws => "a signed token of another kind",
            Self::Unknown => "not an hwpass document",
        }
    }
}

/// Tells what `text` is (raw, before or after [`clean`]).
pub fn identify(text: &str) -> DocKind {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let keys = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("keys").map(serde_json::Value::is_array));
        return if keys == Some(true) {
            DocKind::TrustBundle
        } else {
            DocKind::Unknown
        };
    }
    let looks_toml = trimmed.lines().any(|l| {
        let l = l.trim();
        (l.starts_with('[') && l.ends_with(']') && !l.contains('.') || l.starts_with("[["))
            || l.starts_with("issuer =")
            || l.starts_with("audit_log =")
    });
    if looks_toml && trimmed.contains('=') {
        return DocKind::IssuerConfig;
    }
    let token = clean(text);
    if token.starts_with(crate::core::delivery::DELIVERY_PREFIX) {
        return DocKind::Delivery;
    }
    let Some(header) = token.split('.').next() else {
        return DocKind::Unknown;
    };
    let typ = crate::core::b64::b64url_decode(header)
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|h| h.get("typ").and_then(|t| t.as_str()).map(str::to_owned));
    match typ.as_deref() {
        Some(crate::core::claims::PASS_TYP) => DocKind::Pass,
        Some(crate::core::claims::REQUEST_TYP) => DocKind::Request,
        Some(crate::core::claims::DENYLIST_TYP) => DocKind::DenyList,
        Some(_) => DocKind::OtherJws,
        None => DocKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLWJ5dGVz";

    fn wrap(s: &str, width: usize) -> String {
        s.as_bytes()
            .chunks(width)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn transport_damage_is_undone() {
        let cases = [
            TOKEN.to_string(),
            format!("  {TOKEN}\n"),
            wrap(TOKEN, 16),
            wrap(TOKEN, 7).replace('\n', "\r\n"),
            format!("\"{TOKEN}\""),
            format!("'{TOKEN}'"),
            format!("`{TOKEN}`"),
            format!("```\n{}\n```", wrap(TOKEN, 20)),
            format!("“{TOKEN}”"),
            wrap(TOKEN, 16)
                .lines()
                .map(|l| format!("> {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
            format!(">> {TOKEN}"),
            format!("{}\t{}", &TOKEN[..10], &TOKEN[10..]),
        ];
        for pasted in cases {
            assert_eq!(clean(&pasted), TOKEN, "{pasted:?}");
        }
        // Cleaning never makes a damaged token whole: a cut stays cut.
        assert_eq!(clean(&TOKEN[..30]), &TOKEN[..30]);
    }

    #[test]
    fn documents_are_named_for_what_they_are() {
        let jws = |typ: &str| {
            format!(
                "{}.e30.sig",
                crate::core::b64::b64url(format!(r#"{{"alg":"ES256","typ":"{typ}"}}"#).as_bytes())
            )
        };
        assert_eq!(identify(&jws("hwpass+jwt")), DocKind::Pass);
        assert_eq!(
            identify(&wrap(&jws("hwpass-req+jwt"), 10)),
            DocKind::Request
        );
        assert_eq!(identify(&jws("hwpass-deny+jwt")), DocKind::DenyList);
        assert_eq!(identify(&jws("JWT")), DocKind::OtherJws);
        assert_eq!(identify("hwpass-dlv1.a.b.c.d"), DocKind::Delivery);
        assert_eq!(identify(r#"{"keys":[],"hwpass":{}}"#), DocKind::TrustBundle);
        assert_eq!(
            identify("issuer = \"corp\"\naudience = \"app\"\n\n[key]\nuri = \"pkcs11:\"\n"),
            DocKind::IssuerConfig
        );
        assert_eq!(identify("hello"), DocKind::Unknown);
        assert_eq!(DocKind::Request.describe(), "a pass request");
    }
}
