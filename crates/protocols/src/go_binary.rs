//! Where the Go crypto/tls probes (bpf/tracers/tls.h) go in one executable.
//! Go programs link no OpenSSL; their plaintext is read at
//! `crypto/tls.(*Conn).Read` and `Write`. Every probe should sit on an
//! instruction the kernel emulates (a jump or a call): any other is stepped
//! out of line, a debug exception that costs a VM exit under KVM. So:
//! - entries on the `jbe` of the prologue's stack check (`entry_site`);
//! - Read's plaintext at its one call of runtime.memmove (`only_call_to`),
//!   or where that is not found, at its RET instructions (`ret_offsets`).
//!
//! A uretprobe is never used: it rewrites the return address on a goroutine
//! stack that Go moves when it grows, and the program then crashes. Pure
//! functions over the file's bytes (a slice, or an `object::ReadCache` over
//! the file).

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol};

pub const READ: &str = "crypto/tls.(*Conn).Read";
pub const WRITE: &str = "crypto/tls.(*Conn).Write";
/// What Read copies the plaintext out with: `copy` from its record buffer
/// (bytes.Reader.Read, inlined) compiles to one call of this.
pub const MEMMOVE: &str = "runtime.memmove";

/// The probe sites of one Go executable, as file offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTlsSites {
    /// The Go release that built it, e.g. "go1.19.8".
    pub version: String,
    /// Where the entry probes go.
    pub read: EntrySite,
    pub write: EntrySite,
    /// Read's one call of runtime.memmove, which copies the plaintext out
    /// (`to`, `from`, `n` in RAX, RBX, RCX): a call is emulated, not
    /// stepped. None: not found exactly once; the RETs serve instead.
    pub read_copy: Option<u64>,
    /// Every RET of Read.
    pub read_rets: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GoTlsError {
    #[error("not an x86-64 ELF executable")]
    NotX86Elf,
    #[error("not a Go program (no .go.buildinfo)")]
    NotGo,
    #[error("Go build info in the pre-1.18 layout: the register ABI the probes read needs 1.18 or later")]
    OldGo,
    #[error("the functions probed are not in its symbol or function table (not linked in)")]
    NoSymbols,
    #[error("{0}: {1}")]
    Code(&'static str, &'static str),
}

/// The ELF file `data` as an x86-64 Go 1.18+ executable, and its Go release.
fn go_executable<'a, R: object::ReadRef<'a>>(
    data: R,
) -> Result<(object::File<'a, R>, String), GoTlsError> {
    let file = object::File::parse(data).map_err(|_| GoTlsError::NotX86Elf)?;
    if file.architecture() != object::Architecture::X86_64
        || file.format() != object::BinaryFormat::Elf
    {
        return Err(GoTlsError::NotX86Elf);
    }
    let info = file
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
        .ok_or(GoTlsError::NotGo)?;
    let version = build_version(info)?;
    Ok((file, version))
}

/// Finds the probe sites in the ELF file `data` (a byte slice, or a
/// `ReadCache` over the file, which reads only the parts looked at).
pub fn find_sites<'a, R: object::ReadRef<'a>>(data: R) -> Result<GoTlsSites, GoTlsError> {
    let (file, version) = go_executable(data)?;
    let [read, write, memmove] = find_functions(&file, [READ, WRITE, MEMMOVE]);
    let (Some(read), Some(write)) = (read, write) else {
        return Err(GoTlsError::NoSymbols);
    };
    let (read_code, read_at) = code_of(&file, READ, read)?;
    let (write_code, write_at) = code_of(&file, WRITE, write)?;
    let read_rets = ret_offsets(read_code).map_err(|e| GoTlsError::Code(READ, e))?;
    let copy = memmove.and_then(|(target, _)| only_call_to(read_code, read.0, target));
    Ok(GoTlsSites {
        version,
        read: offset_by(entry_site(read_code), read_at),
        write: offset_by(entry_site(write_code), write_at),
        read_copy: copy.map(|o| read_at + o),
        read_rets: read_rets.into_iter().map(|o| read_at + o).collect(),
    })
}

