//! Where the OpenSSL probes (bpf/tracers/tls.h) can go in one libssl, or a
//! program with OpenSSL linked in, so that their entries are not stepped out
//! of line.
//!
//! A uprobe on an instruction the kernel does not emulate is single-stepped
//! out of line: a debug exception, which KVM intercepts, so most likely a
//! VM exit per hit (session 24 measured ~12 us per stepped hit against 3-7
//! for an emulated one). The exported `SSL_read`/`SSL_write` begin with
//! `sub rsp, N`, which is stepped, and their return probe must sit on their
//! first instruction, where the return address is on top of the stack.
//!
//! Since OpenSSL 1.1.1 all four exported calls are thin wrappers over two
//! internal functions with the `_ex` signature, `ssl_read_internal(s, buf,
//! num, &readbytes)` and `ssl_write_internal(s, buf, num, &written)`, which
//! save callee-saved registers first: `push` is emulated (since about Linux
//! 6.9; an older kernel steps it, as it steps `sub rsp`, so nothing is
//! lost). With the probes there, a call costs one emulated hit and the
//! return. The
//! internal functions are not exported, so they are found from the wrappers'
//! code: `SSL_read_ex` passes its arguments straight through to one call,
//! and `SSL_read` calls the same function. Anything else leaves the probes
//! on the exported functions. Pure functions over the file's bytes.

use crate::go_binary::function_bytes;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Register};
use object::{Object, ObjectSymbol};

/// File offsets of the two internal functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalSites {
    pub read: u64,
    pub write: u64,
}

/// Why the internal functions were not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SitesError {
    #[error("not an x86-64 ELF file")]
    NotX86Elf,
    #[error("{0} is not defined here")]
    Missing(&'static str),
    #[error("{0} does not pass its arguments straight to one call")]
    NotAWrapper(&'static str),
    #[error("{0} and {1} do not call the same function")]
    Differ(&'static str, &'static str),
    #[error("the function {0} wraps does not start with an emulated instruction (push)")]
    NotEmulated(&'static str),
}

/// Finds the internal read and write functions in the ELF file `data` (a
/// byte slice, or an `object::ReadCache` over the file).
pub fn find_internal_sites<'a, R: object::ReadRef<'a>>(
    data: R,
) -> Result<InternalSites, SitesError> {
    let file = object::File::parse(data).map_err(|_| SitesError::NotX86Elf)?;
    if file.architecture() != object::Architecture::X86_64
        || file.format() != object::BinaryFormat::Elf
    {
        return Err(SitesError::NotX86Elf);
    }
    let read = internal_of(&file, "SSL_read_ex", "SSL_read")?;
    let write = internal_of(&file, "SSL_write_ex", "SSL_write")?;
    Ok(InternalSites { read, write })
}

/// Do `SSL_read` and `SSL_write` themselves start with an instruction the
/// kernel emulates? (Builds with frame pointers start with `push rbp`, and
/// some inline the internal functions: there the exported entries are the
/// cheap sites.) False when either is missing.
pub fn exported_entries_emulated<'a, R: object::ReadRef<'a>>(data: R) -> bool {
    let Ok(file) = object::File::parse(data) else {
        return false;
    };
    ["SSL_read", "SSL_write"].iter().all(|name| {
        defined_function(&file, name)
            .and_then(|(addr, _)| function_bytes(&file, addr, 15))
            .is_some_and(|(code, _)| starts_with_emulated(code))
    })
}

/// The file offset of the function the wrapper `ex` passes its arguments
/// to, checked against `plain`, the other wrapper of it.
fn internal_of<'a, R: object::ReadRef<'a>>(
    file: &object::File<'a, R>,
    ex: &'static str,
    plain: &'static str,
) -> Result<u64, SitesError> {
    let code_of = |name: &'static str| {
        defined_function(file, name)
            .and_then(|(addr, size)| Some((function_bytes(file, addr, size)?.0, addr)))
            .ok_or(SitesError::Missing(name))
    };
    let (ex_code, ex_at) = code_of(ex)?;
    let target = passed_through_to(ex_code, ex_at).ok_or(SitesError::NotAWrapper(ex))?;
    let (plain_code, plain_at) = code_of(plain)?;
    if !direct_targets(plain_code, plain_at).any(|t| t == target) {
        return Err(SitesError::Differ(ex, plain));
    }
    let (first, offset) = function_bytes(file, target, 15).ok_or(SitesError::NotEmulated(ex))?;
    if !starts_with_emulated(first) {
        return Err(SitesError::NotEmulated(ex));
    }
    Ok(offset)
}

/// Address and size of a function this file defines, from the symbol table
/// or, in a stripped library, the dynamic one.
fn defined_function<'a, R: object::ReadRef<'a>>(
    file: &object::File<'a, R>,
    name: &str,
) -> Option<(u64, u64)> {
    let matches = |s: &object::Symbol<'a, '_, R>| {
        !s.is_undefined() && s.size() > 0 && s.name().is_ok_and(|n| n == name)
    };
    file.symbols()
        .find(matches)
        .or_else(|| file.dynamic_symbols().find(matches))
        .map(|s| (s.address(), s.size()))
}

/// The target of a function's first call (or tail jump) when nothing before
/// it touches the argument registers: only a stack adjustment, a push or an
/// `endbr64` may come first. The callee then gets the caller's arguments.
pub fn passed_through_to(code: &[u8], at: u64) -> Option<u64> {
    for ins in Decoder::with_ip(64, code, at, DecoderOptions::NONE)
        .into_iter()
        .take(4)
    {
        if let Some(target) = direct_target(&ins) {
            return Some(target);
        }
        if !leaves_arguments(&ins) {
            return None;
        }
    }
    None
}

/// Instructions a wrapper may run before its call without changing what
/// the callee receives.
fn leaves_arguments(ins: &Instruction) -> bool {
    match ins.code() {
        Code::Push_r64 | Code::Endbr64 => true,
        Code::Sub_rm64_imm8 | Code::Sub_rm64_imm32 => ins.op0_register() == Register::RSP,
        _ => false,
    }
}

/// Direct near call or jump targets in a function's code.
fn direct_targets(code: &[u8], at: u64) -> impl Iterator<Item = u64> + '_ {
    Decoder::with_ip(64, code, at, DecoderOptions::NONE)
        .into_iter()
        .filter_map(|i| direct_target(&i))
}

