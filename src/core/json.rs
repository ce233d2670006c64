//! Strict JSON: every document hwpass reads from outside is checked here before serde sees
//! it. serde_json keeps the last of two equal keys in a `Value` (and derive refuses them only
//! at the top level of a struct), and reads `null` as an absent `Option`; both would let two
//! parsers disagree about one document. So: no duplicate key at any nesting level (after
//! unescaping, so `"a"` and `"\u0061"` are the same key), and no `null` anywhere — hwpass
//! never writes one.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Checks that `bytes` is one JSON value with no duplicate keys and no `null`, at any depth
/// (serde_json's recursion limit bounds the depth; exceeding it is an error, not a crash).
pub fn check_strict(bytes: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<Strict>(bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A JSON value that only validates.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value without null or duplicate keys")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Err(E::custom("null is not allowed"))
    }
    fn visit_none<E: de::Error>(self) -> Result<Strict, E> {
        Err(E::custom("null is not allowed"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<Strict>()?;
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(Strict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_nulls_are_refused_at_every_depth() {
        assert!(check_strict(br#"{"a":1,"b":[1,"x",{"c":true}],"d":{"e":2.5}}"#).is_ok());
        for bad in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"jwk":{"x":"1","x":"2"}}"#,
            br#"{"keys":[{"kty":"EC","kty":"EC"}]}"#,
            br#"{"a":1,"\u0061":2}"#,
            br#"{"kid":null}"#,
            br#"[1,null]"#,
            br#"null"#,
            br#"{"a":1} x"#,
        ] {
            assert!(
                check_strict(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(check_strict(deep.as_bytes()).is_err());
    }
}
