"""Checks of the test harness itself, without the agent.

The agent tests rely on preconditions about the real servers and clients (curl reuses
its connection, nginx answers pipelined requests, python's http.server answers
HTTP/1.0 ...). If one of those broke, an agent test could fail or pass for the wrong
reason, so they are asserted here on their own. No root needed for these.
"""


from conftest import (BIG_SIZE, curl, curl_get, curl_head_204_get, curl_keepalive,
                      free_port, pipeline_get, port_open, proc_exe_name, raw_exchange, report,
                      stop_process,
                      urllib_request)


def test_python_http_server_http10(http_server):
    srv = http_server()
    assert proc_exe_name(srv.pid).startswith("python"), proc_exe_name(srv.pid)
    ok = curl_get(srv.url(srv.files[0]))
    missing = curl_get(srv.url("/nope.txt"))
    old = curl_get(srv.url(srv.files[1]), "--http1.0")
    report("http.server answers", sum(r["code"] is not None for r in (ok, missing, old)), 3)
    assert (ok["code"], missing["code"], old["code"]) == (200, 404, 200)
    # curl sends HTTP/1.1 by default and HTTP/1.0 with --http1.0; the server answers 1.0.
    assert ok["request_version"] == "1.1" and old["request_version"] == "1.0"
    assert ok["response_version"] == "1.0"
    # one connection per request: a second URL in the same curl needs a new connect
    codes, connects = curl_keepalive(srv.url(srv.files[2]), 3)
    assert codes == [200] * 3 and connects == 3


def test_python_http_server_http11_keepalive(http_server):
    srv = http_server(protocol="HTTP/1.1")
    r = curl_get(srv.url(srv.files[0]))
    assert r["code"] == 200 and r["response_version"] == "1.1"
    codes, connects = curl_keepalive(srv.url(srv.files[1]), 5)
    report("python HTTP/1.1 keep-alive connects", connects, 1)
    assert codes == [200] * 5 and connects == 1


def test_python_http_server_answers_garbage_with_400(http_server):
    """What the agent sees in test (g). For a request line it cannot parse, python's
    http.server falls back to HTTP/0.9 and answers an HTML error page with NO status
    line and no headers: the reply is not an HTTP/1.x response either."""
    srv = http_server()
    garbage = raw_exchange(srv.port, b"\x00\xff" + bytes(range(1, 200)))
    truncated = raw_exchange(srv.port, b"GET /x HTT")
    print("garbage ->", garbage[:40], "| truncated ->", truncated[:40])
    for reply in (garbage, truncated):
        assert b"Error code: 400" in reply and not reply.startswith(b"HTTP/")


def test_nginx_helper(nginx):
    ngx = nginx()
    workers = ngx.worker_pids()
    assert len(workers) == 1 and ngx.master_pid not in workers
    assert proc_exe_name(workers[0]) == "nginx"

    assert curl_get(ngx.url("/index.html"))["code"] == 200
    assert curl_get(ngx.url("/missing"))["code"] == 404
    assert curl_get(ngx.url("/status204"))["code"] == 204
    assert curl_get(ngx.url("/err"))["code"] == 500
    for path in ("/big.bin", "/nosendfile/big.bin"):
        cp = curl(ngx.url(path), "-o", "/dev/null", "-w", "%{http_code} %{size_download}")
        report(f"bytes of {path}", cp.stdout.split()[1], BIG_SIZE)
        assert cp.stdout.split() == ["200", str(BIG_SIZE)]
    status, body = urllib_request(ngx.url("/upload"), data=b"x" * BIG_SIZE, method="POST")
    assert (status, body) == (200, b"ok\n")

    codes, connects = curl_keepalive(ngx.url("/small.txt"), 30)
    report("nginx keep-alive: responses", len(codes), 30)
    assert codes == [200] * 30 and connects == 1

    codes, connects, _ = curl_head_204_get(ngx.port)
    assert codes == [200, 204, 200] and connects == 1

    resp = pipeline_get(ngx.port, [f"/p{i}.txt" for i in range(10)])
    report("pipelined responses", len(resp), 10)
    assert [c for c, _ in resp] == [200] * 10
    assert [b for _, b in resp] == [f"pipelined file {i}\n".encode() for i in range(10)]


def test_nginx_stops_cleanly(nginx):
    ngx = nginx()
    port = ngx.port
    stop_process(ngx.proc)
    assert not port_open(port)


def test_free_port_is_bindable():
    import socket
    p = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", p))
