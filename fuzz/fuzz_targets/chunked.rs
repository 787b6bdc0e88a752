//! The origin client's chunked-body decoder: arbitrary bytes as a response body, decoded whole
//! and cut into pieces where the first four bytes say. Frames are never empty nor over the frame
//! limit, and cutting the stream never changes the data, the end or the validity. Nothing may
//! panic (the origin may be compromised).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qalqan_shield::upstream::fuzz_chunked(data);
});
