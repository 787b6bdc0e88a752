//! The shield's own HTTP/1.1 request reader (`h1`): arbitrary bytes as the start of a client
//! connection. A head it hands to hyper, or one not yet complete, must leave every byte in place;
//! a head it takes must be exactly one bodiless HTTP/1.1 request in origin form, with the bytes
//! after it untouched. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qalqan_shield::fuzz_take(data);
});
