//! The baggage parser, on any bytes split into any number of header values.
//! Beyond not panicking: several `baggage` headers mean the same as one
//! whose value is theirs joined with "," (RFC 9110 §5.3), so both must give
//! the same key.
#![no_main]

use divert_proxy::baggage::lookup;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 0xFF never appears in a header value; here it separates headers.
    let values: Vec<&[u8]> = data.split(|&b| b == 0xFF).collect();
    let joined = values.join(&b","[..]);
    let split = lookup(values.iter().copied(), "okteto-divert");
    let whole = lookup([&joined[..]], "okteto-divert");
    assert_eq!(split, whole, "{values:?}");
});
