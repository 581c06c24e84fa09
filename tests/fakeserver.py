"""A scriptable stand-in for a SpiroFS server, for what the real one cannot do.

It speaks just enough HTTP/1.1 to receive a multipart upload and answer
with an event stream, and lets a test script the answer: any status, body,
content type, raw bytes in any chunking, delays, and a connection dropped
at any point.  Everything it received is kept for assertions.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    fields: dict[str, str] = field(default_factory=dict)
    bundle: bytes | None = None
    bundle_parts: int = 0
    body_size: int = 0
    #: False when the client dropped a chunked body before its last chunk.
    body_complete: bool = True


@dataclass
class Script:
    """What the server does with the next request."""

    status: int = 200
    content_type: str = "text/event-stream"
    #: Pieces of the response body, each sent as its own HTTP chunk (any
    #: iterable: a generator such as :func:`fleet_events` is sent as it yields).
    chunks: list[bytes] = field(default_factory=list)
    #: Seconds to wait before each chunk.
    delay: float = 0.0
    #: Drop the connection (no terminating chunk) after the chunks.
    cut: bool = False
    #: Close the connection before reading the request body.
    close_before_body: bool = False
    #: Sleep this long before answering (to trigger read timeouts).
    stall: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    #: After the chunks, send an SSE comment line (a keep-alive) every this
    #: many seconds, for ``comment_for`` seconds or until the client leaves.
    comment_every: float = 0.0
    comment_for: float = 30.0
    #: Send each chunk as one HTTP chunk, but its bytes one at a time, this
    #: many seconds apart (a reader gets nothing until the chunk is whole).
    dribble: float = 0.0


def sse(event: str, data) -> bytes:
    """One event in the wire format SpiroFS uses."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def highstate_events(minion: str = "minion-1", ret=None, retcode: int = 0) -> list[bytes]:
    """A full deploy with one minion, as SpiroFS 0.3 sends it."""
    if ret is None:
        ret = {"file_|-hello_|-/tmp/hello_|-managed": {
            "result": True, "changes": {"diff": "New file"}, "comment": "File updated",
            "__run_num__": 0, "__id__": "hello", "name": "/tmp/hello"}}
    return [
        sse("deploy-bundle", {"msg": "Deploying bundle"}),
        sse("highstate-calc", {"msg": "Calculating minions to highstate"}),
        sse("highstate-start", {"msg": f"Highstating 1 minions: {minion}", "minions": [minion]}),
        sse("highstate-update", {"msg": f"Minion {minion} finished", "minion": minion,
                                 "result": {"ret": ret, "retcode": retcode, "jid": "1"}}),
        sse("highstate-finish", {"msg": "Highstate complete"}),
    ]


def fleet_state(index: int, changed: bool = False, failed: bool = False) -> tuple[str, dict]:
    """One state's key and return, shaped like Salt's (with ``duration`` and ``__sls__``)."""
    path = f"/etc/app/conf{index:02d}"
    comment = (f"Command failed on {path}" if failed else
               f"File {path} updated" if changed else f"File {path} is in the correct state")
    return f"file_|-state{index:02d}_|-{path}_|-managed", {
        "result": False if failed else True,
        "changes": {"diff": "--- \n+++ \n@@ -1 +1 @@\n-old\n+new\n"} if changed else {},
        "comment": comment, "name": path, "__run_num__": index, "__id__": f"state{index:02d}",
        "__sls__": "app.config", "duration": 1.25 + index % 7, "start_time": "12:00:00.000000",
    }


def fleet_events(minions: int, states: int = 50, changed: int = 5, fail_every: int = 100,
                 prefix: str = "web", jid: str = "20261129120000000000"):
    """Yield a whole deploy for a fleet, one SSE event at a time (bytes).

    ``minions`` minions (``web00000`` ...) with ``states`` states each, the
    first ``changed`` of them changed; every ``fail_every``-th minion fails
    its first state with retcode 2.  The ``highstate-start`` message names
    every minion, as SpiroFS's does.
    """
    names = [f"{prefix}{i:05d}" for i in range(minions)]
    yield sse("deploy-bundle", {"msg": "Deploying bundle"})
    yield sse("highstate-calc", {"msg": "Calculating minions to highstate"})
    yield sse("highstate-start", {"msg": f"Highstating {minions} minions: " + ", ".join(names),
                                  "minions": names})
    for number, name in enumerate(names):
        failing = bool(fail_every) and number % fail_every == fail_every - 1
        ret = dict(fleet_state(i, changed=i < changed, failed=failing and i == 0)
                   for i in range(states))
        yield sse("highstate-update", {"msg": f"Minion {name} finished", "minion": name,
                                       "result": {"ret": ret, "retcode": 2 if failing else 0,
                                                  "jid": jid}})
    yield sse("highstate-finish", {"msg": "Highstate complete"})


