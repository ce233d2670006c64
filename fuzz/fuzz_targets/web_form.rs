//! The issuing service's web form reader (every form the page posts: sign-in, review, sign,
//! revoke) on arbitrary bodies: never panics, never lets a field through twice or a field the
//! form does not have, and what it accepts encodes back to a body it reads the same way.
#![no_main]

use hwpass::issuer::internal::{encode_form, parse_form};
use libfuzzer_sys::fuzz_target;

const FIELDS: &[&str] = &["csrf", "token", "request", "lifetime", "jti"];

fuzz_target!(|data: &[u8]| {
    let Ok(fields) = parse_form(data, FIELDS) else {
        return;
    };
    let mut seen = Vec::new();
    for (name, _) in fields.iter() {
        assert!(FIELDS.contains(&name), "a field the form does not have: {name}");
        assert!(!seen.contains(&name), "a field twice: {name}");
        seen.push(name);
    }
    let again = encode_form(fields.iter());
    let reread = parse_form(again.as_bytes(), FIELDS).expect("its own encoding reads back");
    assert_eq!(reread, fields);
});
