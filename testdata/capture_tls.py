#!/usr/bin/env python3
"""Records real TLS handshakes into testdata/tls/ for the TLS record unit
tests and as fuzz seeds.

A real TLS server (`openssl s_server`, with a throwaway self-signed
certificate) behind the recording proxy (recording_proxy.py: one file per
connection, each recv() stored with its direction), and real clients
(`openssl s_client`, curl) asking for TLS 1.2 and 1.3, with and without
ALPN; and a grpcio server (BoringSSL) with Python's ssl client, TLS 1.2 and
ALPN h2, as a gRPC client would. The file name says what the server chose:
the tests check that the ServerHello reads back as that.

Run as: python3 testdata/capture_tls.py
"""
import os, socket, ssl, subprocess, tempfile, time
from concurrent import futures

from recording_proxy import Proxy, free_port

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tls")


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def s_client(port, *args, send=b""):
    subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet",
                    "-ign_eof", *args], input=send, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=20)


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        record_all(tmp)


def record_all(tmp):
    key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    # -www: an HTTP/1.0 status page for a GET, then the server closes.
    server = subprocess.Popen(["openssl", "s_server", "-accept", str(port), "-cert", cert,
                               "-key", key, "-alpn", "h2,http/1.1", "-www", "-quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        p = Proxy(port, OUT)
        get = b"GET / HTTP/1.0\r\n\r\n"
        s_client(p.port, "-tls1_3", "-alpn", "h2,http/1.1", send=get)
        p.save("tls13_alpn_hidden")
        s_client(p.port, "-tls1_2", "-alpn", "h2,http/1.1", send=get)
        p.save("tls12_alpn_h2")
        s_client(p.port, "-tls1_2", "-alpn", "http/1.1", send=get)
        p.save("tls12_alpn_http11")
        s_client(p.port, "-tls1_2", send=get)
        p.save("tls12_no_alpn")
        subprocess.run(["curl", "-sk", "--http1.1", "-o", "/dev/null", f"https://127.0.0.1:{p.port}/"],
                       timeout=20)
        p.save("tls13_curl")
    finally:
        server.terminate()
        server.wait()
    grpc_tls12(key, cert)


def grpc_tls12(key, cert):
    """A gRPC server's TLS (BoringSSL, inside grpcio): no service is needed,
    the handshake is what we record."""
    import grpc
    server = grpc.server(futures.ThreadPoolExecutor(2))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(open(key, "rb").read(), open(cert, "rb").read())]))
    server.start()
    try:
        p = Proxy(port, OUT)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["h2"])
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.port))) as s:
            assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
            # HTTP/2's preface and an empty SETTINGS frame; the server's
            # SETTINGS come back: application data both ways.
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            s.recv(65536)
        p.save("tls12_alpn_h2_grpcio")
    finally:
        server.stop(None)


if __name__ == "__main__":
    main()
