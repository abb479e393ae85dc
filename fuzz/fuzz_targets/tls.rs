//! Feeds arbitrary bytes to the TLS record checks and the ServerHello reader
//! and checks they never panic, and that a hello read from a prefix of the
//! bytes (the agent reads the server's bytes call by call) is the hello
//! read from all of them: only the first record may decide it.
#![no_main]

use autotel_protocols::tls::{is_client_hello, is_record_start, server_hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let start = is_record_start(data);
    assert!(!is_client_hello(data) || start);
    let whole = server_hello(data);
    if let Some(info) = &whole {
        assert!(!info.version.is_empty());
    }
    // The first byte picks where the bytes are cut.
    let cut = data.first().map_or(0, |&b| b as usize * 37) % (data.len() + 1);
    if let Some(early) = server_hello(&data[..cut]) {
        assert_eq!(Some(early), whole, "a prefix read another hello");
    }
});
