//! Table tests on real captured bytes (testdata/http2, recorded by
//! testdata/capture_http2.py from grpcio + grpcio-health-checking, nginx
//! with curl and python-h2, and an h2c Upgrade by curl).

use super::*;
use crate::testkit::{at, capped};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Records: 1 byte direction (C/S), 4-byte big-endian length, bytes.
fn records(name: &str) -> Vec<(bool, Vec<u8>)> {
    crate::testkit::capture("http2", name)
}

/// Feeds records as syscalls whose capture stops after `cap` bytes.
fn run(conn: &mut Http2Connection, recs: &[(bool, Vec<u8>)], cap: usize) -> Vec<Http2Event> {
    let mut out = Vec::new();
    for (i, (from_client, bytes)) in recs.iter().enumerate() {
        let t = 100 * (i as u64 + 1);
        conn.feed(*from_client, &capped(bytes, cap, at(t)), &mut out);
    }
    conn.close(&mut out);
    out
}

fn streams(events: &[Http2Event]) -> Vec<&Http2Stream> {
    events
        .iter()
        .filter_map(|e| match e {
            Http2Event::Stream(s) => Some(s.as_ref()),
            _ => None,
        })
        .collect()
}

fn errors(events: &[Http2Event]) -> Vec<&'static str> {
    events
        .iter()
        .filter_map(|e| match e {
            Http2Event::Error(k) => Some(*k),
            _ => None,
        })
        .collect()
}

fn paths(ss: &[&Http2Stream]) -> Vec<(u32, String)> {
    ss.iter()
        .map(|s| (s.stream_id, s.request.path.clone()))
        .collect()
}

const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";

#[test]
fn detects_both_prefaces() {
    let recs = records("grpc_health.bin");
    assert!(detect(true, &recs[0].1));
    assert!(detect(true, &PREFACE[..8]));
    assert!(!detect(true, &PREFACE[..7]));
    assert!(!detect(true, b"GET / HTTP/1.1\r\n\r\n"));
    let server = recs.iter().find(|r| !r.0).unwrap();
    assert!(detect(false, &server.1));
    assert!(!detect(false, b"HTTP/1.1 200 OK\r\n\r\n"));
    assert!(
        !detect(false, &recs[0].1),
        "client bytes are not a server SETTINGS"
    );
    // SETTINGS with a length that is not a multiple of 6, or on a stream.
    assert!(!detect(false, &[0, 0, 5, 4, 0, 0, 0, 0, 0]));
    assert!(!detect(false, &[0, 0, 6, 4, 0, 0, 0, 0, 1]));
}

