//! Compiles bpf/autotel.bpf.c with clang and generates the libbpf-rs skeleton.
use libbpf_cargo::SkeletonBuilder;
use std::{env, path::PathBuf};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../bpf");
    let src = root.join("autotel.bpf.c");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("autotel.skel.rs");
    let include = root.join("include");
    SkeletonBuilder::new()
        .source(&src)
        .clang_args([
            "-I".as_ref(),
            include.as_os_str(),
            "-I".as_ref(),
            root.as_os_str(),
            "-Wall".as_ref(),
            "-Werror".as_ref(),
            "-Wno-unused-function".as_ref(),
        ])
        .build_and_generate(&out)
        .unwrap_or_else(|e| {
            panic!("building BPF programs failed (is clang installed? run scripts/setup.sh): {e:#}")
        });
    println!("cargo:rerun-if-changed={}", root.display());
}
