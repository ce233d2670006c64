//! The web page's form bodies (`application/x-www-form-urlencoded`, WHATWG URL §5), read
//! strictly: only the fields the form has, each at most once, `%XX` escapes well formed, every
//! value valid UTF-8. Two parsers that disagree about a duplicated field (first or last wins?)
//! cannot disagree here: there is none.

use std::fmt;

/// Why a form body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormError {
    /// A field the form does not have.
    Unknown(String),
    /// A field given twice.
    Duplicate(&'static str),
    /// A field the form needs is missing.
    Missing(&'static str),
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A name or value that is not UTF-8 once decoded.
    NotUtf8,
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The name is the client's text: shown only up to a short, printable prefix.
            Self::Unknown(name) => {
                let shown: String = name
                    .chars()
                    .take(32)
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                write!(f, "the form has no field {shown:?}")
            }
            Self::Duplicate(name) => write!(f, "the field {name:?} is given twice"),
            Self::Missing(name) => write!(f, "the field {name:?} is missing"),
            Self::BadEscape => f.write_str("a % escape is not two hex digits"),
            Self::NotUtf8 => f.write_str("a field is not UTF-8 text"),
        }
    }
}

/// The fields of one form body, by the names the form declares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fields {
    values: Vec<(&'static str, String)>,
}

impl Fields {
    /// The field's value, if it was given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The field's value; refused when missing.
    pub fn required(&self, name: &'static str) -> Result<String, FormError> {
        self.get(name)
            .map(str::to_string)
            .ok_or(FormError::Missing(name))
    }

    /// The fields in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values.iter().map(|(n, v)| (*n, v.as_str()))
    }
}

/// Parses a form body whose field names must be among `allowed`.
pub fn parse_form(body: &[u8], allowed: &[&'static str]) -> Result<Fields, FormError> {
    let mut out = Fields::default();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let name = decode(name)?;
        let Some(&known) = allowed.iter().find(|a| **a == name) else {
            return Err(FormError::Unknown(name));
        };
        if out.get(known).is_some() {
            return Err(FormError::Duplicate(known));
        }
        out.values.push((known, decode(value)?));
    }
    Ok(out)
}

/// Encodes fields as a form body (the inverse of [`parse_form`], for tests and fuzzing).
pub fn encode_form<'a, 'b>(fields: impl IntoIterator<Item = (&'a str, &'b str)>) -> String {
    fields
        .into_iter()
        .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `+` is a space, `%XX` a byte; the bytes must be UTF-8.
fn decode(raw: &[u8]) -> Result<String, FormError> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = |at: usize| raw.get(at).and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(FormError::BadEscape);
                };
                // Invariant: two hex digits make at most 0xff.
                bytes.push(u8::try_from(hi * 16 + lo).unwrap_or(u8::MAX));
                i += 2;
            }
            other => bytes.push(other),
        }
        i += 1;
    }
    String::from_utf8(bytes).map_err(|_| FormError::NotUtf8)
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &[&str] = &["csrf", "request", "lifetime"];

    #[test]
    fn fields_decode_plus_and_escapes() {
        let f = parse_form(b"csrf=a%2Bb+c&request=x%C3%A9&lifetime=", FORM).unwrap();
        assert_eq!(f.get("csrf"), Some("a+b c"));
        assert_eq!(f.get("request"), Some("xé"));
        assert_eq!(f.get("lifetime"), Some(""));
        assert_eq!(parse_form(b"", FORM).unwrap(), Fields::default());
        assert_eq!(
            parse_form(b"csrf", FORM).unwrap().get("csrf"),
            Some(""),
            "a name without = is an empty value"
        );
    }

    #[test]
    fn duplicates_unknown_fields_bad_escapes_and_non_utf8_are_refused() {
        for (body, want) in [
            (&b"csrf=a&csrf=b"[..], FormError::Duplicate("csrf")),
            (b"csrf=a&cs%72f=b", FormError::Duplicate("csrf")),
            (b"lifetime=1&extra=2", FormError::Unknown("extra".into())),
            (b"csrf=%zz", FormError::BadEscape),
            (b"csrf=%4", FormError::BadEscape),
            (b"csrf=%", FormError::BadEscape),
            (b"csrf=%ff", FormError::NotUtf8),
            (b"%ff=x", FormError::NotUtf8),
        ] {
            assert_eq!(parse_form(body, FORM), Err(want), "{body:?}");
        }
        assert_eq!(
            parse_form(b"request=x", FORM).unwrap().required("lifetime"),
            Err(FormError::Missing("lifetime"))
        );
    }

    #[test]
    fn encoding_round_trips() {
        let fields = [("csrf", "a+b c&=%"), ("request", "eyJ.é\n")];
        let body = encode_form(fields);
        let parsed = parse_form(body.as_bytes(), FORM).unwrap();
        assert_eq!(parsed.iter().collect::<Vec<_>>(), fields);
        assert_eq!(encode_form(parsed.iter()), body);
    }
}