#[test]
fn grpc_health_check_watch_and_not_found() {
    let out = run(
        &mut Http2Connection::new(),
        &records("grpc_health.bin"),
        usize::MAX,
    );
    assert_eq!(errors(&out), Vec::<&str>::new());
    let s = streams(&out);
    assert_eq!(
        paths(&s),
        [(1, CHECK), (3, CHECK), (5, CHECK), (7, WATCH), (9, CHECK)]
            .map(|(i, p)| (i, p.to_string()))
    );
    for x in &s {
        assert_eq!(x.request.method, "POST");
        assert!(x.request.is_grpc(), "{x:?}");
        assert_eq!(x.request.scheme.as_deref(), Some("http"));
        assert!(x
            .request
            .authority
            .as_deref()
            .unwrap()
            .starts_with("127.0.0.1:"));
        assert!(x
            .request
            .user_agent
            .as_deref()
            .unwrap()
            .contains("grpc-python"));
        assert_eq!(x.status, Some(200));
        assert!(!x.hpack_unknown);
        assert!(x.response_end_ns >= x.request_start.exit_ns);
    }
    let grpc: Vec<_> = s.iter().map(|x| x.grpc_status).collect();
    assert_eq!(grpc, [Some(0), Some(0), Some(5), None, Some(0)]);
    // grpcio answers NOT_FOUND with an empty message body and trailers.
    assert_eq!(s[2].grpc_message.as_deref(), Some(""));
    assert_eq!(s[2].response_body_bytes, 5);
    // Metadata from the second call.
    assert_eq!(s[1].request.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(s[1].request.tracestate.as_deref(), Some("k=v"));
    assert_eq!(s[0].request.traceparent, None);
    // Unary: 5-byte gRPC frame header + 0-byte message each way... the
    // request names no service; the response says SERVING (7 bytes).
    assert_eq!((s[0].request_body_bytes, s[0].response_body_bytes), (5, 7));
    // Watch streamed two updates, then the client cancelled (CANCEL = 8).
    let watch = s[3];
    assert_eq!(watch.reset, Some(8));
    assert_eq!(watch.response_body_bytes, 14);
    assert!(watch.response_end_ns > s[2].response_end_ns);
    assert!(watch.response_end_ns < s[4].request_start.enter_ns);
    // RequestStart precedes each stream and carries its trace context.
    let starts: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            Http2Event::RequestStart {
                stream_id,
                traceparent,
                ..
            } => Some((*stream_id, traceparent.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 5);
    assert_eq!(starts[1], (3, Some(TRACEPARENT.to_string())));
}

/// What a test compares of the streams a run reports.
type Summary = (
    u32,
    Http2Request,
    Option<u16>,
    Option<u32>,
    u64,
    Option<u32>,
    bool,
);

fn summary(out: &[Http2Event]) -> Vec<Summary> {
    streams(out)
        .into_iter()
        .map(|s| {
            (
                s.stream_id,
                s.request.clone(),
                s.status,
                s.grpc_status,
                s.response_body_bytes,
                s.reset,
                s.hpack_unknown,
            )
        })
        .collect()
}

#[test]
fn any_segmentation_gives_the_same_streams() {
    for name in ["grpc_health.bin", "nginx_h2c.bin"] {
        let recs = records(name);
        let whole = run(&mut Http2Connection::new(), &recs, usize::MAX);
        for size in [1, 7, 9, 100] {
            let split: Vec<(bool, Vec<u8>)> = recs
                .iter()
                .flat_map(|(c, b)| {
                    b.chunks(size)
                        .map(|ch| (*c, ch.to_vec()))
                        .collect::<Vec<_>>()
                })
                .collect();
            let out = run(&mut Http2Connection::new(), &split, usize::MAX);
            assert_eq!(
                summary(&out),
                summary(&whole),
                "{name} in {size}-byte pieces"
            );
            assert!(errors(&out).is_empty());
        }
    }
}

#[test]
fn nginx_concurrent_streams_prior_knowledge() {
    let out = run(
        &mut Http2Connection::new(),
        &records("nginx_h2c.bin"),
        usize::MAX,
    );
    assert_eq!(errors(&out), Vec::<&str>::new());
    let s = streams(&out);
    let got: Vec<_> = s
        .iter()
        .map(|x| (x.stream_id, x.request.path.as_str(), x.status))
        .collect();
    assert_eq!(
        got,
        [
            (1, "/index.html", Some(200)),
            (3, "/missing", Some(404)),
            (5, "/echo", Some(200)),
            (7, "/big.bin", Some(200))
        ]
    );
    assert_eq!(s[0].response_body_bytes, 3027);
    assert_eq!(s[2].response_body_bytes, 15);
    assert_eq!(s[3].response_body_bytes, 100_000);
    assert_eq!(s[0].request.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(s[1].request.traceparent, None);
    assert!(s
        .iter()
        .all(|x| x.request.method == "GET" && x.grpc_status.is_none() && !x.request.is_grpc()));
}

#[test]
fn curl_prior_knowledge_single_request() {
    let out = run(
        &mut Http2Connection::new(),
        &records("nginx_curl.bin"),
        usize::MAX,
    );
    let s = streams(&out);
    assert_eq!(s.len(), 1, "{out:?}");
    assert_eq!(
        (s[0].request.path.as_str(), s[0].status),
        ("/index.html", Some(200))
    );
    assert!(s[0]
        .request
        .user_agent
        .as_deref()
        .unwrap()
        .starts_with("curl/"));
    assert_eq!(s[0].request.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(s[0].response_body_bytes, 3027);
}

#[test]
fn h2c_upgrade_stream_one_is_the_http1_request() {
    use crate::http1::{Dir, Http1Connection, Http1Event};
    // The HTTP/1 parser of the observed server reads the request and the 101,
    // then hands over: the 101 and the first frames share one write here.
    let recs = records("h2c_upgrade.bin");
    assert!(recs[1].1.starts_with(b"HTTP/1.1 101"));
    let mut h1 = Http1Connection::new(Some(Dir::Ingress));
    let mut h1_out = Vec::new();
    h1.feed(
        Dir::Ingress,
        &capped(&recs[0].1, usize::MAX, at(50)),
        &mut h1_out,
    );
    h1.feed(
        Dir::Egress,
        &capped(&recs[1].1, usize::MAX, at(60)),
        &mut h1_out,
    );
    let Some(Http1Event::H2cUpgrade {
        request,
        request_start,
        request_body_bytes,
        rest,
    }) = h1_out.pop()
    else {
        panic!("no upgrade: {h1_out:?}");
    };
    assert!(h1_out
        .iter()
        .all(|e| matches!(e, Http1Event::RequestStart { .. })));
    assert!(h1.is_opaque());
    let head_end = recs[1].1.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(rest, head_end);
    let mut conn = Http2Connection::after_upgrade(
        Http2Request::upgraded(&request),
        request_start,
        request_body_bytes,
    );
    let mut rest = vec![(false, recs[1].1[rest..].to_vec())];
    rest.extend(recs[2..].iter().cloned());
    let out = run(&mut conn, &rest, usize::MAX);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let s = streams(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].stream_id, s[0].request.path.as_str(), s[0].status),
        (1, "/up", Some(200))
    );
    assert_eq!(s[0].request.method, "GET");
    assert!(s[0]
        .request
        .user_agent
        .as_deref()
        .unwrap()
        .starts_with("curl/"));
    assert_eq!(s[0].request_start, at(50));
    assert_eq!(s[0].response_body_bytes, 9);
    assert!(!s[0].hpack_unknown);
}

/// hypercorn's upgrade as the observed curl saw it, through the HTTP/1
/// parser's hand-over; `keep` limits the server bytes after the 101.
fn hypercorn_upgrade(keep: impl Fn(&[u8]) -> usize) -> Vec<Http2Event> {
    use crate::http1::{Dir, Http1Connection, Http1Event};
    let recs = records("hypercorn_upgrade.bin");
    let mut h1 = Http1Connection::new(Some(Dir::Egress));
    let mut h1_out = Vec::new();
    h1.feed(
        Dir::Egress,
        &capped(&recs[0].1, usize::MAX, at(50)),
        &mut h1_out,
    );
    // hypercorn writes its 101 (no reason phrase) alone.
    h1.feed(
        Dir::Ingress,
        &capped(&recs[1].1, usize::MAX, at(60)),
        &mut h1_out,
    );
    let Some(Http1Event::H2cUpgrade {
        request,
        request_start,
        request_body_bytes,
        rest,
    }) = h1_out.pop()
    else {
        panic!("no upgrade: {h1_out:?}");
    };
    assert_eq!(rest, recs[1].1.len());
    let mut conn = Http2Connection::after_upgrade(
        Http2Request::upgraded(&request),
        request_start,
        request_body_bytes,
    );
    let rest: Vec<_> = recs[2..]
        .iter()
        .map(|(c, b)| (*c, if *c { b.clone() } else { b[..keep(b)].to_vec() }))
        .collect();
    run(&mut conn, &rest, usize::MAX)
}

/// Where the empty DATA frame with END_STREAM on stream 1 starts.
fn end_stream_frame(b: &[u8]) -> Option<usize> {
    b.windows(9).position(|w| w == [0, 0, 0, 0, 1, 0, 0, 0, 1])
}

#[test]
fn hypercorn_upgrade_whole() {
    let out = hypercorn_upgrade(|b| b.len());
    assert_eq!(errors(&out), Vec::<&str>::new());
    let s = streams(&out);
    assert_eq!(paths(&s), vec![(1, "/h2/ok-1".to_string())]);
    assert_eq!((s[0].status, s[0].response_body_bytes), (Some(200), 16));
    assert_eq!(s[0].request_start, at(50));
}

#[test]
fn body_of_content_length_ends_a_stream_whose_end_stream_was_not_read() {
    // curl stops reading once it has content-length bytes: the END_STREAM
    // hypercorn sends in an empty DATA frame of its own is never read.
    let out = hypercorn_upgrade(|b| end_stream_frame(b).unwrap_or(b.len()));
    assert_eq!(errors(&out), Vec::<&str>::new());
    let s = streams(&out);
    assert_eq!(paths(&s), vec![(1, "/h2/ok-1".to_string())]);
    assert_eq!((s[0].status, s[0].response_body_bytes), (Some(200), 16));
    // Ends with the read of the last body byte (the last record), not at close.
    assert_eq!(s[0].response_end_ns, at(100 * 5).exit_ns);
    // Without those body bytes it is unfinished, as before.
    let out = hypercorn_upgrade(|b| {
        end_stream_frame(b).map_or(b.len(), |_| 0) // drop the DATA record
    });
    assert!(streams(&out).is_empty());
    assert_eq!(errors(&out), vec!["stream_unfinished"]);
}

#[test]
fn joined_mid_connection_marks_unknown_and_never_guesses() {
    let recs = records("grpc_health.bin");
    for skip in 1..recs.len() {
        let out = run(&mut Http2Connection::new(), &recs[skip..], usize::MAX);
        for s in streams(&out) {
            let expected = if s.stream_id == 7 { WATCH } else { CHECK };
            assert!(
                s.request.path.is_empty() || s.request.path == expected,
                "skip {skip}: {s:?}"
            );
            assert!(s.request.method.is_empty() || s.request.method == "POST");
            assert!(s.status.is_none() || s.status == Some(200));
            assert!(s.request.traceparent.is_none() || s.stream_id == 3);
            if let Some(g) = s.grpc_status {
                assert_eq!(g, if s.stream_id == 5 { 5 } else { 0 }, "skip {skip}");
            }
        }
    }
    // Joined after the first call's request: its response is still reported.
    let out = run(&mut Http2Connection::new(), &recs[4..], usize::MAX);
    let s = streams(&out);
    assert_eq!(
        s.iter().map(|x| x.stream_id).collect::<Vec<_>>(),
        [1, 3, 5, 7, 9]
    );
    assert!(s.iter().all(|x| x.hpack_unknown));
    assert!(s[0].request.path.is_empty() && s[0].request_body_bytes == 0);
    // Watch's path was sent as a new literal after we joined: known.
    assert_eq!(s[3].request.path, WATCH);
    assert_eq!(s[3].reset, Some(8));
    // Joining is no decoding error: entries from before it are just unknown.
    assert!(
        !errors(&out).contains(&"hpack_desync"),
        "{:?}",
        errors(&out)
    );
    // Known constructor: same result.
    let out2 = run(
        &mut Http2Connection::mid_connection(),
        &recs[4..],
        usize::MAX,
    );
    assert_eq!(streams(&out2), s);
}

#[test]
fn truncated_capture_loses_sync_then_recovers() {
    let recs = records("nginx_h2c.bin");
    let out = run(&mut Http2Connection::new(), &recs, 8192);
    assert!(errors(&out).contains(&"sync_lost"), "{:?}", errors(&out));
    let s = streams(&out);
    // Headers were all in small reads: every path is right.
    for x in &s {
        let want = ["/index.html", "/missing", "/echo", "/big.bin"][(x.stream_id as usize - 1) / 2];
        assert_eq!(x.request.path, want);
    }
    // Small captures everywhere: never a wrong path or status.
    for cap in [0, 9, 16, 40, 100, 1000] {
        for name in ["grpc_health.bin", "nginx_h2c.bin", "nginx_curl.bin"] {
            let out = run(&mut Http2Connection::new(), &records(name), cap);
            for x in streams(&out) {
                assert!(
                    x.request.path.is_empty()
                        || [CHECK, WATCH, "/index.html", "/missing", "/echo", "/big.bin"]
                            .contains(&x.request.path.as_str()),
                    "{name} cap {cap}: {x:?}"
                );
                assert!(matches!(x.status, None | Some(200) | Some(404)));
            }
        }
    }
}

/// Frame bytes for synthetic cases.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.extend([kind, flags]);
    v.extend(stream.to_be_bytes());
    v.extend(payload);
    v
}

fn seg_at(data: &[u8], t: u64) -> Segment<'_> {
    Segment {
        data,
        total_len: data.len(),
        tail: &[],
        frames: &[],
        timing: Timing {
            enter_ns: t,
            exit_ns: t + 1,
        },
    }
}