class FakeSpiroServer:
    """Serve scripted answers on 127.0.0.1; use as a context manager."""

    def __init__(self, tls_context: ssl.SSLContext | None = None):
        self.scripts: list[Script] = []
        self.default = Script(chunks=highstate_events())
        self.received: list[Received] = []
        self.on_request: Callable[[Received], None] | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                outer._handle(self, read_body=False)

            def do_POST(self):
                outer._handle(self, read_body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls_context is not None:
            self._server.socket = tls_context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        scheme = "https" if tls_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeSpiroServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def then(self, **kwargs) -> FakeSpiroServer:
        """Queue the answer to the next request."""
        self.scripts.append(Script(**kwargs))
        return self

    def _handle(self, handler: BaseHTTPRequestHandler, read_body: bool) -> None:
        script = self.scripts.pop(0) if self.scripts else self.default
        received = Received(handler.command, handler.path, dict(handler.headers.items()))
        self.received.append(received)
        if script.close_before_body:
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        if read_body:
            length = int(handler.headers.get("Content-Length", 0))
            if length:
                body = _read_exactly(handler.rfile, length)
            else:
                body, received.body_complete = _read_chunked(handler.rfile)
            received.body_size = len(body)
            if not received.body_complete:
                # A real server never sees this request: nothing to answer.
                handler.close_connection = True
                return
            _parse_multipart(received, handler.headers.get("Content-Type", ""), body)
        if self.on_request:
            self.on_request(received)
        if script.stall:
            time.sleep(script.stall)
        handler.send_response(script.status)
        handler.send_header("Content-Type", script.content_type)
        for name, value in script.headers.items():
            handler.send_header(name, value)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            for chunk in script.chunks:
                if script.delay:
                    time.sleep(script.delay)
                if chunk and script.dribble:
                    handler.wfile.write(b"%x\r\n" % len(chunk))
                    for byte in chunk:
                        handler.wfile.write(bytes([byte]))
                        handler.wfile.flush()
                        time.sleep(script.dribble)
                    handler.wfile.write(b"\r\n")
                    handler.wfile.flush()
                elif chunk:
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    handler.wfile.flush()
            if script.comment_every:
                until = time.monotonic() + script.comment_for
                while time.monotonic() < until:
                    time.sleep(script.comment_every)
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(b": keep-alive\n"),
                                                             b": keep-alive\n"))
                    handler.wfile.flush()
            if script.cut:
                handler.connection.shutdown(socket.SHUT_RDWR)
            else:
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
        except OSError:
            pass  # the client went away; that is what some tests do
        handler.close_connection = True


def _read_exactly(stream, length: int) -> bytes:
    parts, left = [], length
    while left:
        piece = stream.read(min(left, 1 << 20))
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _read_chunked(stream) -> tuple[bytes, bool]:
    """The body of a chunked request, and whether it ended with its last chunk."""
    parts = []
    complete = False
    try:
        while True:
            line = stream.readline()
            if not line:
                break
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                stream.readline()
                complete = True
                break
            parts.append(_read_exactly(stream, size))
            stream.readline()
    except (OSError, ValueError):
        complete = False
    return b"".join(parts), complete


def _parse_multipart(received: Received, content_type: str, body: bytes) -> None:
    # Split on the boundary by hand: the email parser rewrites line ends in
    # binary parts.
    if not content_type.startswith("multipart/form-data"):
        return
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, payload = part[2:].partition(b"\r\n\r\n")
        payload = payload[:-2]  # the CRLF before the next boundary
        name = re.search(rb'name="([^"]*)"', head)
        if not name:
            continue
        if name.group(1) == b"bundle":
            received.bundle = payload
            received.bundle_parts += 1
        else:
            received.fields[name.group(1).decode()] = payload.decode()


def uploads(server: FakeSpiroServer) -> list[Received]:
    """The uploads (POSTs) ``server`` received."""
    return [received for received in server.received if received.method == "POST"]
