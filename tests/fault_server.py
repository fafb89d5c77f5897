"""A local HTTP server (127.0.0.1 only) whose paths misbehave on purpose, for the downloader's tests.

Each route serves a body with one behaviour:
  ok        the body (Range requests answered with 206 when `ranges=True`)
  404/410   that status
  stall     headers, then silence for `stall_s` seconds (longer than the client's read timeout)
  drip      the body one byte every `drip_s` seconds (never idle long enough to trip a read timeout)
  truncate  Content-Length of the whole body, but only half of it, then close
  reset     headers and a few bytes, then a TCP reset (SO_LINGER 0)
  flaky     503 for the first `fail_first` requests, then ok
  half      first request: half the body, then close (with Accept-Ranges); then ok with Range support
  redirect  302 to `location`
HEAD answers an ok route's headers (enough for huggingface_hub's metadata request).
The server counts requests per path, records Range headers, and shuts itself down after `lifetime_s`.
"""
from __future__ import annotations

import hashlib
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""                 # what an ok answer carries
    content_type: str = "application/octet-stream"  # the Content-Type header
    behaviour: str = "ok"             # see the module docstring
    ranges: bool = True               # answer Range requests with 206 and say Accept-Ranges: bytes
    fail_first: int = 0               # for "flaky": how many requests fail before it works
    stall_s: float = 3.0              # for "stall": how long to stay silent
    drip_s: float = 0.05              # for "drip": seconds between bytes
    location: str = ""                # for "redirect": where to
    headers: dict | None = None       # extra response headers (e.g. the HF hub's X-Repo-Commit)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def _headers(self, code: int, route: Route, length: int, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", '"%s"' % hashlib.sha1(route.body).hexdigest())
        for k, v in {**(route.headers or {}), **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()

    def _sleep(self, seconds: float) -> None:
        self.server.stopping.wait(seconds)

    def _send_ok(self, route: Route) -> None:
        body, rng = route.body, self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        etag = '"%s"' % hashlib.sha1(body).hexdigest()
        if rng and route.ranges and (not if_range or if_range == etag) and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(body):
                self._headers(416, route, 0, {"Content-Range": f"bytes */{len(body)}"})
                return
            self._headers(206, route, len(body) - start,
                          {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
            self.wfile.write(body[start:])
            return
        self._headers(200, route, len(body))
        self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None or route.behaviour != "ok":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._headers(200, route, len(route.body))

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        with self.server.lock:
            self.server.counts[path] += 1
            n = self.server.counts[path]
            self.server.range_headers.append((path, self.headers.get("Range")))
        route = self.server.routes.get(path)
        if route is None or route.behaviour in ("404", "410"):
            code = 410 if route is not None and route.behaviour == "410" else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            return
        b = route.behaviour
        if b == "redirect":
            self.send_response(302)
            self.send_header("Location", route.location)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
        elif b == "stall":
            self._headers(200, route, len(route.body))
            self.wfile.flush()
            self._sleep(route.stall_s)
        elif b == "drip":
            self._headers(200, route, len(route.body))
            for i in range(len(route.body)):
                if self.server.stopping.is_set():
                    return
                self.wfile.write(route.body[i:i + 1])
                self.wfile.flush()
                self._sleep(route.drip_s)
        elif b == "truncate" or (b == "half" and n == 1):
            self._headers(200, route, len(route.body))
            self.wfile.write(route.body[: len(route.body) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif b == "reset":
            self._headers(200, route, len(route.body))
            self.wfile.write(route.body[:16])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif b == "flaky" and n <= route.fail_first:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
        else:
            self._send_ok(route)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:  # a client that hung up is expected here
        pass


class FaultServer:
    """A threaded HTTP server on 127.0.0.1:<free port>; use as a context manager."""

    def __init__(self, lifetime_s: float = 60.0):
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.routes, self.httpd.counts = {}, Counter()
        self.httpd.range_headers, self.httpd.lock = [], threading.Lock()
        self.httpd.stopping = threading.Event()
        self.lifetime_s = lifetime_s
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    @property
    def counts(self) -> Counter:
        """Return requests per path so far."""
        return self.httpd.counts

    @property
    def range_headers(self) -> list[tuple[str, str | None]]:
        """Return (path, Range header) of every request so far."""
        return self.httpd.range_headers

    def add(self, path: str, body: bytes = b"", **kw) -> str:
        """Serve `path` as described by Route(body, **kw); returns its full URL."""
        self.httpd.routes[path] = Route(body=body, **kw)
        return self.url + path

    def start(self) -> "FaultServer":
        """Start serving in a background thread; returns self."""
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent): wakes stalled handlers, closes the socket."""
        if self.httpd.stopping.is_set():
            return
        self.httpd.stopping.set()
        self._timer.cancel()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def closed_port_url() -> str:
    """Return an http URL on 127.0.0.1 where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"