#[test]
fn padding_priority_continuation_goaway() {
    let mut c = Http2Connection::new();
    let mut out = Vec::new();
    let mut client = PREFACE.to_vec();
    client.extend(frame(frame::SETTINGS, 0, 0, &[]));
    // HEADERS (PADDED | PRIORITY): :method GET, :scheme http, then the
    // block continues: :path /index.html.
    let mut p = vec![2u8]; // pad length
    p.extend([0, 0, 0, 0, 16]); // priority
    p.extend([0x82, 0x86]);
    p.extend([0, 0]);
    client.extend(frame(
        frame::HEADERS,
        frame::PADDED | frame::PRIORITY_FLAG | frame::END_STREAM,
        1,
        &p,
    ));
    client.extend(frame(frame::CONTINUATION, frame::END_HEADERS, 1, &[0x85]));
    // A second request the server will refuse by GOAWAY.
    client.extend(frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        3,
        &[0x82, 0x86, 0x84],
    ));
    c.feed(true, &seg_at(&client, 10), &mut out);
    let mut server = frame(frame::SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]);
    server.extend(frame(frame::GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
    server.extend(frame(frame::HEADERS, frame::END_HEADERS, 1, &[0x88])); // :status 200
    server.extend(frame(0xfa, 0, 1, b"unknown type"));
    server.extend(frame(
        frame::DATA,
        frame::PADDED | frame::END_STREAM,
        1,
        &[3, b'h', b'i', 0, 0, 0],
    ));
    c.feed(false, &seg_at(&server, 20), &mut out);
    c.close(&mut out);
    assert_eq!(errors(&out), ["goaway_refused"]);
    let s = streams(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].request.method.as_str(), s[0].request.path.as_str()),
        ("GET", "/index.html")
    );
    assert_eq!(
        (s[0].status, s[0].response_body_bytes, s[0].response_end_ns),
        (Some(200), 2, 21)
    );
}

