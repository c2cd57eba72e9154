"""Loopback HTTP servers for the tests: the base every stand-in server is built on, and
AudioHost, whose routes play well-behaved and hostile audio hosts."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Route = Callable[[BaseHTTPRequestHandler], None]


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no request log on stderr, and JSON answers."""

    protocol_version = "HTTP/1.1"

    def send_json(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class LoopbackServer:
    """`handler` served on a free loopback port (IPv6 for a host with ':') from a daemon
    thread, one thread per connection, until close()."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1"):
        server_cls = ThreadingHTTPServer
        if ":" in host:
            class V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6
            server_cls = V6
        self.server = server_cls((host, 0), handler)
        self.server.daemon_threads = True
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AudioHost(LoopbackServer):
    def __init__(self, host: str = "127.0.0.1"):
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(QuietHandler):
            def do_GET(self):  # noqa: N802
                path = self.path.split("?", 1)[0]
                outer.hits[path] = outer.hits.get(path, 0) + 1
                route = outer.routes.get(path)
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        super().__init__(Handler, host)

    # ---- route builders -------------------------------------------------------------
    def file(self, path: str, body: bytes, content_type: str = "audio/mpeg",
             length: bool = True) -> str:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", content_type)
            if length:
                h.send_header("Content-Length", str(len(body)))
            else:
                h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body)
            if not length:
                h.close_connection = True
        self.routes[path] = route
        return self.url(path)

    def status(self, path: str, code: int) -> str:
        def route(h):
            h.send_response(code)
            h.send_header("Content-Length", "0")
            h.end_headers()
        self.routes[path] = route
        return self.url(path)

    def fail_then_serve(self, path: str, failures: int, body: bytes) -> str:
        def route(h):
            if self.hits[path] <= failures:
                h.send_response(500)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(200)
            h.send_header("Content-Type", "audio/mpeg")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        self.routes[path] = route
        return self.url(path)

    def stall(self, path: str, body: bytes, after: int, seconds: float,
              declare_length: bool = True) -> str:
        """Send `after` bytes of a longer body, then go silent. Without declare_length the body
        has no length and ends when the connection closes (`Connection: close`)."""
        def route(h):
            h.send_response(200)
            h.send_header("Content-Type", "audio/mpeg")
            if declare_length:
                h.send_header("Content-Length", str(len(body)))
            else:
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            h.wfile.write(body[:after])
            h.wfile.flush()
            time.sleep(seconds)
        self.routes[path] = route
        return self.url(path)

    def endless(self, path: str, block: bytes, max_seconds: float = 30.0) -> str:
        """No Content-Length, blocks until the client hangs up (bounded in time)."""
        def route(h):
            h.send_response(200)
            h.send_header("Content-Type", "audio/mpeg")
            h.send_header("Connection", "close")
            h.end_headers()
            end = time.monotonic() + max_seconds
            while time.monotonic() < end:
                h.wfile.write(block)
            h.close_connection = True
        self.routes[path] = route
        return self.url(path)

    def declared(self, path: str, length: int) -> str:
        """Declares a huge Content-Length; never sends a body byte."""
        def route(h):
            h.send_response(200)
            h.send_header("Content-Type", "audio/mpeg")
            h.send_header("Content-Length", str(length))
            h.end_headers()
            time.sleep(5)
        self.routes[path] = route
        return self.url(path)

    def redirect(self, path: str, location: str) -> str:
        def route(h):
            h.send_response(302)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()
        self.routes[path] = route
        return self.url(path)
