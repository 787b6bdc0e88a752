//! PROXY protocol v1/v2 parsing of arbitrary first bytes of a connection.
//!
//! Beyond "never panics", checks the promises `parse` documents: a parsed header lies within
//! the buffer and parses the same on its own, and `Incomplete` always asks for more bytes than
//! were given, never more than `MAX_HEADER_LEN`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qalqan_net::proxy_protocol::{self, MAX_HEADER_LEN, ProxyError};

fuzz_target!(|data: &[u8]| {
    match proxy_protocol::parse(data) {
        Ok(header) => {
            assert!(header.header_len <= data.len());
            assert!(header.header_len <= MAX_HEADER_LEN);
            assert_eq!(header.source.is_some(), header.destination.is_some());
            assert_eq!(
                proxy_protocol::parse(&data[..header.header_len]),
                Ok(header)
            );
        }
        Err(ProxyError::Incomplete { need_at_least }) => {
            assert!(need_at_least > data.len());
            assert!(need_at_least <= MAX_HEADER_LEN);
        }
        Err(_) => {}
    }
    let _ = proxy_protocol::looks_like_proxy(data);
});