#[test]
fn lost_headers_frame_marks_following_streams_unknown() {
    let mut c = Http2Connection::new();
    let mut out = Vec::new();
    let mut client = PREFACE.to_vec();
    // Stream 1 inserts :authority "x" (literal, incremental indexing).
    client.extend(frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
        &[0x82, 0x86, 0x84, 0x41, 1, b'x'],
    ));
    c.feed(true, &seg_at(&client, 10), &mut out);
    // Stream 3's HEADERS is cut after its frame header (a big block).
    let mut h3 = frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        3,
        &[0x82, 0x86, 0x84, 0x41, 1, b'y'],
    );
    let total = h3.len();
    h3.truncate(9);
    c.feed(
        true,
        &Segment {
            data: &h3,
            total_len: total,
            tail: &[],
            frames: &[],
            timing: Timing {
                enter_ns: 20,
                exit_ns: 21,
            },
        },
        &mut out,
    );
    // Stream 5 refers to index 62: "y" in truth, "x" in our stale table.
    c.feed(
        true,
        &seg_at(
            &frame(
                frame::HEADERS,
                frame::END_HEADERS | frame::END_STREAM,
                5,
                &[0x82, 0x86, 0x84, 0xbe],
            ),
            30,
        ),
        &mut out,
    );
    let mut server = frame(frame::SETTINGS, 0, 0, &[]);
    for id in [1, 3, 5] {
        server.extend(frame(
            frame::HEADERS,
            frame::END_HEADERS | frame::END_STREAM,
            id,
            &[0x88],
        ));
    }
    c.feed(false, &seg_at(&server, 40), &mut out);
    let s = streams(&out);
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].request.authority.as_deref(), Some("x"));
    assert!(!s[0].hpack_unknown);
    assert!(s[1].hpack_unknown && s[1].request.path.is_empty());
    assert!(s[2].hpack_unknown, "{:?}", s[2]);
    assert_eq!(s[2].request.authority, None, "never the stale entry");
    assert_eq!(s[2].request.path, "/");
    assert!(errors(&out).contains(&"hpack_desync"));
}

