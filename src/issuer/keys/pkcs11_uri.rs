//! RFC 7512 PKCS#11 URIs, parsed once into a typed value ("parse, don't validate").
//!
//! Supported: path attributes `token`, `serial`, `manufacturer`, `model`, `object`, `id`,
//! `type`, `slot-id`; query attributes `module-path` and `pin-source`. A `pin-value` is refused:
//! the PIN must not sit in a config file or on a command line. `pin-source` accepts
//! `file:/path` or an absolute path (RFC 7512 §2.3) and, as an hwpass extension, `env:NAME`.
//! Unknown attributes (other than RFC 7512's `x-` vendor ones) and repeated ones are errors.

use std::path::PathBuf;

/// Where the PIN comes from when the URI says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// Read the first line of this file.
    File(PathBuf),
    /// Read this environment variable.
    Env(String),
}

/// A parsed `pkcs11:` URI naming one key on one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `module-path`: the PKCS#11 shared library.
    pub module_path: PathBuf,
    /// `token`: the token label.
    pub token: Option<String>,
    /// `serial`: the token serial number.
    pub serial: Option<String>,
    /// `manufacturer`: the token manufacturer.
    pub manufacturer: Option<String>,
    /// `model`: the token model.
    pub model: Option<String>,
    /// `slot-id`: the slot number (discouraged: SoftHSM renumbers slots).
    pub slot_id: Option<u64>,
    /// `object`: the key label (CKA_LABEL).
    pub object: Option<String>,
    /// `id`: the key id (CKA_ID), raw bytes.
    pub id: Option<Vec<u8>>,
    /// `pin-source`.
    pub pin_source: Option<PinSource>,
}

/// Why a URI was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UriError {
    /// Does not start with `pkcs11:`.
    #[error("a PKCS#11 URI starts with \"pkcs11:\"")]
    Scheme,
    /// Bad percent-encoding or non-UTF-8 text.
    #[error("attribute {0:?} has invalid percent-encoding")]
    Encoding(String),
    /// An attribute we do not know.
    #[error("unknown PKCS#11 URI attribute {0:?}")]
    Unknown(String),
    /// An attribute given twice.
    #[error("PKCS#11 URI attribute {0:?} is given twice")]
    Repeated(String),
    /// `pin-value` present.
    #[error("the PKCS#11 URI contains pin-value; put the PIN in a file or environment variable (pin-source) instead")]
    PinValue,
    /// Something required is missing or inconsistent.
    #[error("PKCS#11 URI {0}")]
    Invalid(&'static str),
}

impl Pkcs11Uri {
    /// Parses and checks a URI.
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let rest = uri.trim().strip_prefix("pkcs11:").ok_or(UriError::Scheme)?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut out = Self {
            module_path: PathBuf::new(),
            token: None,
            serial: None,
            manufacturer: None,
            model: None,
            slot_id: None,
            object: None,
            id: None,
            pin_source: None,
        };
        let mut seen = Vec::new();
        let mut module = None;
        let attrs = path
            .split(';')
            .map(|a| (a, true))
            .chain(query.split('&').map(|a| (a, false)));
        for (attr, in_path) in attrs.filter(|(a, _)| !a.is_empty()) {
            let (name, raw) = attr
                .split_once('=')
                .ok_or(UriError::Invalid("has an attribute without '='"))?;
            if seen.contains(&name) {
                return Err(UriError::Repeated(name.into()));
            }
            seen.push(name);
            let bytes = pct_decode(raw).ok_or_else(|| UriError::Encoding(name.into()))?;
            let text =
                || String::from_utf8(bytes.clone()).map_err(|_| UriError::Encoding(name.into()));
            match (in_path, name) {
                (true, "token") => out.token = Some(text()?),
                (true, "serial") => out.serial = Some(text()?),
                (true, "manufacturer") => out.manufacturer = Some(text()?),
                (true, "model") => out.model = Some(text()?),
                (true, "object") => out.object = Some(text()?),
                (true, "id") => out.id = Some(bytes),
                (true, "slot-id") => {
                    out.slot_id = Some(
                        text()?
                            .parse()
                            .map_err(|_| UriError::Invalid("slot-id is not a number"))?,
                    )
                }
                (true, "type") => {
                    if !matches!(text()?.as_str(), "private" | "public") {
                        return Err(UriError::Invalid(
                            "type must be private or public for a key",
                        ));
                    }
                }
                (false, "module-path") => module = Some(PathBuf::from(text()?)),
                (false, "pin-source") => out.pin_source = Some(pin_source(&text()?)?),
                (false, "pin-value") => return Err(UriError::PinValue),
                (_, n) if n.starts_with("x-") => {}
                _ => return Err(UriError::Unknown(name.into())),
            }
        }
        out.module_path = module.ok_or(UriError::Invalid(
            "needs ?module-path=/path/to/module.so (module-name lookup is not supported)",
        ))?;
        if out.token.is_none() && out.serial.is_none() && out.slot_id.is_none() {
            return Err(UriError::Invalid(
                "must name the token (token=LABEL or serial=…)",
            ));
        }
        if out.object.is_none() && out.id.is_none() {
            return Err(UriError::Invalid(
                "must name the key (object=LABEL or id=…)",
            ));
        }
        Ok(out)
    }
}

