//! Table tests on real captured bytes (testdata/http1, recorded by
//! testdata/capture_http1.py from curl, urllib, nginx and python http.server).

use super::*;

fn testdata(name: &str) -> Vec<u8> {
    let path = format!("{}/../../testdata/http1/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn seg(data: &[u8], t: u64) -> Segment<'_> {
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

fn exchanges(events: &[Http1Event]) -> Vec<&Exchange> {
    events
        .iter()
        .filter_map(|e| match e {
            Http1Event::Exchange(x) => Some(x.as_ref()),
            _ => None,
        })
        .collect()
}

fn errors(events: &[Http1Event]) -> Vec<&ParseError> {
    events
        .iter()
        .filter_map(|e| match e {
            Http1Event::Error(x) => Some(x),
            _ => None,
        })
        .collect()
}

#[test]
fn curl_request_head() {
    let head = parse_request(&testdata("curl_get.req")).unwrap().unwrap();
    assert_eq!(head.method, "GET");
    assert_eq!(head.target, "/users/42?x=1");
    assert_eq!(head.version, 1);
    assert!(head.host.as_deref().unwrap().starts_with("127.0.0.1:"));
    assert!(head.user_agent.as_deref().unwrap().starts_with("curl/"));
    assert_eq!(head.framing(), Framing::None);
}

#[test]
fn post_with_traceparent_and_body() {
    let bytes = testdata("curl_post_traceparent.req");
    let head = parse_request(&bytes).unwrap().unwrap();
    assert_eq!(head.method, "POST");
    assert_eq!(
        head.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(head.framing(), Framing::Length(23));
    assert_eq!(bytes.len(), head.head_len + 23);
}

#[test]
fn urllib_request_closes() {
    let head = parse_request(&testdata("urllib_get.req")).unwrap().unwrap();
    assert_eq!(head.target, "/api/v1/items");
    assert!(head.connection_close);
}

#[test]
fn every_prefix_of_a_request_needs_more() {
    let bytes = testdata("curl_get.req");
    for cut in 0..bytes.len() {
        assert_eq!(parse_request(&bytes[..cut]), Ok(None), "cut {cut}");
        assert!(looks_like_request(&bytes[..cut]) || cut == 0, "cut {cut}");
    }
}

#[test]
fn server_side_pipelined_nginx_exchange() {
    // Requests as nginx read them (one read), responses as recorded.
    let reqs = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\nHEAD /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let resp = testdata("nginx_pipelined.resp");
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(Dir::Ingress, &seg(reqs, 10), &mut out);
    // Responses written in small pieces, as a server might.
    for (i, piece) in resp.chunks(700).enumerate() {
        c.feed(Dir::Egress, &seg(piece, 100 + i as u64), &mut out);
    }
    c.close(u64::MAX, &mut out);
    let x = exchanges(&out);
    assert_eq!(errors(&out), Vec::<&ParseError>::new(), "{out:#?}");
    assert_eq!(x.len(), 3, "{out:?}");
    assert_eq!(
        (
            x[0].request.target.as_str(),
            x[0].response.as_ref().unwrap().status
        ),
        ("/index.html", 200)
    );
    assert_eq!(
        (
            x[1].request.target.as_str(),
            x[1].response.as_ref().unwrap().status
        ),
        ("/missing", 404)
    );
    assert_eq!(
        (
            x[2].request.method.as_str(),
            x[2].response.as_ref().unwrap().status
        ),
        ("HEAD", 200)
    );
    assert_eq!(x[2].response_body_bytes, Some(0), "HEAD has no body");
    assert!(x.iter().all(|e| e.server_side));
    assert_eq!(
        x[0].response_body_bytes,
        x[0].response.as_ref().unwrap().content_length
    );
}

#[test]
fn client_side_chunked_gzip_with_truncated_capture() {
    let resp = testdata("nginx_gzip_chunked.resp");
    let mut c = Http1Connection::new(Some(Dir::Egress));
    let mut out = Vec::new();
    c.feed(
        Dir::Egress,
        &seg(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", 1),
        &mut out,
    );
    // Capture limited to the first 260 bytes; the tail carries the end.
    let cap = 260;
    let tail = &resp[resp.len() - 32..];
    let s = Segment {
        data: &resp[..cap],
        total_len: resp.len(),
        tail,
        frames: &[],
        timing: Timing {
            enter_ns: 5,
            exit_ns: 6,
        },
    };
    c.feed(Dir::Ingress, &s, &mut out);
    let x = exchanges(&out);
    assert_eq!(x.len(), 1, "{out:?}");
    assert!(x[0].response.as_ref().unwrap().chunked);
    assert!(!x[0].server_side);
    assert_eq!(x[0].response_end_ns, 6);
}

#[test]
fn python_http10_until_close() {
    let resp = testdata("pyserver_http10.resp");
    let mut c = Http1Connection::new(None);
    let mut out = Vec::new();
    c.feed(
        Dir::Ingress,
        &seg(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", 1),
        &mut out,
    );
    c.feed(Dir::Egress, &seg(&resp, 3), &mut out);
    let x = exchanges(&out);
    assert_eq!(x.len(), 1, "{out:?}");
    assert_eq!(x[0].response.as_ref().unwrap().version, 0);
    assert!(x[0].server_side, "role inferred from a request arriving");
}

#[test]
fn large_body_counted_not_captured() {
    let body_len = 10 * 1024 * 1024;
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\n\r\n");
    let mut first = head.clone().into_bytes();
    first.extend(std::iter::repeat_n(b'a', 100));
    // First read: head plus body start, captured up to 4 KiB of 64 KiB.
    let s = Segment {
        data: &first,
        total_len: head.len() + 65536,
        tail: &[],
        frames: &[],
        timing: Timing::default(),
    };
    c.feed(Dir::Ingress, &s, &mut out);
    let mut left = body_len - 65536;
    while left > 0 {
        let n = left.min(65536);
        let s = Segment {
            data: b"aaaa",
            total_len: n,
            tail: &[],
            frames: &[],
            timing: Timing::default(),
        };
        c.feed(Dir::Ingress, &s, &mut out);
        left -= n;
    }
    c.feed(
        Dir::Egress,
        &seg(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", 9),
        &mut out,
    );
    let x = exchanges(&out);
    assert_eq!(x.len(), 1, "{out:?}");
    assert_eq!(x[0].request_body_bytes, body_len as u64);
    assert_eq!(x[0].response_body_bytes, Some(2));
}

#[test]
fn no_body_statuses_do_not_swallow_next_response() {
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(
        Dir::Ingress,
        &seg(
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
            1,
        ),
        &mut out,
    );
    c.feed(
        Dir::Egress,
        &seg(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", 2),
        &mut out,
    );
    let codes: Vec<u16> = exchanges(&out)
        .iter()
        .map(|x| x.response.as_ref().unwrap().status)
        .collect();
    assert_eq!(codes, vec![204, 304, 500]);
}

#[test]
fn garbage_is_an_error_and_no_exchange() {
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(
        Dir::Ingress,
        &seg(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1),
        &mut out,
    );
    c.feed(Dir::Ingress, &seg(b"more garbage", 2), &mut out);
    assert!(exchanges(&out).is_empty());
    assert_eq!(errors(&out), vec![&ParseError::NotHttp]);
    assert!(c.is_opaque());
}

#[test]
fn truncated_request_then_close_is_counted() {
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(Dir::Ingress, &seg(b"GET /x HTT", 1), &mut out);
    c.close(u64::MAX, &mut out);
    assert!(exchanges(&out).is_empty());
    assert_eq!(errors(&out), vec![&ParseError::Truncated]);
}

#[test]
fn unknown_role_mid_stream_waits_for_a_message_start() {
    let mut c = Http1Connection::new(None);
    let mut out = Vec::new();
    c.feed(Dir::Egress, &seg(b"...tail of an old body", 1), &mut out);
    c.feed(
        Dir::Ingress,
        &seg(b"GET /next HTTP/1.1\r\n\r\n", 2),
        &mut out,
    );
    c.feed(
        Dir::Egress,
        &seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3),
        &mut out,
    );
    assert_eq!(exchanges(&out).len(), 1);
}

#[test]
fn upgrade_makes_the_connection_opaque() {
    let mut c = Http1Connection::new(Some(Dir::Egress));
    let mut out = Vec::new();
    c.feed(
        Dir::Egress,
        &seg(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            1,
        ),
        &mut out,
    );
    c.feed(
        Dir::Ingress,
        &seg(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            2,
        ),
        &mut out,
    );
    c.feed(Dir::Ingress, &seg(b"\x81\x05hello", 3), &mut out);
    assert_eq!(exchanges(&out).len(), 1);
    assert!(errors(&out).is_empty());
    assert!(c.is_opaque());
}

#[test]
fn byte_at_a_time_keeps_counts() {
    let resp = testdata("nginx_pipelined.resp");
    let reqs = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\nHEAD /index.html HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut c = Http1Connection::new(None);
    let mut out = Vec::new();
    for b in reqs.chunks(1) {
        c.feed(Dir::Ingress, &seg(b, 1), &mut out);
    }
    for b in resp.chunks(1) {
        c.feed(Dir::Egress, &seg(b, 2), &mut out);
    }
    assert_eq!(exchanges(&out).len(), 3, "{:?}", errors(&out));
}

#[test]
fn tracestate_lines_are_combined() {
    let head = parse_request(b"GET / HTTP/1.1\r\ntracestate: a=1\r\nTraceState: b=2\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(head.tracestate.as_deref(), Some("a=1,b=2"));
}

#[test]
fn stray_crlf_between_requests_is_ignored() {
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(
        Dir::Ingress,
        &seg(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nok\r\n", 1),
        &mut out,
    );
    c.feed(
        Dir::Egress,
        &seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2),
        &mut out,
    );
    c.feed(
        Dir::Ingress,
        &seg(b"\r\nGET /b HTTP/1.1\r\n\r\n", 3),
        &mut out,
    );
    c.feed(
        Dir::Egress,
        &seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4),
        &mut out,
    );
    assert_eq!(errors(&out), Vec::<&ParseError>::new());
    assert_eq!(exchanges(&out).len(), 2);
}

#[test]
fn h2c_upgrade_hands_over_at_the_end_of_the_101() {
    // curl --http2 against a python-h2 server (testdata/capture_http2.py).
    let recs = crate::testkit::capture("http2", "h2c_upgrade.bin");
    let resp = &recs[1].1;
    let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        resp.len() > head_end,
        "frames follow the 101 in the same read"
    );
    for observed_client in [false, true] {
        let (req_dir, resp_dir) = if observed_client {
            (Dir::Egress, Dir::Ingress)
        } else {
            (Dir::Ingress, Dir::Egress)
        };
        let mut c = Http1Connection::new(None);
        let mut out = Vec::new();
        c.feed(req_dir, &seg(&recs[0].1, 1), &mut out);
        c.feed(resp_dir, &seg(resp, 2), &mut out);
        // What follows is HTTP/2: never parsed as HTTP/1.
        for (from_client, bytes) in &recs[2..] {
            let dir = if *from_client { req_dir } else { resp_dir };
            c.feed(dir, &seg(bytes, 3), &mut out);
        }
        c.close(u64::MAX, &mut out);
        assert_eq!(errors(&out), Vec::<&ParseError>::new());
        assert!(exchanges(&out).is_empty(), "stream 1 is reported by HTTP/2");
        let ups: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                Http1Event::H2cUpgrade { request, rest, .. } => Some((request, *rest)),
                _ => None,
            })
            .collect();
        assert_eq!(ups.len(), 1);
        assert_eq!((ups[0].0.target.as_str(), ups[0].1), ("/up", head_end));
    }
}

#[test]
fn a_101_head_alone_hands_over_at_its_end() {
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(
        Dir::Ingress,
        &seg(b"GET /x HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", 1),
        &mut out,
    );
    let head = b"HTTP/1.1 101 \r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n";
    c.feed(Dir::Egress, &seg(head, 2), &mut out);
    assert!(matches!(
        out.last(),
        Some(Http1Event::H2cUpgrade { rest, .. }) if *rest == head.len()
    ));
}

/// `bytes` read in one call and captured up to `cap` bytes, as the kernel
/// side sends it: the prefix and the last 32 bytes.
fn cut_seg(bytes: &[u8], cap: usize, t: u64) -> Segment<'_> {
    Segment {
        data: &bytes[..cap.min(bytes.len())],
        total_len: bytes.len(),
        tail: &bytes[bytes.len() - 32..],
        frames: &[],
        timing: Timing {
            enter_ns: t,
            exit_ns: t + 1,
        },
    }
}

const OK_EMPTY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

#[test]
fn request_head_past_the_capture_still_makes_an_exchange() {
    // curl with a 6000-byte cookie: 6110 bytes of head, 4096 captured. Read
    // whole, or as nginx does, 1 KiB first and the rest into a larger buffer.
    let req = testdata("curl_big_cookie.req");
    for first in [0, 1024] {
        let mut c = Http1Connection::new(Some(Dir::Ingress));
        let mut out = Vec::new();
        if first > 0 {
            c.feed(Dir::Ingress, &seg(&req[..first], 1), &mut out);
        }
        c.feed(Dir::Ingress, &cut_seg(&req[first..], 4096, 2), &mut out);
        c.feed(Dir::Egress, &seg(OK_EMPTY, 4), &mut out);
        // The connection goes on: the next request is read as usual.
        c.feed(Dir::Ingress, &seg(&testdata("curl_get.req"), 6), &mut out);
        c.feed(Dir::Egress, &seg(OK_EMPTY, 8), &mut out);
        assert_eq!(errors(&out), Vec::<&ParseError>::new(), "read from {first}");
        let x = exchanges(&out);
        assert_eq!(x.len(), 2, "{out:?}");
        assert_eq!(x[0].request.method, "GET");
        assert_eq!(x[0].request.target, "/account?tab=2");
        assert!(x[0]
            .request
            .user_agent
            .as_deref()
            .unwrap()
            .starts_with("curl/"));
        assert_eq!(x[0].request_start.enter_ns, if first > 0 { 1 } else { 2 });
        assert_eq!(x[1].request.target, "/users/42?x=1");
    }
}

#[test]
fn request_head_past_the_capture_continued_in_the_next_read() {
    // The head goes on in the next read (its end not in this one's tail): its
    // whole lines make the request, the rest of it is skipped.
    let req = testdata("curl_big_cookie.req");
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(Dir::Ingress, &cut_seg(&req[..5000], 4096, 1), &mut out);
    c.feed(Dir::Ingress, &seg(&req[5000..], 3), &mut out);
    c.feed(Dir::Egress, &seg(OK_EMPTY, 5), &mut out);
    assert_eq!(errors(&out), Vec::<&ParseError>::new());
    let x = exchanges(&out);
    assert_eq!(x.len(), 1, "{out:?}");
    assert_eq!(x[0].request.target, "/account?tab=2");
    assert_eq!(x[0].response.as_ref().unwrap().status, 200);
}

#[test]
fn a_head_past_the_capture_without_a_whole_line_is_lost() {
    let req = testdata("curl_big_cookie.req");
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(Dir::Ingress, &cut_seg(&req, 10, 1), &mut out);
    assert_eq!(errors(&out), vec![&ParseError::Truncated]);
}

/// A server-side exchange of `GET /` answered by `response` (fed as given),
/// then a second one answered with OK_EMPTY: the exchanges and errors.
fn serve_then_one_more(response: &[Segment<'_>]) -> (Vec<Exchange>, Vec<ParseError>) {
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(
        Dir::Ingress,
        &seg(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1),
        &mut out,
    );
    for s in response {
        c.feed(Dir::Egress, s, &mut out);
    }
    c.feed(
        Dir::Ingress,
        &seg(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n", 50),
        &mut out,
    );
    c.feed(Dir::Egress, &seg(OK_EMPTY, 60), &mut out);
    let x = exchanges(&out).into_iter().cloned().collect();
    (x, errors(&out).into_iter().cloned().collect())
}

#[test]
fn response_head_past_the_capture_written_with_its_body() {
    // nginx (sendfile off, 6000 bytes of add_header): head and body in one
    // writev; its Content-Length comes early, so the body size is known.
    let nginx = testdata("nginx_big_head.resp");
    let (x, errs) = serve_then_one_more(&[cut_seg(&nginx, 4096, 10)]);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(x.len(), 2);
    assert_eq!(x[0].response.as_ref().unwrap().status, 200);
    assert_eq!(
        (x[0].response_body_bytes, x[0].response_end_ns),
        (Some(45), 11)
    );
    assert_eq!(x[1].request.target, "/2");
    // python http.server, buffered: one write, Content-Length past the cut.
    let py = testdata("pyserver_big_head.resp");
    let (x, errs) = serve_then_one_more(&[cut_seg(&py, 4096, 10)]);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(x.len(), 2);
    assert_eq!(x[0].response.as_ref().unwrap().status, 200);
    assert_eq!((x[0].response_body_bytes, x[0].response_end_ns), (None, 11));
    assert_eq!(x[1].response.as_ref().unwrap().status, 200);
}

#[test]
fn a_body_after_a_cut_head_is_skipped_not_taken_for_the_next_message() {
    // python http.server unbuffered: the head alone (its Content-Length past
    // the cut), then the body. Without a length the body was read "until
    // close" and every later response with it.
    let py = testdata("pyserver_big_head.resp");
    let head_end = py.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (x, errs) =
        serve_then_one_more(&[cut_seg(&py[..head_end], 4096, 10), seg(&py[head_end..], 20)]);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(x.len(), 2, "{x:?}");
    assert_eq!((x[0].response_body_bytes, x[0].response_end_ns), (None, 11));
    assert_eq!(x[1].response.as_ref().unwrap().status, 200);
}

#[test]
fn a_chunked_body_after_a_cut_head_ends_at_its_last_chunk() {
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Big: ".to_vec();
    resp.extend(std::iter::repeat_n(b'z', 6000));
    resp.extend_from_slice(b"\r\n\r\n5\r\nhello\r\n");
    let (x, errs) = serve_then_one_more(&[
        cut_seg(&resp, 4096, 10),
        seg(b"5\r\nworld\r\n", 20),
        seg(b"0\r\n\r\n", 30),
    ]);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(x.len(), 2);
    assert_eq!((x[0].response_body_bytes, x[0].response_end_ns), (None, 31));
    // Its last chunk in the same write: it ends there.
    resp.extend_from_slice(b"0\r\n\r\n");
    let (x, errs) = serve_then_one_more(&[cut_seg(&resp, 4096, 10)]);
    assert_eq!(
        (x.len(), x.first().map(|x| x.response_end_ns)),
        (2, Some(11)),
        "{errs:?}"
    );
}

#[test]
fn a_switch_whose_head_runs_past_the_capture_is_lost() {
    // Where the new protocol starts is past the capture.
    let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-Big: ".to_vec();
    resp.extend(std::iter::repeat_n(b'z', 6000));
    resp.extend_from_slice(b"\r\n\r\n\x81\x05hello-and-more-websocket-frames-here");
    let (x, errs) = serve_then_one_more(&[cut_seg(&resp, 4096, 10)]);
    assert_eq!(errs, vec![ParseError::Truncated]);
    assert!(x
        .iter()
        .all(|x| x.response.as_ref().is_none_or(|r| r.status != 101)));
}

#[test]
fn a_response_cut_by_the_close_is_reported_cut() {
    // An event stream the client gave up on: head and two chunks, no last chunk.
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(
        Dir::Ingress,
        &seg(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n", 10),
        &mut out,
    );
    c.feed(
        Dir::Egress,
        &seg(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 20),
        &mut out,
    );
    c.feed(Dir::Egress, &seg(b"9\r\ndata: 0\n\n\r\n", 30), &mut out);
    c.feed(Dir::Egress, &seg(b"9\r\ndata: 1\n\n\r\n", 40), &mut out);
    assert!(exchanges(&out).is_empty(), "the stream goes on");
    c.close(50, &mut out);
    let x = exchanges(&out);
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].response.as_ref().map(|r| r.status), Some(200));
    assert!(!x[0].response_complete);
    assert_eq!(x[0].response_end_ns, 41, "the last byte seen");
    assert_eq!(x[0].response_body_bytes, Some(28));
    assert_eq!(errors(&out), Vec::<&ParseError>::new());

    // Content-Length framing, cut the same way.
    let mut c = Http1Connection::new(Some(Dir::Egress));
    let mut out = Vec::new();
    c.feed(
        Dir::Egress,
        &seg(b"GET /big HTTP/1.1\r\n\r\n", 10),
        &mut out,
    );
    c.feed(
        Dir::Ingress,
        &seg(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            20,
        ),
        &mut out,
    );
    c.close(30, &mut out);
    let x = exchanges(&out);
    assert_eq!(
        (x.len(), x[0].response_complete, x[0].response_body_bytes),
        (1, false, Some(10))
    );
    assert!(!x[0].server_side);
}

#[test]
fn requests_the_close_left_unanswered_are_reported_in_order() {
    let mut c = Http1Connection::new(Some(Dir::Ingress));
    let mut out = Vec::new();
    c.feed(
        Dir::Ingress,
        &seg(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234", 10),
        &mut out,
    );
    c.feed(
        Dir::Egress,
        &seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 20),
        &mut out,
    );
    c.close(90, &mut out);
    let x = exchanges(&out);
    let got: Vec<_> = x
        .iter()
        .map(|x| {
            (
                x.request.target.as_str(),
                x.response.as_ref().map(|r| r.status),
                x.response_complete,
                x.response_end_ns,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/a", Some(200), true, 21),
            ("/b", None, false, 90),
            ("/c", None, false, 90),
        ]
    );
    assert_eq!(x[2].request_body_bytes, 5, "the part of the body that came");
    // Every exchange answers a request start (their contexts pair in order).
    let starts = out
        .iter()
        .filter(|e| matches!(e, Http1Event::RequestStart { .. }))
        .count();
    assert_eq!(starts, 3);
    // A connection that closes with nothing waiting reports nothing more.
    let before = out.len();
    c.close(95, &mut out);
    assert_eq!(out.len(), before);
}

/// node's chunked upload (a 1000-byte chunk with the head, a 70000-byte one,
/// a 1-byte one and the end), as node's client writes it (1104 and 70020
/// bytes) and as node's server reads it (1104, 65536 and 4484 bytes), each
/// captured up to 4096 bytes plus its tail: the body is followed to its end
/// through the tail, without losing the chunk framing.
#[test]
fn chunked_upload_in_big_cut_calls() {
    let head = b"POST /up0 HTTP/1.1\r\nHost: 127.0.0.1:18090\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut body = Vec::new();
    body.extend_from_slice(b"3e8\r\n");
    body.extend_from_slice(&[b'x'; 1000]);
    body.extend_from_slice(b"\r\n11170\r\n");
    body.extend_from_slice(&[b'y'; 70000]);
    body.extend_from_slice(b"\r\n1\r\nz\r\n0\r\n\r\n");
    let mut all = head.to_vec();
    all.extend_from_slice(&body);
    let first = head.len() + 5 + 1000 + 2;
    for (dir, cuts) in [
        (Dir::Egress, vec![first]),
        (Dir::Ingress, vec![first, first + 65536]),
    ] {
        let mut c = Http1Connection::new(Some(dir));
        let mut out = Vec::new();
        let mut from = 0;
        for (i, to) in cuts.into_iter().chain([all.len()]).enumerate() {
            c.feed(dir, &cut_seg(&all[from..to], 4096, 10 * i as u64), &mut out);
            from = to;
        }
        c.feed(dir.flip(), &seg(OK_EMPTY, 40), &mut out);
        assert_eq!(errors(&out), Vec::<&ParseError>::new(), "{dir:?}");
        let x = exchanges(&out);
        assert_eq!(x.len(), 1, "{dir:?}: {out:?}");
        assert_eq!(x[0].request_body_bytes, body.len() as u64, "{dir:?}");
    }
}