#[test]
fn stream_cap_bounds_memory() {
    let mut c = Http2Connection::new();
    let mut out = Vec::new();
    c.feed(true, &seg_at(PREFACE, 1), &mut out);
    for i in 0..(MAX_STREAMS as u32 + 10) {
        let f = frame(
            frame::HEADERS,
            frame::END_HEADERS,
            2 * i + 1,
            &[0x83, 0x86, 0x84],
        );
        c.feed(true, &seg_at(&f, 2), &mut out);
    }
    assert_eq!(c.open_streams(), MAX_STREAMS);
    assert_eq!(
        errors(&out)
            .iter()
            .filter(|e| **e == "too_many_streams")
            .count(),
        10
    );
}

#[test]
fn grpc_trailers_only_status_and_percent_decoded_message() {
    let mut c = Http2Connection::new();
    let mut out = Vec::new();
    let mut client = PREFACE.to_vec();
    // :method POST, :scheme http, :path literal, content-type literal.
    let mut block = vec![0x83, 0x86, 0x04, 6];
    block.extend(b"/a.B/C");
    block.extend([0x0f, 0x10, 16]);
    block.extend(b"application/grpc");
    client.extend(frame(frame::HEADERS, frame::END_HEADERS, 1, &block));
    client.extend(frame(frame::DATA, frame::END_STREAM, 1, &[0, 0, 0, 0, 0]));
    c.feed(true, &seg_at(&client, 10), &mut out);
    // Trailers-Only: :status 200, grpc-status 14, grpc-message "no way%21".
    let mut resp = vec![0x88, 0x00, 11];
    resp.extend(b"grpc-status");
    resp.extend([2]);
    resp.extend(b"14");
    resp.extend([0x00, 12]);
    resp.extend(b"grpc-message");
    resp.extend([9]);
    resp.extend(b"no way%21");
    let mut server = frame(frame::SETTINGS, 0, 0, &[]);
    server.extend(frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
        &resp,
    ));
    c.feed(false, &seg_at(&server, 20), &mut out);
    let s = streams(&out);
    assert_eq!(s.len(), 1, "{out:?}");
    assert!(s[0].request.is_grpc());
    assert_eq!(s[0].request.path, "/a.B/C");
    assert_eq!((s[0].status, s[0].grpc_status), (Some(200), Some(14)));
    assert_eq!(s[0].grpc_message.as_deref(), Some("no way!"));
}