/// net/http's client: the goroutine that makes a request hands it, in
/// `(*persistConn).roundTrip`, to the connection's writer goroutine, which
/// runs `(*persistConn).writeLoop` for the connection's life (net/http
/// since Go 1.0; both take the *persistConn as receiver, in RAX).
pub const ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";
pub const WRITE_LOOP: &str = "net/http.(*persistConn).writeLoop";

/// Where the net/http client probes go (bpf/tracers/go_http.h), as file
/// offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoHttpClientSites {
    pub version: String,
    pub round_trip: EntrySite,
    pub write_loop: EntrySite,
}

/// Finds the net/http client's probe sites in the ELF file `data`;
/// `NoSymbols` when the program does not link net/http's client.
pub fn find_http_client_sites<'a, R: object::ReadRef<'a>>(
    data: R,
) -> Result<GoHttpClientSites, GoTlsError> {
    let (file, version) = go_executable(data)?;
    let [Some(round_trip), Some(write_loop)] = find_functions(&file, [ROUND_TRIP, WRITE_LOOP])
    else {
        return Err(GoTlsError::NoSymbols);
    };
    let site = |name, function| {
        code_of(&file, name, function).map(|(code, at)| offset_by(entry_site(code), at))
    };
    Ok(GoHttpClientSites {
        version,
        round_trip: site(ROUND_TRIP, round_trip)?,
        write_loop: site(WRITE_LOOP, write_loop)?,
    })
}

/// Goroutine creation: `go f()` compiles to a call of runtime.newproc, whose
/// closure runs on the system stack: `newg := newproc1(fn, gp, pc, ..)`, then
/// `runqput(pp, newg, next)`. At that call (an instruction the kernel
/// emulates) the new goroutine is in RBX (the register ABI's second
/// argument), and the creator is the thread's current user goroutine,
/// `g0.m.curg` with g0 in R14. This shape has held since Go 1.17 (register
/// ABI) through 1.23's extra newproc1 arguments.
pub const NEWPROC_CLOSURE: &str = "runtime.newproc.func1";
pub const NEWPROC1: &str = "runtime.newproc1";
pub const RUNQPUT: &str = "runtime.runqput";
/// Where the offsets of `g.m` and `m.curg` are read from: the assembly of
/// runtime.systemstack loads `g.m.curg` back after the function it ran
/// (named with its ABI in the symbol table, without it in `.gopclntab`).
pub const SYSTEMSTACK: [&str; 2] = ["runtime.systemstack.abi0", "runtime.systemstack"];

/// Where the goroutine-creation probe goes (bpf/tracers/go_spawn.h).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoSpawnSites {
    pub version: String,
    /// The file offset of newproc's closure's call of runqput.
    pub enqueue: u64,
    /// Offsets of `m` in the runtime's g and of `curg` in its m.
    pub g_m: u32,
    pub m_curg: u32,
}

/// Finds the goroutine-creation probe site in the ELF file `data`.
pub fn find_spawn_sites<'a, R: object::ReadRef<'a>>(data: R) -> Result<GoSpawnSites, GoTlsError> {
    let (file, version) = go_executable(data)?;
    let [closure, newproc1, runqput, stack_abi0, stack] = find_functions(
        &file,
        [
            NEWPROC_CLOSURE,
            NEWPROC1,
            RUNQPUT,
            SYSTEMSTACK[0],
            SYSTEMSTACK[1],
        ],
    );
    let (Some(closure), Some(newproc1), Some(runqput), Some(stack)) =
        (closure, newproc1, runqput, stack_abi0.or(stack))
    else {
        return Err(GoTlsError::NoSymbols);
    };
    let (code, at) = code_of(&file, NEWPROC_CLOSURE, closure)?;
    let enqueue = enqueue_call(code, closure.0, newproc1.0, runqput.0)?;
    let (g_m, m_curg) = curg_offsets(code_of(&file, SYSTEMSTACK[1], stack)?.0).ok_or(
        GoTlsError::Code(SYSTEMSTACK[1], "no load of g.m.curg after its call"),
    )?;
    Ok(GoSpawnSites {
        version,
        enqueue: at + enqueue,
        g_m,
        m_curg,
    })
}

