//! Feeds arbitrary bytes to the OpenSSL internal-function finder (as an ELF
//! file, as machine code): no panic, and an offset it returns lies inside
//! the bytes it was given (a probe outside the file would be worse than none).
#![no_main]

use autotel_protocols::openssl_binary::{
    exported_entries_emulated, find_internal_sites, passed_through_to, starts_with_emulated,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(sites) = find_internal_sites(data) {
        assert!(sites.read < len && sites.write < len);
    }
    let _ = passed_through_to(data, 0x1000);
    let _ = exported_entries_emulated(data);
    if starts_with_emulated(data) {
        assert!(matches!(data.first(), Some(0x50..=0x57) | Some(0x41)));
    }
});