/// What the kernel sends for a connection's calls (bpf/tracers/h2_frames.h):
/// each call's first `cap` bytes, and a record for every frame whose header
/// lies whole in the call but not in that prefix, or whose payload runs past
/// it unless it is DATA. Positions come from the direction's whole byte
/// stream (the client's opens with the preface).
fn kernel_view(calls: &[(bool, Vec<u8>)], cap: usize) -> Vec<(bool, Vec<u8>, usize, Vec<u8>)> {
    let mut next = [PREFACE.len(), 0]; // stream offset of the next header, by side
    let mut base = [0usize, 0]; // stream offset of the call's first byte
    calls
        .iter()
        .map(|(from_client, bytes)| {
            let side = usize::from(!from_client);
            let (c0, len) = (base[side], bytes.len());
            let prefix = bytes[..len.min(cap)].to_vec();
            let mut records = Vec::new();
            // Headers split between calls need the next call's bytes: walk
            // the headers that start in this one.
            let stream_byte = |abs: usize| -> Option<u8> {
                // Only this call and the next one in the same direction matter.
                bytes.get(abs - c0).copied().or_else(|| {
                    calls
                        .iter()
                        .filter(|(c, _)| c == from_client)
                        .flat_map(|(_, b)| b.iter().copied())
                        .nth(abs)
                })
            };
            while next[side] < c0 + len {
                let at = next[side] - c0;
                let h: Vec<u8> = (0..9).filter_map(|i| stream_byte(next[side] + i)).collect();
                if h.len() < 9 {
                    break; // the stream ends inside a header
                }
                let flen = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                let past =
                    at + 9 > prefix.len() || (h[3] != frame::DATA && at + 9 + flen > prefix.len());
                if at + 9 <= len && past {
                    let kept = if h[3] == frame::DATA {
                        0
                    } else {
                        flen.min(len - at - 9)
                    };
                    records.extend((at as u32).to_le_bytes());
                    records.extend((kept as u16).to_le_bytes());
                    records.extend(&h);
                    records.extend(&bytes[at + 9..at + 9 + kept]);
                } else if at + 9 > len && len > prefix.len() {
                    // A header the call's end cuts: what of it the call holds.
                    records.extend((at as u32).to_le_bytes());
                    records.extend(0u16.to_le_bytes());
                    records.extend(&bytes[at..]);
                    records.extend(std::iter::repeat_n(0, at + 9 - len));
                }
                next[side] += 9 + flen;
            }
            base[side] += len;
            (*from_client, prefix, len, records)
        })
        .collect()
}