/// The offset in newproc's closure (`code`, at address `at`) of its one call
/// of runqput, after its one call of newproc1.
pub fn enqueue_call(code: &[u8], at: u64, newproc1: u64, runqput: u64) -> Result<u64, GoTlsError> {
    match (
        only_call_to(code, at, newproc1),
        only_call_to(code, at, runqput),
    ) {
        (Some(c), Some(q)) if c < q => Ok(q),
        _ => Err(GoTlsError::Code(
            NEWPROC_CLOSURE,
            "not one call of newproc1 followed by one of runqput",
        )),
    }
}

/// The offsets of `g.m` and `m.curg` from runtime.systemstack's machine
/// code: after its indirect call of the function it runs, it loads the g
/// register's m (`mov rbx, [rax+g_m]`) and that m's curg (`mov rax,
/// [rbx+m_curg]`) to switch back. None: not that shape.
pub fn curg_offsets(code: &[u8]) -> Option<(u32, u32)> {
    use iced_x86::OpKind;
    let ins: Vec<_> = Decoder::with_ip(64, code, 0, DecoderOptions::NONE)
        .into_iter()
        .collect();
    let call = ins
        .iter()
        .position(|i| i.mnemonic() == Mnemonic::Call && i.op0_kind() == OpKind::Register)?;
    // A register loaded from memory at base + small displacement.
    let load = |i: &iced_x86::Instruction| {
        (i.mnemonic() == Mnemonic::Mov
            && i.op_count() == 2
            && i.op0_kind() == OpKind::Register
            && i.op1_kind() == OpKind::Memory
            && i.memory_index() == iced_x86::Register::None
            && i.memory_displacement64() < 0x1000)
            .then(|| {
                (
                    i.op0_register(),
                    i.memory_base(),
                    i.memory_displacement64() as u32,
                )
            })
    };
    ins[call + 1..].windows(2).take(3).find_map(|w| {
        let (m, _, g_m) = load(&w[0])?;
        let (_, base, m_curg) = load(&w[1])?;
        (base == m).then_some((g_m, m_curg))
    })
}

/// Address and size of the functions `names`: from the symbol table, or
/// when the binary was stripped (`-ldflags=-s`) from the runtime's own
/// function table, which is still there with every name.
fn find_functions<'a, R: object::ReadRef<'a>, const N: usize>(
    file: &object::File<'a, R>,
    names: [&str; N],
) -> [Option<(u64, u64)>; N] {
    let mut out = [None; N];
    for sym in file.symbols() {
        if let Some(k) = sym
            .name()
            .ok()
            .and_then(|n| names.iter().position(|&w| w == n))
        {
            out[k] = Some((sym.address(), sym.size()));
        }
    }
    if out.iter().any(Option::is_none) {
        let table = file
            .section_by_name(".gopclntab")
            .and_then(|s| s.data().ok())
            .unwrap_or_default();
        let text = file.section_by_name(".text").map_or(0, |s| s.address());
        out = pclntab_lookup(table, text, names);
    }
    out
}

/// The offset in `code` (a function at address `at`) of its one direct
/// call to `target`; None when there is none or more than one.
pub fn only_call_to(code: &[u8], at: u64, target: u64) -> Option<u64> {
    let mut found = None;
    for ins in Decoder::with_ip(64, code, at, DecoderOptions::NONE) {
        if ins.mnemonic() == Mnemonic::Call && ins.near_branch_target() == target {
            if found.is_some() {
                return None;
            }
            found = Some(ins.ip() - at);
        }
    }
    found
}

