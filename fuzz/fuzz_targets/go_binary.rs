//! Feeds arbitrary bytes to the Go executable reader (as an ELF file, as a
//! runtime function table, as machine code, as build info): no panic, and
//! every offset it returns lies inside the bytes it was given. A probe at an
//! offset outside the file, or inside an instruction, would be worse than
//! none.
#![no_main]

use autotel_protocols::go_binary::{
    build_version, curg_offsets, enqueue_call, entry_site, find_sites, find_spawn_sites,
    only_call_to, pclntab_lookup, ret_offsets, READ, WRITE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(sites) = find_sites(data) {
        assert!(sites.read.offset < len && sites.write.offset < len);
        assert!(sites.read_copy.is_none_or(|c| c < len));
        assert!(sites.read_rets.iter().all(|&r| r < len));
    }
    if let Ok(sites) = find_spawn_sites(data) {
        assert!(sites.enqueue < len && sites.g_m < 0x1000 && sites.m_curg < 0x1000);
    }
    if let Ok(enqueue) = enqueue_call(data, 0x40_0000, 0x40_0000, 0x40_0010) {
        assert!(enqueue < len);
    }
    if let Some((g_m, m_curg)) = curg_offsets(data) {
        assert!(g_m < 0x1000 && m_curg < 0x1000);
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
    assert!(entry_site(data).offset < len.max(1));
    if let Some(at) = only_call_to(data, 0x40_0000, 0x40_0000) {
        assert!(at < len);
    }
});
