"""One small HTTP server per replica: ``/healthz``, ``/readyz`` and ``/metrics``.

The standard library's :class:`~http.server.ThreadingHTTPServer` in a daemon thread of
the beat process; no dependency. Each path is a function of the request's ``Accept``
header returning a :class:`Response`; any other path answers 404, and any method other
than GET and HEAD answers 405: nothing here writes. Requests are not logged (probes come
every few seconds); a request that stalls is dropped after ``REQUEST_TIMEOUT`` seconds.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from celery.utils.log import get_logger

__all__ = ["HttpServer", "Response", "serve"]

logger = get_logger("safe_redbeat")

#: Seconds a connection may take to send its request.
REQUEST_TIMEOUT = 10.0
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT

    @classmethod
    def text(cls, status: int, line: str) -> Response:
        return cls(status, (line + "\n").encode())


#: A path's handler: the request's Accept header in, the response out.
Route = Callable[[str], Response]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: Mapping[str, Route] = {}


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "safe_redbeat"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse(self) -> None:
        response = Response.text(405, "method not allowed: this server only reads (GET, HEAD)")
        self._send(response, body=True, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _answer(self, *, body: bool) -> None:
        path = urlsplit(self.path).path
        route = self.server.routes.get(path)
        if route is None:
            known = ", ".join(sorted(self.server.routes))
            response = Response.text(404, f"not found: {path} (this server has {known})")
        else:
            try:
                response = route(self.headers.get("Accept", ""))
            except Exception as exc:  # a bug must not take the server down
                logger.exception("beat: HTTP %s failed", path)
                response = Response.text(500, f"error: {type(exc).__name__}: {exc}")
        self._send(response, body=body)

    def _send(self, response: Response, *, body: bool, extra: Mapping[str, str] = {}) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # one line per probe would drown the beat log

    def log_error(self, format: str, *args: Any) -> None:
        logger.debug("beat: HTTP: " + format, *args)


class HttpServer:
    """A running server; :meth:`close` stops it and frees the port."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def addr(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "") -> str:
        """``http://addr:port/path`` (the address in brackets for IPv6)."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return sorted(self._server.routes)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(addr: str, port: int, routes: Mapping[str, Route]) -> HttpServer:
    """Serve ``routes`` on ``addr:port`` (port 0: any free one) from a daemon thread.

    OSError (address in use, not an address of this host) is left to the caller.
    """
    kind = _Server6 if ":" in addr else _Server
    server = kind((addr, port), _Handler)
    server.routes = dict(routes)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.5},
        name="safe_redbeat-http",
        daemon=True,
    )
    thread.start()
    return HttpServer(server, thread)
