//! The key cookie's parsers, on any bytes: the `Cookie` fields (split into
//! any number of them), and a query. Beyond not panicking: HTTP/2 may
//! split one `Cookie` field into several (RFC 9113 §8.2.3), which must
//! find the same cookie as the `; `-joined one; a value found is a
//! namespace name; and the target without the parameter has none left.
#![no_main]

use divert_core::names::check_dns_label;
use divert_proxy::semantics::cookie::{Cookie, Param, find, param, without_param};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 0xFF never appears in a field value; here it separates fields.
    let fields: Vec<&[u8]> = data.split(|&b| b == 0xFF).collect();
    let joined = fields.join(&b"; "[..]);
    let split = find(fields.iter().copied());
    assert_eq!(split, find([&joined[..]].into_iter()), "{fields:?}");
    if let Cookie::Value(v) = split {
        assert!(check_dns_label(v).is_ok(), "{v:?}");
    }
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Param::Set(v) = param(query) {
        assert!(check_dns_label(v).is_ok(), "{v:?}");
    }
    let target = without_param("/p", query);
    let rest = target.split_once('?').map_or("", |(_, q)| q);
    assert_eq!(param(rest), Param::Absent, "{query:?} → {target:?}");
});
