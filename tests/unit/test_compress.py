"""Gzip-compressed bundles (spirodeploy.compress, --compress) against the fake server."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import tarfile
import time
import zlib

import pytest

from spirodeploy.builder import build_bundle
from spirodeploy.cli import _bare_compress, build_parser, main
from spirodeploy.compress import GZIP_HEADER, GzipWriter, build_compressed, check_format, compressor
from spirodeploy.deploy import deploy
from spirodeploy.errors import BundleError, ExitCode, UsageError
from spirodeploy.settings import Settings
from tests.support import RSS_BOUND, DiscardServer, fmt_bytes, make_token, rss_growth, run_child

MiB = 1 << 20
CODECS = ["zlib"] + (["isal"] if compressor().name.startswith("isal") else [])


@pytest.fixture
def settings(fake_server, token):
    return Settings.resolve(server=fake_server.url, token=token, insecure=True)


def random_artifact(project, size=6 * MiB, name="app.bin"):
    """An incompressible artifact: its gzip is about as big as it is."""
    (project / "dist").mkdir(exist_ok=True)
    (project / "dist" / name).write_bytes(os.urandom(size))
    (project / "_salt" / "zz.sls").write_text("zz: {}\n")  # written after the artifact
    return f"dist/{name}"


def plain_bytes(project, **options) -> bytes:
    with build_bundle(str(project), **options) as bundle:
        return bundle.file.read()


@pytest.mark.parametrize("codec", CODECS)
def test_same_inputs_give_the_same_compressed_bytes(project, tmp_path, codec):
    (project / "_salt" / "data.json").write_text(json.dumps(list(range(20000))))
    first = build_compressed(str(project), output=str(tmp_path / "one.tar.gz"),
                             codec=compressor(codec))
    first.close()
    time.sleep(1.1)  # a header with the time in it would now differ
    os.utime(project / "_salt" / "data.json")  # and so would one with the file's mtime
    second = build_compressed(str(project), output=str(tmp_path / "other-name.tgz"),
                              codec=compressor(codec))
    second.close()
    one, other = (tmp_path / "one.tar.gz").read_bytes(), (tmp_path / "other-name.tgz").read_bytes()
    assert one == other
    assert first.sha256 == second.sha256 == hashlib.sha256(one).hexdigest()


def test_gzip_header_and_trailer_fields(project, tmp_path):
    out = tmp_path / "bundle.tar.gz"
    with build_compressed(str(project), output=str(out)) as bundle:
        data = out.read_bytes()
    magic, method, flags, mtime, xfl, os_byte = struct.unpack("<2sBBIBB", data[:10])
    assert magic == b"\x1f\x8b" and method == 8  # gzip, deflate
    assert flags == 0  # no FNAME, FCOMMENT, FEXTRA, FHCRC
    assert mtime == 0 and xfl == 0 and os_byte == 255
    plain = gzip.decompress(data)
    crc, isize = struct.unpack("<II", data[-8:])
    assert crc == zlib.crc32(plain) and isize == len(plain) == bundle.tar_size
    assert data.startswith(GZIP_HEADER)


@pytest.mark.parametrize("codec", CODECS)
def test_decompressed_is_the_plain_bundle(project, codec):
    art = random_artifact(project, 3 * MiB)
    (project / "_salt" / "text.txt").write_text("line of text\n" * 200000)
    with build_compressed(str(project), artifacts=[art], codec=compressor(codec)) as bundle:
        data = bundle.file.read()
    plain = plain_bytes(project, artifacts=[art])
    assert gzip.decompress(data) == plain
    assert bundle.tar_sha256 == hashlib.sha256(plain).hexdigest()
    assert (bundle.size, bundle.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert bundle.size < bundle.tar_size
    assert bundle.file_count == 5 and bundle.manifest["files"]  # the plain bundle's facts


def test_writer_hands_on_whole_blocks():
    blocks = []

    class Out:
        def write(self, data):
            blocks.append(bytes(data))
            return len(data)

    gz = GzipWriter(Out(), codec=compressor("zlib"))
    payload = os.urandom(5 * MiB)
    for i in range(0, len(payload), 64 * 1024):
        gz.write(memoryview(payload)[i:i + 64 * 1024])
    gz.close()
    assert all(len(b) == MiB for b in blocks[:-1]) and len(blocks) >= 5
    assert gzip.decompress(b"".join(blocks)) == payload


def test_a_compressed_deploy_uploads_and_reports_the_gzip(project, fake_server, settings,
                                                          tmp_path):
    art = random_artifact(project)
    out = tmp_path / "bundle.tar.gz"
    report = deploy("proj", "prod", settings, root=str(project), artifacts=[art],
                    compress="gzip", output=str(out))
    assert report.exit_code == ExitCode.OK, report.error
    got = fake_server.received[0]
    assert got.headers.get("Transfer-Encoding") == "chunked"
    assert got.body_complete and got.bundle.startswith(GZIP_HEADER)
    assert out.read_bytes() == got.bundle  # --output is what was uploaded
    info = report.bundle
    assert info["sha256"] == hashlib.sha256(got.bundle).hexdigest()
    assert info["size"] == len(got.bundle)
    plain = gzip.decompress(got.bundle)
    assert plain == plain_bytes(project, artifacts=[art])
    assert info["tar_sha256"] == hashlib.sha256(plain).hexdigest()
    assert info["tar_size"] == len(plain) and info["compression"] == "gzip"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_without_streaming_too(project, fake_server, settings):
    streamed = deploy("proj", "prod", settings, root=str(project), compress="gzip")
    built = deploy("proj", "prod", settings, root=str(project), compress="gzip", stream=False)
    first, second = fake_server.received
    assert "Content-Length" in second.headers
    assert first.bundle == second.bundle and first.bundle.startswith(GZIP_HEADER)
    assert streamed.bundle == built.bundle


def test_the_first_compressed_block_goes_out_before_the_build_ends(project, fake_server,
                                                                  settings):
    art = random_artifact(project, 12 * MiB)
    vanish = project / "_salt" / "zz.sls"

    def progress(sent, total):
        # Compressed blocks are out while the builder is still on the artifact.
        if sent > MiB and vanish.exists():
            vanish.unlink()

    with pytest.raises(BundleError) as caught:
        deploy("proj", "prod", settings, root=str(project), artifacts=[art], compress="gzip",
               on_progress=progress)
    assert "zz.sls" in str(caught.value) and "vanished" in str(caught.value)
    deadline = time.monotonic() + 10
    got = fake_server.received[0]
    while not got.body_size and time.monotonic() < deadline:
        time.sleep(0.02)
    assert got.body_size > MiB and not got.body_complete


def test_compressing_a_large_bundle_takes_bounded_memory(tmp_path):
    """The CLI with --compress: neither the tar nor its gzip is held in memory."""
    root = tmp_path / "proj"
    (root / "_salt").mkdir(parents=True)
    (root / "_salt" / "top.sls").write_text("{{ saltenv }}:\n  '*':\n    - app\n")
    (root / "dist").mkdir()
    with open(root / "dist" / "big.bin", "wb") as f:
        f.truncate(256 * MiB)  # sparse zeros: the plain tar would be big
    (root / "dist" / "noise.bin").write_bytes(os.urandom(2 * RSS_BOUND))  # its gzip too
    (root / "dist" / "tiny.bin").write_bytes(b"x" * 1000)
    server = DiscardServer()
    token_file = tmp_path / "token"
    token_file.write_text(make_token() + "\n")
    try:
        out = run_child(f"""
            from spirodeploy import cli

            def deploy(*artifacts):
                args = [x for a in artifacts for x in ("--artifact", "dist/" + a)]
                rc = cli.main(["-C", {str(root)!r}, "--no-highstate", "--no-progress", "--json",
                               "--insecure", "--server", "http://127.0.0.1:{server.port}/",
                               "--token-file", {str(token_file)!r}, "--no-history",
                               "--compress", *args, "memtest", "prod"])
                assert rc == 0, rc
                return rc

            measure(lambda: deploy("tiny.bin"), lambda: deploy("big.bin", "noise.bin"))
        """)
    finally:
        server.close()
    assert server.received and server.received[-1] >= 2 * RSS_BOUND, server.received
    growth = rss_growth(out)
    assert growth < RSS_BOUND, f"a compressed deploy grew peak RSS by {fmt_bytes(growth)}"


def test_compressing_mixed_data_keeps_the_heap_flat():
    """Alternating random and text blocks (the shape of real artifacts): with ISA-L
    and glibc the heap grew by ~35 MiB per GiB until it was trimmed."""
    out = run_child("""
        import os
        from spirodeploy.compress import GzipWriter

        class Discard:
            def write(self, data):
                return len(data)

        noise = [os.urandom(1 << 20) for _ in range(4)]
        text = b"".join(b'{"id": %d, "msg": "request served", "host": "web%02d"}\\n'
                        % (i, i % 40) for i in range(20000))[:1 << 20]

        def work(blocks):
            gz = GzipWriter(Discard())
            for k in range(blocks):
                gz.write(noise[k % 4] if k % 2 else text)
            gz.close()
            return gz.codec.name

        measure(lambda: work(8), lambda: work(1024))
    """)
    growth = rss_growth(out)
    assert growth < 16 * MiB, f"compressing 1 GiB ({out['result']}) grew peak RSS by {fmt_bytes(growth)}"


# -- the option -------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["--compress", "myproj", "prod"], "gzip"),
    (["myproj", "prod", "--compress"], "gzip"),
    (["--compress=gzip", "myproj", "prod"], "gzip"),
    (["--compress", "--no-highstate", "myproj", "prod"], "gzip"),
    (["--no-compress", "myproj", "prod"], None),
    (["myproj", "prod"], None),
])
def test_compress_option(argv, expected):
    args = build_parser().parse_args(_bare_compress(argv))
    assert (args.compress, args.project, args.deployment) == (expected, "myproj", "prod")


@pytest.mark.parametrize("argv", [
    ["--compress=bzip9", "myproj", "prod"],
    ["--compress", "--no-compress", "myproj", "prod"],
])
def test_bad_compress_option_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(_bare_compress(argv))
    assert caught.value.code == 2
    assert "--compress" in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [
    ("gzip", "gzip"), (" GZIP ", "gzip"), (True, "gzip"), ("yes", "gzip"), ("On", "gzip"),
    (1, "gzip"), ("1", "gzip"), (None, None), (False, None), ("no", None), ("off", None),
    (0, None), ("", None),
])
def test_check_format(value, expected):
    assert check_format(value) == expected


@pytest.mark.parametrize("value", ["zstd", "gzip9", 2, "maybe"])
def test_check_format_refuses(value):
    with pytest.raises(UsageError, match="compress: unknown compression"):
        check_format(value)


def test_cli_compress_and_output(project, fake_server, token, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(project)
    monkeypatch.setenv("SPIRO_TOKEN", token)
    out = tmp_path / "b.tar.gz"
    code = main(["--server", fake_server.url, "--insecure", "--json", "--compress",
                 "--output", str(out), "proj", "prod"])
    assert code == ExitCode.OK, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["report"]
    sent = fake_server.received[0].bundle
    assert sent.startswith(GZIP_HEADER) and out.read_bytes() == sent
    assert report["bundle"]["sha256"] == hashlib.sha256(sent).hexdigest()
    with tarfile.open(out) as tf:  # auto-detection, as SpiroFS opens it
        assert "top.sls" in tf.getnames()
    # The history keeps what was uploaded, under the sha256 that was reported.
    kept = os.path.join(os.environ["SPIRO_HISTORY_DIR"], "bundles",
                        f"{report['bundle']['sha256']}.tar")
    assert open(kept, "rb").read() == sent


def test_cli_refuses_compress_with_bundle(project, fake_server, token, monkeypatch, capsys):
    monkeypatch.chdir(project)
    monkeypatch.setenv("SPIRO_TOKEN", token)
    code = main(["--server", fake_server.url, "--insecure", "--compress", "--bundle", "x.tar",
                 "proj", "prod"])
    assert code == ExitCode.USAGE
    assert "--compress" in capsys.readouterr().err
    assert fake_server.received == []
