//! Feeds arbitrary bytes to the Go executable reader (as an ELF file, as a
//! runtime function table, as machine code, as build info): no panic, and
//! every offset it returns lies inside the bytes it was given. A probe at an
//! offset outside the file, or inside an instruction, would be worse than
//! none.
#![no_main]

use autotel_protocols::go_binary::{
    body_start, build_version, find_sites, pclntab_lookup, ret_offsets, READ, WRITE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(sites) = find_sites(data) {
        assert!(sites.read < len && sites.write < len);
        assert!(sites.read_rets.iter().all(|&r| r < len));
    }
    let _ = build_version(data);
    for (addr, size) in pclntab_lookup(data, 0x40_0000, [READ, WRITE])
        .into_iter()
        .flatten()
    {
        assert!(addr >= 0x40_0000 && size < 1 << 32);
    }
    if let Ok(rets) = ret_offsets(data) {
        assert!(rets.windows(2).all(|w| w[0] < w[1]));
        assert!(rets.iter().all(|&r| r < len));
    }
    assert!(body_start(data) <= len);
});