/// Address and size of the functions `names` in a `.gopclntab` section
/// (Go 1.18+ layout, runtime/symtab.go `pcHeader`): the header's
/// `textStart`, `funcnameOffset` and `pclnOffset`; at `pclnOffset`, nfunc+1
/// (entry offset, func offset) pairs sorted by entry, and in each func its
/// name's offset in the name table. A function's size runs to the next
/// entry. `text` (the .text address) stands in for a `textStart` a
/// position-independent build leaves to its relocations.
pub fn pclntab_lookup<const N: usize>(
    table: &[u8],
    text: u64,
    names: [&str; N],
) -> [Option<(u64, u64)>; N] {
    let mut out = [None; N];
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            table.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            table.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    const MAGIC_GO118: u32 = 0xffff_fff0;
    const MAGIC_GO120: u32 = 0xffff_fff1;
    let header_ok =
        matches!(u32_at(0), Some(MAGIC_GO118 | MAGIC_GO120)) && table.get(7) == Some(&8);
    let (Some(nfunc), Some(text_start), Some(names_at), Some(pcln_at)) =
        (u64_at(8), u64_at(24), u64_at(32), u64_at(64))
    else {
        return out;
    };
    if !header_ok {
        return out;
    }
    let text_start = if text_start == 0 { text } else { text_start };
    let (Ok(names_at), Ok(pcln_at)) = (usize::try_from(names_at), usize::try_from(pcln_at)) else {
        return out;
    };
    let name_at = |func_off: u32| -> Option<&[u8]> {
        let func = pcln_at.checked_add(func_off as usize)?;
        let name_off = usize::try_from(u32_at(func.checked_add(4)?)? as i32).ok()?;
        let start = names_at.checked_add(name_off)?;
        let rest = table.get(start..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    };
    for i in 0..nfunc as usize {
        let Some(at) = i.checked_mul(8).and_then(|o| o.checked_add(pcln_at)) else {
            break;
        };
        let (Some(entry), Some(func_off), Some(next)) =
            (u32_at(at), u32_at(at + 4), u32_at(at + 8))
        else {
            break;
        };
        let Some(name) = name_at(func_off) else {
            continue;
        };
        if let Some(k) = names.iter().position(|n| n.as_bytes() == name) {
            let size = u64::from(next.saturating_sub(entry));
            out[k] = text_start.checked_add(u64::from(entry)).map(|a| (a, size));
            if out.iter().all(Option::is_some) {
                break;
            }
        }
    }
    out
}

/// The Go release that built the ELF file `data` (None: not Go).
pub fn go_version<'a, R: object::ReadRef<'a>>(data: R) -> Option<String> {
    let file = object::File::parse(data).ok()?;
    build_version(file.section_by_name(".go.buildinfo")?.data().ok()?).ok()
}

fn offset_by(site: EntrySite, by: u64) -> EntrySite {
    EntrySite {
        offset: site.offset + by,
        ..site
    }
}

/// `function_bytes` of the Go function `name` found at (address, size),
/// or the error that says the symbol table pointed outside the code.
fn code_of<'a, R: object::ReadRef<'a>>(
    file: &object::File<'a, R>,
    name: &'static str,
    (addr, size): (u64, u64),
) -> Result<(&'a [u8], u64), GoTlsError> {
    function_bytes(file, addr, size).ok_or(GoTlsError::Code(
        name,
        "symbol outside the file's code sections",
    ))
}

/// The bytes of the function at `addr` (its first `size`, all in one code
/// section) and their offset in the file.
pub(crate) fn function_bytes<'a, R: object::ReadRef<'a>>(
    file: &object::File<'a, R>,
    addr: u64,
    size: u64,
) -> Option<(&'a [u8], u64)> {
    // Checked arithmetic throughout: the symbol table is the file's word.
    let end = addr.checked_add(size).filter(|_| size > 0)?;
    let sec = file.sections().find(|s| {
        s.kind() == object::SectionKind::Text
            && s.address() <= addr
            && s.address().checked_add(s.size()).is_some_and(|e| end <= e)
    })?;
    let (sec_off, _) = sec.file_range()?;
    let data = sec.data().ok()?;
    let start = usize::try_from(addr - sec.address()).ok()?;
    let code = data.get(start..start.checked_add(usize::try_from(size).ok()?)?)?;
    Some((code, sec_off.checked_add(start as u64)?))
}

/// The Go version in a `.go.buildinfo` section (Go 1.18+: a 16-byte header
/// with the "inline strings" flag, then the version as a varint-prefixed
/// string at offset 32). Earlier releases store pointers instead.
pub fn build_version(info: &[u8]) -> Result<String, GoTlsError> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !info.starts_with(MAGIC) || info.len() < 32 {
        return Err(GoTlsError::NotGo);
    }
    const INLINE_STRINGS: u8 = 0x2;
    if info[15] & INLINE_STRINGS == 0 {
        return Err(GoTlsError::OldGo);
    }
    let mut len = 0usize;
    let mut at = 32;
    for shift in (0..35).step_by(7) {
        let b = *info.get(at).ok_or(GoTlsError::NotGo)?;
        at += 1;
        len |= ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    let v = info.get(at..at + len).ok_or(GoTlsError::NotGo)?;
    String::from_utf8(v.to_vec()).map_err(|_| GoTlsError::NotGo)
}

/// Where a Go function's entry probe goes: on the conditional jump of its
/// prologue's stack check (`cmp rsp, [r14+0x10]; jbe morestack`, with a
/// `lea` first for larger frames), `on_check` true. The kernel emulates a
/// jump where most instructions are stepped out of line, and a single step
/// is a debug exception that KVM intercepts: in a virtual machine, most
/// likely a VM exit per step. The check only compares, so the arguments are still in
/// their registers; when it will branch (CF or ZF set), the call grows its
/// stack and starts over, and the probe must ignore that visit. A function
/// without the check (nosplit): its first byte, `on_check` false.
pub fn entry_site(code: &[u8]) -> EntrySite {
    Decoder::with_ip(64, code, 0, DecoderOptions::NONE)
        .into_iter()
        .take(3)
        .find(|ins| ins.mnemonic() == Mnemonic::Jbe)
        .map_or(
            EntrySite {
                offset: 0,
                on_check: false,
            },
            |ins| EntrySite {
                offset: ins.ip(),
                on_check: true,
            },
        )
}

/// See `entry_site`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntrySite {
    pub offset: u64,
    pub on_check: bool,
}

