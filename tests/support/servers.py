"""Small stand-in HTTP servers whose answers a test scripts (stdlib http.server, threads)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from typing import Any, ClassVar


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers the leader probe with a leader; every other request with the next status of
    its script, and a body that echoes the request's token at a chosen offset."""

    protocol_version = "HTTP/1.1"
    script: ClassVar[list[int]] = []
    echo_at: ClassVar[int] = 0

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/status/leader":
            status, body = 200, b'"127.0.0.1:8300"'
        else:
            status = self.script.pop(0) if self.script else 500
            token = self.headers.get("X-Consul-Token", "")
            body = ("x" * self.echo_at + f"bad header X-Consul-Token={token}").encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def scripted_server(script: list[int], echo_at: int = 0) -> Iterator[Any]:
    """A server on 127.0.0.1 answering the leader probe, then ``script``'s statuses in turn
    (500 once it runs out), each with a body that echoes the request's token."""
    handler = type("Script", (_Scripted,), {"script": list(script), "echo_at": echo_at})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
