//! The sealed-state reader: arbitrary files, and arbitrary content sealed with the right key
//! (so the parser behind the AEAD is reached too).
#![no_main]

use hwpass::fuzz::{check_state_content, open_sealed, seal};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7; 32];
const JKT: &str = "fuzz-device";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let _ = open_sealed(rest, &KEY, JKT);
    } else {
        let sealed = seal(rest, &KEY, JKT).expect("sealing never fails");
        let plain = open_sealed(&sealed, &KEY, JKT).expect("own seal opens");
        assert_eq!(&plain[..], rest);
        let _ = check_state_content(&plain);
        // Another device's key never opens it.
        assert!(open_sealed(&sealed, &KEY, "other-device").is_err());
    }
});
