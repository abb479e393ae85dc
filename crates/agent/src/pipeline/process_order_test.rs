//! Data a process sent right after an exec or a fork can be read before that
//! event (the process ring was drained just before it, the data ring just
//! after). Such data waits for the event, which decides selection and naming.

use super::throughput_test::{pipeline_of, record};
use super::*;

const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// A pipeline selecting `^redis-cli$` at exec through a rule naming the
/// service `cache-client`; span batches arrive on the receiver.
fn exec_selecting_pipeline() -> (Pipeline, crossbeam_channel::Receiver<SpanBatch>) {
    let mut cfg = crate::config::Config::load(None).expect("default config");
    cfg.discovery.services = vec![crate::config::ServiceRule {
        name: Some("cache-client".into()),
        namespace: None,
        open_ports: Default::default(),
        executable_name: Some(regex::Regex::new("^redis-cli$").unwrap()),
        pids: Vec::new(),
    }];
    assert!(cfg.discovery.selects_on_exec());
    let (pipeline, spans, _, _) = pipeline_of(cfg, None);
    (pipeline, spans)
}

/// The kernel's exec record of this process running `path`.
fn exec_record(path: &str) -> Vec<u8> {
    proc_record(std::process::id(), abi::PROC_EXEC, path, 0)
}

/// The kernel's record of this process forked by `ppid`.
fn fork_record(ppid: u32) -> Vec<u8> {
    proc_record(std::process::id(), abi::PROC_FORK, "", ppid)
}

fn proc_record(pid: u32, proc_kind: u8, path: &str, ppid: u32) -> Vec<u8> {
    let exec_sel = if proc_kind == abi::PROC_EXEC {
        abi::SEL_PROVISIONAL | (7 << abi::SEL_TAG_SHIFT)
    } else {
        0
    };
    let mut ev = abi::ProcEvent {
        kind: abi::EV_PROC,
        proc_kind,
        _pad: 0,
        pid,
        ppid,
        exec_sel,
        ts_ns: 1_500,
        comm: [0; 16],
        filename: [0; abi::FILENAME_LEN],
    };
    let name = path.rsplit('/').next().unwrap().as_bytes();
    ev.comm[..name.len()].copy_from_slice(name);
    ev.filename[..path.len()].copy_from_slice(path.as_bytes());
    // SAFETY: ProcEvent is a plain repr(C) struct of integers and arrays.
    unsafe {
        std::slice::from_raw_parts(
            (&ev as *const abi::ProcEvent).cast::<u8>(),
            std::mem::size_of::<abi::ProcEvent>(),
        )
    }
    .to_vec()
}

/// Offers `rec` as the reader does: left in the ring, it comes again after
/// the process ring (`procs`) was read.
fn offer(pipeline: &mut Pipeline, rec: &[u8], procs: &mut Vec<Vec<u8>>) -> bool {
    if pipeline.on_record(rec) {
        return true;
    }
    for p in procs.drain(..) {
        assert!(pipeline.on_record(&p));
    }
    assert!(pipeline.on_record(rec), "let through when it comes again");
    false
}

/// Discovery's part: `pid` described, named `name` by configuration.
fn describe(pipeline: &mut Pipeline, pid: u32, name: &str) {
    let naming = resource::Naming {
        name: Some(name.into()),
        namespace: None,
    };
    let described = Arc::new(resource::build(pid, "host", None, &naming));
    pipeline.resources.write().unwrap().insert(pid, described);
}

/// One request and its response on fd 10, each let through at once.
fn exchange(pipeline: &mut Pipeline) {
    for rec in [
        record(10, true, 2_000, REQUEST),
        record(10, false, 3_000, RESPONSE),
    ] {
        assert!(pipeline.on_record(&rec));
    }
}

/// Ends the drain and hands the spans on: their services' names.
fn finish(pipeline: &mut Pipeline, spans: &crossbeam_channel::Receiver<SpanBatch>) -> Vec<String> {
    pipeline.after_drain();
    pipeline.release_all();
    spans
        .try_iter()
        .flatten()
        .map(|s| s.resource.service_name.clone())
        .collect()
}

#[test]
fn data_read_before_its_exec_event_is_named_by_the_exec() {
    let (mut pipeline, spans) = exec_selecting_pipeline();
    let mut procs = vec![exec_record("/usr/bin/redis-cli")];
    let request = record(10, true, 2_000, REQUEST);
    assert!(
        !offer(&mut pipeline, &request, &mut procs),
        "the first record waits for the process ring"
    );
    assert!(procs.is_empty(), "the exec event was read in between");
    let response = record(10, false, 3_000, RESPONSE);
    assert!(pipeline.on_record(&response), "a known connection goes on");
    assert_eq!(
        finish(&mut pipeline, &spans),
        vec!["cache-client".to_owned()]
    );
}

#[test]
fn data_read_before_a_rejected_exec_event_makes_no_span() {
    let (mut pipeline, spans) = exec_selecting_pipeline();
    let mut procs = vec![exec_record("/usr/bin/curl")];
    offer(&mut pipeline, &record(10, true, 2_000, REQUEST), &mut procs);
    assert!(pipeline.on_record(&record(10, false, 3_000, RESPONSE)));
    assert_eq!(finish(&mut pipeline, &spans), Vec::<String>::new());
}

#[test]
fn data_after_its_exec_event_is_not_held() {
    let (mut pipeline, spans) = exec_selecting_pipeline();
    assert!(pipeline.on_record(&exec_record("/usr/bin/redis-cli")));
    exchange(&mut pipeline);
    assert_eq!(
        finish(&mut pipeline, &spans),
        vec!["cache-client".to_owned()]
    );
}

