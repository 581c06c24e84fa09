"""Prototype: the upload without requests_toolbelt's MultipartEncoder (not used by spiro-deploy).

Uploads an existing bundle file the way ``curl -F bundle=@FILE`` does, with
``requests`` (same session, TLS and urllib3 as spiro-deploy) but with a lean
multipart body: an iterable with a ``__len__`` (so requests sends a
``Content-Length``, not chunked) that yields the form preamble, then the file
read with ``readinto`` into one reused 1 MiB buffer (memoryviews, no new
bytes per block), then the closing boundary.

``MultipartEncoder.read()`` instead copies every block through a
``CustomBytesIO`` (``append`` = ``BytesIO.write``, then ``read``, then
``smart_truncate``), which allocates and faults in fresh memory per block.

    python bench/proto_upload_lean.py lean|toolbelt URL CA TOKEN_FILE BUNDLE [PROJECT DEPLOYMENT]
"""

from __future__ import annotations

import os
import sys
import uuid

BLOCK = 1 << 20


class LeanMultipart:
    """``multipart/form-data`` body: text fields, then one file part, streamed."""

    def __init__(self, fields: dict, name: str, filename: str, fileobj, ctype: str):
        self.boundary = uuid.uuid4().hex
        b = self.boundary.encode()
        head = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                        % (b, k.encode(), v.encode()) for k, v in fields.items())
        head += (b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                 b"Content-Type: %s\r\n\r\n" % (b, name.encode(), filename.encode(), ctype.encode()))
        self.head = head
        self.tail = b"\r\n--%s--\r\n" % b
        self.f = fileobj
        self.start = fileobj.tell()
        self.size = os.fstat(fileobj.fileno()).st_size - self.start
        self.sent = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self):
        yield self.head
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        left = self.size
        self.f.seek(self.start)
        while left:
            n = self.f.readinto(view[:min(BLOCK, left)])
            if not n:
                raise OSError("bundle shrank during the upload")
            left -= n
            self.sent += n
            yield view[:n]  # sent before the next readinto reuses the buffer
        yield self.tail


def main(argv) -> int:
    import requests

    mode, url, ca, token_file, path = argv[:5]
    project, deployment = (argv[5:7] + ["bench", "a"])[:2] if len(argv) < 7 else argv[5:7]
    token = open(token_file).read().strip()
    fields = {"project": project, "deployment": deployment}
    with open(path, "rb") as f:
        if mode == "lean":
            body = LeanMultipart(fields, "bundle", "bundle.tar", f, "application/x-tar")
            ctype = body.content_type
        else:
            from requests_toolbelt.multipart.encoder import MultipartEncoder

            body = MultipartEncoder(fields={**fields, "bundle": ("bundle.tar", f,
                                                                 "application/x-tar")})
            ctype = body.content_type
        from spirodeploy.client import _session  # same adapter: keepalive, 1 MiB blocksize

        with _session() as s:
            r = s.post(url, data=body, stream=True, verify=ca,
                       headers={"Authorization": f"Bearer {token}", "Content-Type": ctype})
            text = r.raw.read()
    print(r.status_code, text[-200:].decode(errors="replace"))
    return 0 if r.status_code == 200 and b"deploy-bundle" in text else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
