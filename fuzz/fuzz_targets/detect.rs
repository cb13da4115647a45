//! Protocol detection on a connection's first bytes. Beyond not panicking:
//! a verdict, once given, stands whatever bytes follow (detection stops
//! reading at it, so a later byte must not have been able to change it).
#![no_main]

use divert_proxy::detect::{Verdict, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(rest.len());
    if let Verdict::Known(p) = classify(&rest[..cut]) {
        assert_eq!(classify(rest), Verdict::Known(p), "{:?}", &rest[..cut]);
    }
});