/// Replays `calls` as the kernel would send them with a `cap`-byte prefix:
/// the events, how many calls had records, and how many of those ended with
/// a header the call's end cuts.
fn replay_with_records(calls: &[(bool, Vec<u8>)], cap: usize) -> (Vec<Http2Event>, usize, usize) {
    let view = kernel_view(calls, cap);
    let mut conn = Http2Connection::new();
    let mut out = Vec::new();
    for (i, (from_client, prefix, len, frames)) in view.iter().enumerate() {
        let seg = Segment {
            data: prefix,
            total_len: *len,
            tail: &[],
            frames,
            timing: at(100 * (i as u64 + 1)),
        };
        conn.feed(*from_client, &seg, &mut out);
    }
    conn.close(&mut out);
    let far = view.iter().filter(|v| !v.3.is_empty()).count();
    let cut = view
        .iter()
        .filter(|v| {
            frame::far_frames(&v.3)
                .last()
                .is_some_and(|f| f.at + 9 > v.2)
        })
        .count();
    (out, far, cut)
}

#[test]
fn frames_past_the_capture_give_the_same_streams() {
    for name in ["grpc_health.bin", "nginx_h2c.bin", "nginx_curl.bin"] {
        let recs = records(name);
        let whole = run(&mut Http2Connection::new(), &recs, usize::MAX);
        assert!(!streams(&whole).is_empty());
        for cap in [24, 30, 64, 200, 1000] {
            let (out, far, _) = replay_with_records(&recs, cap);
            assert!(
                errors(&out).is_empty(),
                "{name} cap {cap}: {:?}",
                errors(&out)
            );
            assert_eq!(summary(&out), summary(&whole), "{name} cap {cap}");
            if cap <= 64 {
                assert!(far > 0, "{name} cap {cap}: no call went past the prefix");
            }
        }
    }
}

#[test]
fn headers_cut_by_a_call_end_carry_over() {
    // Calls cut at arbitrary points, frame headers among them, with prefixes
    // longer than any frame but DATA (as the kernel's 16383 bytes are longer
    // than a header block): what a prefix leaves of a frame begun in an
    // earlier call is DATA payload.
    let (mut far_calls, mut cut) = (0, 0);
    for name in ["nginx_h2c.bin", "nginx_curl.bin"] {
        let recs = records(name);
        let whole = run(&mut Http2Connection::new(), &recs, usize::MAX);
        for piece in (900..1100).step_by(7) {
            let calls: Vec<(bool, Vec<u8>)> = recs
                .iter()
                .flat_map(|(c, b)| b.chunks(piece).map(|ch| (*c, ch.to_vec())))
                .collect();
            for cap in [300, 500] {
                let (out, far, n) = replay_with_records(&calls, cap);
                let what = format!("{name} in {piece}-byte calls, cap {cap}");
                assert!(errors(&out).is_empty(), "{what}: {:?}", errors(&out));
                assert_eq!(summary(&out), summary(&whole), "{what}");
                far_calls += far;
                cut += n;
            }
        }
    }
    assert!(far_calls > 0, "no call went past the prefix");
    assert!(cut > 0, "no header was cut by a call's end");
    println!("{far_calls} calls past the prefix, {cut} ending inside a header");
}

