"""Prototype of the stretch goal: stream the tar into the request while it is built.

Not used by spiro-deploy; it proves a figure.  The real builder
(``spirodeploy.builder.TarballBuilder``, which computes every file's sha256
and the bundle's sha256 in its one pass and writes the manifest last) writes
into a bounded queue from its writer thread; the main thread sends a
``multipart/form-data`` POST with ``Transfer-Encoding: chunked`` whose body
is: the ``project``/``deployment`` fields, the ``bundle`` part header, the
tar chunks as they come out of the builder, the closing boundary.  Memory is
bounded by the queue (16 x 1 MiB).  SpiroFS 0.3 (Tornado) accepts a chunked
body.  A real implementation would also tee the chunks to a spooled copy for
``--output`` or for a retry before the first byte went out.

    python bench/proto_stream.py --server URL --ssl-cert CA --token-file FILE \\
        -C DIR [--artifact PATH ...] [--include-source git|fs] PROJECT DEPLOYMENT
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
import uuid
from functools import partial


class _QueueWriter:
    """A write-only, non-seekable file that hands each write to a bounded queue."""

    def __init__(self, q: "queue.Queue[bytes | None]"):
        self.q = q
        self.written = 0

    def write(self, data) -> int:
        chunk = bytes(data)  # the builder reuses its buffers
        self.q.put(chunk)
        self.written += len(chunk)
        return len(chunk)

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("project")
    p.add_argument("deployment")
    p.add_argument("-C", dest="root", default=".")
    p.add_argument("--artifact", action="append", default=[])
    p.add_argument("--include-source")
    p.add_argument("--server", required=True)
    p.add_argument("--ssl-cert")
    p.add_argument("--token-file", required=True)
    p.add_argument("--no-highstate", action="store_true")
    args = p.parse_args(argv)

    from spirodeploy.builder import TarballBuilder, fs_scanner, git_scanner
    import requests

    root = os.path.abspath(args.root)
    token = open(args.token_file).read().strip()
    q: "queue.Queue[bytes | None]" = queue.Queue(maxsize=16)
    result: dict = {}

    def build():
        try:
            with TarballBuilder(_QueueWriter(q), root=root) as b:
                b.add_gitcommit(root)
                b.add_saltdir(os.path.join(root, "_salt"))
                for a in args.artifact:
                    b.add_artifact(os.path.join(root, a), a)
                if args.include_source:
                    scanner = git_scanner if args.include_source == "git" else fs_scanner
                    b.add_source(partial(scanner, root=root))
            result.update(sha256=b.sha256, size=b.size, files=b.file_count)
        except BaseException as e:  # noqa: BLE001 - reported by the body generator
            result["error"] = e
        finally:
            q.put(None)

    boundary = uuid.uuid4().hex
    fields = {"project": args.project, "deployment": args.deployment}
    if not args.no_highstate:
        fields["highstate"] = "1"

    def body():
        head = b"".join(
            b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
            % (boundary.encode(), k.encode(), v.encode()) for k, v in fields.items())
        head += (b"--%s\r\nContent-Disposition: form-data; name=\"bundle\"; "
                 b"filename=\"bundle.tar\"\r\nContent-Type: application/x-tar\r\n\r\n"
                 % boundary.encode())
        yield head
        while True:
            chunk = q.get()
            if chunk is None:
                break
            yield chunk
        if "error" in result:
            raise result["error"]
        yield b"\r\n--%s--\r\n" % boundary.encode()

    started = time.monotonic()
    threading.Thread(target=build, daemon=True).start()
    resp = requests.post(
        args.server, data=body(), stream=True, verify=args.ssl_cert or True,
        headers={"Authorization": f"Bearer {token}",
                 "Content-Type": f"multipart/form-data; boundary={boundary}",
                 "Accept": "text/event-stream"},
        timeout=(20, 3600))
    if resp.status_code != 200:
        print(f"HTTP {resp.status_code}: {resp.text[:300]}", file=sys.stderr)
        return 7
    events = 0
    for line in resp.iter_lines():
        if line.startswith(b"event:"):
            events += 1
            print(line.decode(), flush=True)
            if line.strip() == b"event: exception":
                return 1
    print(json.dumps({"bundle": {k: v for k, v in result.items() if k != "error"},
                      "events": events, "seconds": round(time.monotonic() - started, 3)}))
    return 0 if events else 6


if __name__ == "__main__":
    sys.exit(main())