fn direct_target(ins: &Instruction) -> Option<u64> {
    matches!(
        ins.code(),
        Code::Call_rel32_64 | Code::Jmp_rel32_64 | Code::Jmp_rel8_64
    )
    .then(|| ins.near_branch_target())
}

/// Does this code start with an instruction the kernel's uprobes emulate
/// instead of stepping? `push` of a 64-bit register (with at most the REX.B
/// prefix, as Linux requires); calls and jumps are emulated too, but a
/// function whose first instruction is one is nothing to probe here.
pub fn starts_with_emulated(code: &[u8]) -> bool {
    let mut d = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let ins = d.decode();
    ins.code() == Code::Push_r64
        && ins.len() <= 2
        && (ins.len() == 1 || code.first() == Some(&0x41))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Debian 12's libssl3 (OpenSSL 3.0.19): the exported
    /// wrappers whole, and the first bytes of the internal functions.
    const DATA: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/openssl_binary/"
    );
    fn bytes(name: &str) -> Vec<u8> {
        std::fs::read(format!("{DATA}{name}_openssl3.0.19.bin")).unwrap()
    }
    const SSL_READ_AT: u64 = 0x35430;
    const SSL_READ_EX_AT: u64 = 0x354c0;
    const SSL_READ_INTERNAL_AT: u64 = 0x35290;
    const SSL_WRITE_AT: u64 = 0x35980;
    const SSL_WRITE_EX_AT: u64 = 0x35a10;
    const SSL_WRITE_INTERNAL_AT: u64 = 0x355a0;

    #[test]
    fn wrapper_passes_its_arguments_to_the_internal_function() {
        for (ex, ex_at, plain, plain_at, internal) in [
            (
                "ssl_read_ex",
                SSL_READ_EX_AT,
                "ssl_read",
                SSL_READ_AT,
                SSL_READ_INTERNAL_AT,
            ),
            (
                "ssl_write_ex",
                SSL_WRITE_EX_AT,
                "ssl_write",
                SSL_WRITE_AT,
                SSL_WRITE_INTERNAL_AT,
            ),
        ] {
            assert_eq!(passed_through_to(&bytes(ex), ex_at), Some(internal), "{ex}");
            // SSL_read converts its int length first: not a pass-through,
            // but it calls the same function.
            let plain = bytes(plain);
            assert_eq!(passed_through_to(&plain, plain_at), None);
            assert!(direct_targets(&plain, plain_at).any(|t| t == internal));
        }
    }

    #[test]
    fn argument_registers_touched_before_the_call_refuse_it() {
        // mov rcx, rsp; call
        let code = [0x48, 0x89, 0xe1, 0xe8, 0, 0, 0, 0];
        assert_eq!(passed_through_to(&code, 0), None);
        // sub rdx, 8 is not a stack adjustment.
        let code = [0x48, 0x83, 0xea, 0x08, 0xe8, 0, 0, 0, 0];
        assert_eq!(passed_through_to(&code, 0), None);
        // A tail jump passes the arguments on too.
        let code = [0xe9, 0x10, 0, 0, 0];
        assert_eq!(passed_through_to(&code, 0x100), Some(0x115));
        // An indirect call has no target to probe.
        let code = [0xff, 0xd0];
        assert_eq!(passed_through_to(&code, 0), None);
        assert_eq!(passed_through_to(&[], 0), None);
    }

    #[test]
    fn only_a_push_counts_as_emulated() {
        assert!(starts_with_emulated(&bytes("ssl_read_internal_head"))); // push r13
        assert!(starts_with_emulated(&bytes("ssl_write_internal_head"))); // push r14
        assert!(starts_with_emulated(&[0x55])); // push rbp
        assert!(!starts_with_emulated(&bytes("ssl_read"))); // sub rsp
        assert!(!starts_with_emulated(&[0xf3, 0x0f, 0x1e, 0xfa])); // endbr64
        assert!(!starts_with_emulated(&[0x66, 0x55])); // push bp (16-bit)
        assert!(!starts_with_emulated(&[]));
    }

    #[test]
    fn garbage_is_no_elf() {
        assert_eq!(
            find_internal_sites(&b"\x7fELF\x02\x01\x01"[..]),
            Err(SitesError::NotX86Elf)
        );
        assert!(!exported_entries_emulated(&b"\x7fELF\x02\x01\x01"[..]));
    }
}