impl std::fmt::Display for Pkcs11Uri {
    /// The URI without its query (no module path, never a PIN source), for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(t) = &self.token {
            parts.push(format!("token={}", pct_encode(t.as_bytes())));
        }
        if let Some(s) = &self.serial {
            parts.push(format!("serial={}", pct_encode(s.as_bytes())));
        }
        if let Some(o) = &self.object {
            parts.push(format!("object={}", pct_encode(o.as_bytes())));
        }
        if let Some(id) = &self.id {
            parts.push(format!(
                "id={}",
                id.iter().map(|b| format!("%{b:02X}")).collect::<String>()
            ));
        }
        write!(f, "pkcs11:{}", parts.join(";"))
    }
}

fn pin_source(s: &str) -> Result<PinSource, UriError> {
    if let Some(var) = s.strip_prefix("env:") {
        if var.is_empty() {
            return Err(UriError::Invalid("pin-source env: needs a variable name"));
        }
        return Ok(PinSource::Env(var.into()));
    }
    let path = s.strip_prefix("file:").unwrap_or(s);
    let path = path.strip_prefix("//").unwrap_or(path);
    if !path.starts_with('/') {
        return Err(UriError::Invalid(
            "pin-source must be file:/absolute/path or env:NAME",
        ));
    }
    Ok(PinSource::File(path.into()))
}

fn pct_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn pct_encode(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_alphanumeric() || b"-._~:@!$'()*+,&".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "module-path=/usr/lib/softhsm/libsofthsm2.so";

    #[test]
    fn parses_a_full_uri() {
        let u = Pkcs11Uri::parse(&format!(
            "pkcs11:token=My%20Token;object=issuer-2026;id=%01%02;type=private?{M}&pin-source=env:HSM_PIN"
        ))
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object.as_deref(), Some("issuer-2026"));
        assert_eq!(u.id, Some(vec![1, 2]));
        assert_eq!(
            u.module_path,
            PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert_eq!(u.pin_source, Some(PinSource::Env("HSM_PIN".into())));
        assert_eq!(
            u.to_string(),
            "pkcs11:token=My%20Token;object=issuer-2026;id=%01%02"
        );
        let f = Pkcs11Uri::parse(&format!(
            "pkcs11:token=t;object=o?{M}&pin-source=file:/etc/pin"
        ))
        .unwrap();
        assert_eq!(f.pin_source, Some(PinSource::File("/etc/pin".into())));
    }

    #[test]
    fn refuses_bad_uris() {
        let cases = [
            ("token=t;object=o", UriError::Scheme),
            (
                "pkcs11:token=t;object=o",
                UriError::Invalid(
                    "needs ?module-path=/path/to/module.so (module-name lookup is not supported)",
                ),
            ),
            (
                "pkcs11:object=o?M",
                UriError::Invalid("must name the token (token=LABEL or serial=…)"),
            ),
            (
                "pkcs11:token=t?M",
                UriError::Invalid("must name the key (object=LABEL or id=…)"),
            ),
            (
                "pkcs11:token=t;token=u;object=o?M",
                UriError::Repeated("token".into()),
            ),
            (
                "pkcs11:token=t;object=o;colour=red?M",
                UriError::Unknown("colour".into()),
            ),
            (
                "pkcs11:token=t;object=o?M&pin-value=1234",
                UriError::PinValue,
            ),
            (
                "pkcs11:token=t%2;object=o?M",
                UriError::Encoding("token".into()),
            ),
            (
                "pkcs11:token=t;object=o;type=secret-key?M",
                UriError::Invalid("type must be private or public for a key"),
            ),
            (
                "pkcs11:token=t;object=o?M&pin-source=relative/pin",
                UriError::Invalid("pin-source must be file:/absolute/path or env:NAME"),
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(Pkcs11Uri::parse(&uri.replace('M', M)), Err(want), "{uri}");
        }
        assert!(Pkcs11Uri::parse(&format!("pkcs11:token=t;object=o;x-vendor=1?{M}")).is_ok());
    }
}