#[test]
fn records_that_do_not_continue_the_frames_lose_sync() {
    let recs = records("grpc_health.bin");
    let view = kernel_view(&recs, 30);
    let (i, _) = view
        .iter()
        .enumerate()
        .find(|(_, v)| !v.3.is_empty())
        .expect("a call past the prefix");
    for shift in [-1i64, 1, 9] {
        let mut conn = Http2Connection::new();
        let mut out = Vec::new();
        for (j, (from_client, prefix, len, frames)) in view.iter().enumerate() {
            let mut frames = frames.clone();
            if j == i {
                let at = u32::from_le_bytes(frames[..4].try_into().unwrap()) as i64 + shift;
                frames[..4].copy_from_slice(&(at as u32).to_le_bytes());
            }
            let seg = Segment {
                data: prefix,
                total_len: *len,
                tail: &[],
                frames: &frames,
                timing: at(100 * (j as u64 + 1)),
            };
            conn.feed(*from_client, &seg, &mut out);
        }
        conn.close(&mut out);
        assert!(
            errors(&out).contains(&"sync_lost"),
            "shift {shift}: {:?}",
            errors(&out)
        );
    }
}

#[test]
fn joined_midway_calls_with_a_request_or_response_block_name_their_writer() {
    // Every call of real clients and servers after the preface: frames, and
    // the writer named right whenever a header block says.
    let mut told = [0, 0];
    for name in ["grpc_health.bin", "nginx_curl.bin", "nginx_h2c.bin"] {
        let before = told;
        for (i, (from_client, bytes)) in records(name).iter().enumerate() {
            if bytes.starts_with(&PREFACE[..8]) {
                continue;
            }
            match midway(bytes, false) {
                Midway::FromClient(c) => {
                    assert_eq!(c, *from_client, "{name} call {i}");
                    told[usize::from(c)] += 1;
                }
                Midway::Frames => {}
                Midway::No => panic!("{name} call {i} not taken for frames: {bytes:02x?}"),
            }
        }
        assert!(told != before, "{name}: no call told its writer");
    }
    assert!(told[0] > 0 && told[1] > 0, "{told:?}");
}

#[test]
fn other_protocols_are_not_taken_for_frames_joined_midway() {
    let root = format!("{}/../../testdata", env!("CARGO_MANIFEST_DIR"));
    let mut calls = 0;
    for dir in ["postgres", "mysql", "redis", "memcached", "dns"] {
        for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            for (i, (_, bytes)) in crate::testkit::capture(dir, &name).iter().enumerate() {
                assert_eq!(midway(bytes, false), Midway::No, "{dir}/{name} call {i}");
                calls += 1;
            }
        }
    }
    for entry in std::fs::read_dir(format!("{root}/http1")).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            midway(&std::fs::read(&path).unwrap(), false),
            Midway::No,
            "{path:?}"
        );
    }
    assert!(calls > 100, "{calls}");
}

#[test]
fn joined_midway_grpc_calls_are_told_without_their_content_type() {
    let recs = records("grpc_health.bin");
    let s = streams(&run(&mut Http2Connection::new(), &recs, usize::MAX)).len();
    for skip in 4..recs.len() {
        let out = run(
            &mut Http2Connection::mid_connection(),
            &recs[skip..],
            usize::MAX,
        );
        let ss = streams(&out);
        // A call reset before any gRPC sign, first after the join, is not told.
        let signs = |x: &&Http2Stream| x.trailers || x.grpc_status.is_some();
        let first_sign = ss.iter().position(signs).unwrap_or(ss.len());
        assert!(
            ss[first_sign..].iter().all(|x| x.grpc),
            "skip {skip}: {ss:?}"
        );
        assert!(
            ss[..first_sign].iter().all(|x| x.reset.is_some()),
            "skip {skip}: {ss:?}"
        );
        if skip == 4 {
            assert_eq!(ss.len(), s);
            assert!(ss.iter().any(|x| x.request.content_type.is_none()));
        }
    }
    for name in ["nginx_curl.bin", "nginx_h2c.bin"] {
        let recs = records(name);
        for skip in 0..recs.len() {
            let out = run(
                &mut Http2Connection::mid_connection(),
                &recs[skip..],
                usize::MAX,
            );
            assert!(streams(&out).iter().all(|x| !x.grpc), "{name} skip {skip}");
        }
    }
}
