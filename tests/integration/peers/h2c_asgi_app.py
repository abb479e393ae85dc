"""ASGI app for hypercorn (h2c via ``Upgrade: h2c``, h2 over TLS): paths under
/h2/ok* answer 200, anything else 404, each with a short text body."""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    status = 200 if path.startswith("/h2/ok") else 404
    body = f"HTTP/{scope['http_version']} {path}\n".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