#[test]
fn data_read_before_its_fork_event_carries_the_parent_naming() {
    // A pre-fork server named by a rule; this process is its new worker.
    let cfg = crate::config::Config::load(None).expect("default config");
    let (mut pipeline, spans, _, _) = pipeline_of(cfg, None);
    let parent = 1;
    describe(&mut pipeline, parent, "forking-api");
    let mut procs = vec![fork_record(parent)];
    let request = record(10, true, 2_000, REQUEST);
    assert!(!offer(&mut pipeline, &request, &mut procs));
    assert!(pipeline.on_record(&record(10, false, 3_000, RESPONSE)));
    assert_eq!(
        finish(&mut pipeline, &spans),
        vec!["forking-api".to_owned()]
    );
}

#[test]
fn a_pid_forked_anew_is_not_taken_for_its_rejected_predecessor() {
    let (mut pipeline, spans) = exec_selecting_pipeline();
    // This pid ran curl (rejected), exited unreported, and came back as the
    // child of a selected process.
    assert!(pipeline.on_record(&exec_record("/usr/bin/curl")));
    describe(&mut pipeline, 1, "cache-client");
    assert!(pipeline.on_record(&fork_record(1)));
    exchange(&mut pipeline);
    assert_eq!(
        finish(&mut pipeline, &spans),
        vec!["cache-client".to_owned()]
    );
}

#[test]
fn an_exec_ends_what_the_fork_said() {
    // A provisionally selected shell forked this process, which then
    // exec'ed a program no rule selects: no exit event will come for it.
    let (mut pipeline, _spans) = exec_selecting_pipeline();
    assert!(pipeline.on_record(&fork_record(1)));
    assert!(pipeline.fork_parents.contains_key(&std::process::id()));
    assert!(pipeline.on_record(&exec_record("/usr/bin/wget")));
    assert!(pipeline.fork_parents.is_empty(), "nothing kept for it");
}

#[test]
fn a_child_forked_before_its_parent_was_rejected_goes_with_it() {
    // A shell no rule selects forked this process (a subshell talking over
    // /dev/tcp) before the shell's rejection reached the kernel map.
    let (mut pipeline, spans) = exec_selecting_pipeline();
    let shell = 1;
    assert!(pipeline.on_record(&proc_record(shell, abi::PROC_EXEC, "/usr/bin/bash", 0)));
    assert!(pipeline.on_record(&fork_record(shell)));
    exchange(&mut pipeline);
    assert_eq!(finish(&mut pipeline, &spans), Vec::<String>::new());
    // Its own exec decides afresh.
    assert!(pipeline.on_record(&exec_record("/usr/bin/redis-cli")));
    assert!(!pipeline.rejected.contains_key(&std::process::id()));
}

#[test]
fn a_child_of_an_exec_not_yet_described_carries_its_rule_name() {
    // A selected program forked this process at once: discovery has not
    // described the parent yet, only the exec decision knows its rule.
    let (mut pipeline, spans) = exec_selecting_pipeline();
    let parent = 1;
    let exec = proc_record(parent, abi::PROC_EXEC, "/usr/bin/redis-cli", 0);
    assert!(pipeline.on_record(&exec));
    assert!(pipeline.on_record(&fork_record(parent)));
    exchange(&mut pipeline);
    assert_eq!(
        finish(&mut pipeline, &spans),
        vec!["cache-client".to_owned()]
    );
}

/// The kernel map (empty: this pid no longer traced) and the fork of this
/// process by a shell no rule selects, read before the shell's rejection
/// reached the kernel.
fn forked_by_a_rejected_shell_and_gone() -> (Pipeline, crossbeam_channel::Receiver<SpanBatch>) {
    let (mut pipeline, spans) = exec_selecting_pipeline();
    pipeline.with_kernel_selection(
        crate::tracer::SelectedPids::standalone().expect("BPF map: run the tests as root"),
    );
    let shell = 1;
    assert!(pipeline.on_record(&proc_record(shell, abi::PROC_EXEC, "/usr/bin/bash", 0)));
    assert!(pipeline.on_record(&fork_record(shell)));
    (pipeline, spans)
}

#[test]
fn data_of_an_exec_that_exited_before_its_event_is_read_is_not_dropped() {
    // A shell no rule selects forked this process before its rejection
    // reached the kernel; the process ring was drained after that fork,
    // and the data ring then read (a long drain under load) after this
    // process exec'ed a selected program, talked and exited: the kernel
    // map no longer holds it, so nothing there tells this data from the
    // rejected fork's.
    let (mut pipeline, spans) = forked_by_a_rejected_shell_and_gone();
    let mut procs = vec![exec_record("/usr/bin/redis-cli")];
    let request = record(10, true, 2_000, REQUEST);
    assert!(
        !offer(&mut pipeline, &request, &mut procs),
        "the first record waits for the process ring"
    );
    assert!(pipeline.on_record(&record(10, false, 3_000, RESPONSE)));
    assert_eq!(
        finish(&mut pipeline, &spans),
        vec!["cache-client".to_owned()]
    );
}

#[test]
fn data_of_a_rejected_fork_the_kernel_no_longer_traces_is_dropped() {
    // The same order with no exec after the fork: the record waits for the
    // process ring once, then goes with the rejection.
    let (mut pipeline, spans) = forked_by_a_rejected_shell_and_gone();
    for rec in [
        record(10, true, 2_000, REQUEST),
        record(10, false, 3_000, RESPONSE),
    ] {
        assert!(!offer(&mut pipeline, &rec, &mut Vec::new()));
    }
    assert_eq!(finish(&mut pipeline, &spans), Vec::<String>::new());
}