/// Offsets of the RET instructions in one function's machine code, found by
/// decoding it from its first byte (Go puts no data in its text). A probe
/// placed inside an instruction would corrupt the program, so any byte that
/// does not decode refuses the whole function.
pub fn ret_offsets(code: &[u8]) -> Result<Vec<u64>, &'static str> {
    let mut out = Vec::new();
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    for ins in &mut decoder {
        if ins.code() == Code::INVALID {
            return Err("machine code that does not decode");
        }
        if ins.mnemonic() == Mnemonic::Ret {
            out.push(ins.ip());
        }
    }
    if out.is_empty() {
        return Err("no RET instruction");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build info of a real go1.19.8 binary (the first 48 bytes of its
    /// .go.buildinfo section).
    const BUILDINFO_GO119: &[u8] = b"\xff Go buildinf:\x08\x02\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x08go1.19.8\xe5\x010w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xe6p";

    #[test]
    fn version_from_build_info() {
        assert_eq!(build_version(BUILDINFO_GO119).unwrap(), "go1.19.8");
        let mut old = BUILDINFO_GO119.to_vec();
        old[15] = 0;
        assert_eq!(build_version(&old), Err(GoTlsError::OldGo));
        assert_eq!(build_version(b"\x7fELF"), Err(GoTlsError::NotGo));
        // A length past the end is no version, not a panic.
        let mut cut = BUILDINFO_GO119[..36].to_vec();
        cut.push(0);
        assert_eq!(build_version(&cut[..34]), Err(GoTlsError::NotGo));
    }

    /// The prologue and epilogue shape of Go functions (go1.19's
    /// (*Conn).Read): a RET byte inside another instruction's immediate is
    /// not a RET.
    #[test]
    fn rets_are_instructions_not_bytes() {
        let code = [
            0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
            0x48, 0x83, 0xec, 0x68, // sub rsp, 0x68
            0x48, 0xc7, 0xc0, 0xc3, 0x00, 0x00, 0x00, // mov rax, 0xc3
            0x48, 0x8b, 0x6c, 0x24, 0x60, // mov rbp, [rsp+0x60]
            0x48, 0x83, 0xc4, 0x68, // add rsp, 0x68
            0xc3, // ret
            0x48, 0x89, 0xc3, // mov rbx, rax
            0xc3, // ret
        ];
        assert_eq!(ret_offsets(&code).unwrap(), vec![24, 28]);
        assert!(ret_offsets(&code[..24]).is_err(), "no RET");
        // A cut instruction does not decode: nothing is placed.
        assert!(ret_offsets(&code[..14]).is_err());
    }

    /// crypto/tls.(*Conn).Read and Write of a real go1.19.8 build of
    /// tests/integration/peers/go_tls (cut out with `go tool nm -size` and
    /// dd); the offsets are GNU objdump's reading of the same bytes.
    #[test]
    fn rets_of_real_go_functions() {
        let read = include_bytes!("../../../testdata/go_binary/tls_conn_read_go1.19.8.bin");
        let write = include_bytes!("../../../testdata/go_binary/tls_conn_write_go1.19.8.bin");
        assert_eq!(
            ret_offsets(read).unwrap(),
            vec![260, 305, 434, 765, 816, 941, 971]
        );
        assert_eq!(
            ret_offsets(write).unwrap(),
            vec![978, 1402, 1514, 1626, 1724, 1804, 1864, 1906]
        );
        // The binary had Read at 0x5ab620 and runtime.memmove at 0x466820
        // (`go tool nm`); objdump shows the one call of it at 0x5ab836, and
        // two of readRecordOrCCS (0x5a5700): no single site for that one.
        assert_eq!(only_call_to(read, 0x5ab620, 0x466820), Some(0x216));
        assert_eq!(only_call_to(read, 0x5ab620, 0x5a5700), None);
        assert_eq!(only_call_to(read, 0x5ab620, 0x123456), None);
        // The jbe of `cmp rsp, [r14+0x10]; jbe` (Read) and of `lea r12,
        // [rsp-0x68]; cmp r12, [r14+0x10]; jbe` (Write).
        let on = |offset| EntrySite {
            offset,
            on_check: true,
        };
        assert_eq!(entry_site(read), on(4));
        assert_eq!(entry_site(write), on(9));
        // No stack check: the first byte.
        assert_eq!(
            entry_site(&[0x48, 0x89, 0xc3, 0xc3]),
            EntrySite {
                offset: 0,
                on_check: false
            }
        );
    }

    /// runtime.newproc.func1 of a go1.19.8 build (at 0x43c6c0; newproc1 at
    /// 0x43c740, runqput at 0x440840, as `go tool nm` and `go tool objdump`
    /// read the same file).
    #[test]
    fn enqueue_call_of_a_real_newproc_closure() {
        let code = include_bytes!("../../../testdata/go_binary/newproc_func1_go1.19.8.bin");
        assert_eq!(enqueue_call(code, 0x43c6c0, 0x43c740, 0x440840), Ok(0x40));
        // Either call missing, or the two swapped, places nothing.
        assert!(enqueue_call(code, 0x43c6c0, 0x43c741, 0x440840).is_err());
        assert!(enqueue_call(code, 0x43c6c0, 0x440840, 0x43c740).is_err());
        assert!(enqueue_call(&code[..0x40], 0x43c6c0, 0x43c740, 0x440840).is_err());
    }

    /// runtime.systemstack.abi0 of the same build: `mov rbx, [rax+0x30]; mov
    /// rax, [rbx+0xc0]` after `call rdi` (go1.19's g.m and m.curg).
    #[test]
    fn curg_offsets_of_a_real_systemstack() {
        let code = include_bytes!("../../../testdata/go_binary/systemstack_go1.19.8.bin");
        assert_eq!(curg_offsets(code), Some((0x30, 0xc0)));
        // Cut before the loads, or without the call: not found.
        assert_eq!(curg_offsets(&code[..0x52]), None);
        assert_eq!(curg_offsets(&code[0x4a..]), None);
    }

    /// A .gopclntab in the Go 1.18+ layout with the functions `funcs`
    /// (name, entry offset), ending at `end`.
    fn pclntab(funcs: &[(&str, u32)], end: u32, text_start: u64) -> Vec<u8> {
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (n, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let names_at = 72u64;
        let pcln_at = names_at + names.len() as u64;
        let functab_len = 8 * (funcs.len() + 1);
        let mut pcln = Vec::new();
        for (i, (_, entry)) in funcs.iter().enumerate() {
            pcln.extend(entry.to_le_bytes());
            pcln.extend(((functab_len + 8 * i) as u32).to_le_bytes());
        }
        pcln.extend(end.to_le_bytes());
        pcln.extend(0u32.to_le_bytes());
        for (i, (_, entry)) in funcs.iter().enumerate() {
            pcln.extend(entry.to_le_bytes());
            pcln.extend(name_offs[i].to_le_bytes());
        }
        let mut t = vec![0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        for v in [
            funcs.len() as u64,
            0,
            text_start,
            names_at,
            0,
            0,
            0,
            pcln_at,
        ] {
            t.extend(v.to_le_bytes());
        }
        t.extend(names);
        t.extend(pcln);
        t
    }

    #[test]
    fn functions_from_the_runtime_table() {
        let funcs = [
            ("main.main", 0x0),
            (READ, 0x40),
            ("x.y", 0x100),
            (WRITE, 0x180),
        ];
        let t = pclntab(&funcs, 0x200, 0x401000);
        assert_eq!(
            pclntab_lookup(&t, 0x999, [READ, WRITE]),
            [Some((0x401040, 0xc0)), Some((0x401180, 0x80))]
        );
        assert_eq!(pclntab_lookup(&t, 0, ["nope"]), [None]);
        // A position-independent build leaves textStart to a relocation.
        let pie = pclntab(&funcs, 0x200, 0);
        assert_eq!(
            pclntab_lookup(&pie, 0x1000, [WRITE]),
            [Some((0x1180, 0x80))]
        );
        // Another magic (a pre-1.18 table) is not read.
        let mut old = t.clone();
        old[0] = 0xfb;
        assert_eq!(pclntab_lookup(&old, 0, [READ]), [None]);
        // Every cut of the table: no panic, and never a wrong answer.
        for n in 0..t.len() {
            let [r] = pclntab_lookup(&t[..n], 0, [READ]);
            assert!(
                r.is_none() || r == Some((0x401040, 0xc0)),
                "cut at {n}: {r:?}"
            );
        }
    }

    #[test]
    fn not_go() {
        // This test binary: an x86-64 ELF file, not built by Go.
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(go_version(&me[..]), None);
        assert_eq!(find_sites(&me[..]), Err(GoTlsError::NotGo));
        assert_eq!(find_sites(&b"not an elf"[..]), Err(GoTlsError::NotX86Elf));
        assert_eq!(find_http_client_sites(&me[..]), Err(GoTlsError::NotGo));
    }
}
