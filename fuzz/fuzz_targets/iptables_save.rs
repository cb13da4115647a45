//! The `iptables-save` parser `divert-proxy init` reads the node's rules
//! with: any text parses or gives an error naming the line, never a panic.
#![no_main]

use divert_init::rules::parse_save;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = parse_save(text)
    {
        assert!(e.line_no >= 1, "{e:?}");
    }
});
