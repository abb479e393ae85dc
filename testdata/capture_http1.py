#!/usr/bin/env python3
"""Records real HTTP/1 traffic into testdata/http1/ for the parser unit tests.

Requests are what real clients (curl, python urllib) send to a listening
socket; responses are what real servers (nginx, python http.server) answer.
Run as: python3 testdata/capture_http1.py <nginx_port> <python_server_port>
with nginx serving index.html (and gzip on) and http.server serving the same dir.

nginx_big_head.resp and pyserver_big_head.resp (response heads past the 4 KiB
capture) were recorded with record_response from nginx 1.22 with `sendfile off`
and three `add_header X-Policy-N "<2000 bytes>" always;`, and from the
BIG_HEAD_SERVER of tests/integration/test_http1.py in its "one-call" mode.
"""
import socket, subprocess, sys, threading, os

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "http1")


def record_request(client_cmd, name):
    """Accept one connection, store what the client sends, answer 200."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    proc = subprocess.Popen([c.replace("PORT", str(port)) for c in client_cmd],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn, _ = srv.accept()
    conn.settimeout(2)
    data = b""
    try:
        while b"\r\n\r\n" not in data or (b"Content-Length" in data and len(data) < 20 + int(data.split(b"Content-Length: ")[1].split(b"\r\n")[0]) + data.index(b"\r\n\r\n")):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    conn.close()
    proc.wait(5)
    open(os.path.join(OUT, name), "wb").write(data)


def record_response(port, request, name):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    s.settimeout(2)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    open(os.path.join(OUT, name), "wb").write(data)


if __name__ == "__main__":
    nginx, pyserv = int(sys.argv[1]), int(sys.argv[2])
    os.makedirs(OUT, exist_ok=True)
    record_request(["curl", "-s", "http://127.0.0.1:PORT/users/42?x=1"], "curl_get.req")
    record_request(["curl", "-s", "-X", "POST", "-H", "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "-d", "name=alice&token=s3cret", "http://127.0.0.1:PORT/form"], "curl_post_traceparent.req")
    record_request(["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:PORT/api/v1/items')"],
                   "urllib_get.req")
    # A head past the default 4 KiB capture: a 6000-byte session cookie.
    record_request(["curl", "-s", "-H", "Cookie: session=" + "c" * 6000,
                    "http://127.0.0.1:PORT/account?tab=2"], "curl_big_cookie.req")
    # nginx keep-alive: two requests in one write (pipelined), then a HEAD.
    record_response(nginx, b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
                           b"HEAD /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "nginx_pipelined.resp")
    record_response(nginx, b"GET /index.html HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
                    "nginx_gzip_chunked.resp")
    record_response(pyserv, b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", "pyserver_http10.resp")
