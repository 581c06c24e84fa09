"""A stand-in server that costs (almost) nothing: for measuring the client alone.

It speaks just enough HTTP/1.1 (TLS if given a cert and key): reads a POST
body of any size (Content-Length or chunked) in 1 MiB ``recv_into`` calls and
throws it away, then answers ``200 text/event-stream`` with one
``deploy-bundle`` event, like SpiroFS with ``--no-highstate``.  Only the bytes
are counted: no multipart parsing, no extraction.  One connection at a time.

    python bench/sink_server.py PORTFILE [CERT KEY]

writes its port to PORTFILE once it listens; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import signal
import socket
import ssl
import sys

MiB = 1 << 20
EVENT = b'event: deploy-bundle\ndata: {"msg": "Deploying bundle"}\n\n'


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray(MiB)
        self.view = memoryview(self.buf)
        self.start = self.end = 0

    def _fill(self) -> bool:
        if self.start == self.end:
            self.start = self.end = 0
        elif self.start:
            n = self.end - self.start
            self.buf[:n] = self.buf[self.start:self.end]
            self.start, self.end = 0, n
        got = self.sock.recv_into(self.view[self.end:])
        self.end += got
        return got > 0

    def readline(self) -> bytes:
        while True:
            i = self.buf.find(b"\n", self.start, self.end)
            if i >= 0:
                line = bytes(self.buf[self.start:i + 1])
                self.start = i + 1
                return line
            if not self._fill():
                return b""

    def discard(self, n: int) -> int:
        done = 0
        while done < n:
            if self.start == self.end and not self._fill():
                break
            take = min(n - done, self.end - self.start)
            self.start += take
            done += take
        return done


def handle(sock) -> None:
    c = Conn(sock)
    request = c.readline()
    if not request:
        return
    headers = {}
    while True:
        line = c.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("expect", "").lower() == "100-continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "content-length" in headers:
        c.discard(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(c.readline().split(b";")[0].strip() or b"0", 16)
            if not size:
                while c.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            c.discard(size)
            c.readline()
    if request.startswith(b"GET"):
        body = b"Auth OK"
        ctype = b"text/plain"
    else:
        body = EVENT
        ctype = b"text/event-stream"
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (ctype, len(body), body))


def main(argv) -> int:
    portfile = argv[0]
    ctx = None
    if len(argv) >= 3:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(argv[1], argv[2])
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    srv = socket.create_server(("127.0.0.1", 0))
    with open(portfile, "w") as f:
        f.write(str(srv.getsockname()[1]))
    while True:
        conn, _ = srv.accept()
        try:
            if ctx is not None:
                conn = ctx.wrap_socket(conn, server_side=True)
            handle(conn)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(0)
