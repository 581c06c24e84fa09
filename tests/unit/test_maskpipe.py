"""--json masks the token on the other core once the output is big (spirodeploy.maskpipe)."""

from __future__ import annotations

import io
import json
import os

from spirodeploy.client import EventData
from spirodeploy.output import JsonPrinter
from spirodeploy.report import DeployReport
from tests.support import make_token

TOKEN = make_token({"project_allow": ["proj"]})
LATER = "a-later-secret-0123456789"  # hidden after the masking process started


def _wait_until_ready(printer: JsonPrinter) -> None:
    import time

    deadline = time.monotonic() + 30
    while printer._pipe is not None and printer._pipe.ready() is None:
        assert time.monotonic() < deadline, "the masking process never started"
        time.sleep(0.01)


def _play(printer: JsonPrinter) -> None:
    report = DeployReport(project="proj", deployment="prod")
    for index in range(30):
        if index == 2:
            _wait_until_ready(printer)
        source = json.dumps({"msg": f"event {index} Bearer {TOKEN}", "cut": TOKEN[index:index + 20],
                             "later": LATER})
        data = EventData(json.loads(source), source)
        report.add("highstate-update" if index else "deploy-bundle", data)
        printer.event("highstate-update" if index else "deploy-bundle", data, report)
        if index == 10:
            printer.hide(LATER)
    printer._emit({"event": "x", "data": {"text": "caf\u00e9 " + TOKEN}})  # encoded again
    printer.finish(report)
    printer.error(f"HTTP 500: {TOKEN}", 7)
    printer.close()


def _leaks(text: str) -> list[str]:
    return [TOKEN[i:i + 12] for i in range(len(TOKEN) - 11) if TOKEN[i:i + 12] in text]


def test_the_masking_process_prints_what_the_printer_would(tmp_path):
    inline = io.StringIO()
    _play(JsonPrinter(out=inline, err=io.StringIO(), secrets=(TOKEN,)))
    with open(tmp_path / "out.jsonl", "w") as out:
        printer = JsonPrinter(out=out, err=io.StringIO(), secrets=(TOKEN,))
        printer.MASK_ELSEWHERE_AFTER = 100  # from the first line on
        _play(printer)
        assert printer._pipe is not None and printer._pipe.ready()  # it really moved
    shown = (tmp_path / "out.jsonl").read_text()
    assert not _leaks(shown) and "***" in shown
    # Line for line the same (hide(LATER) masks it from the same line on),
    # but for the report's clock readings.
    lines, expected = shown.splitlines(), inline.getvalue().splitlines()
    assert len(lines) == len(expected) == 33
    assert [line for line in lines if '"report"' not in line] == \
        [line for line in expected if '"report"' not in line]
    assert LATER in lines[5] and LATER not in lines[20]
    assert all(json.loads(line) for line in lines)


def test_a_closed_output_ends_the_printing_not_the_deploy():
    read, write = os.pipe()
    with os.fdopen(write, "w") as out:
        printer = JsonPrinter(out=out, err=io.StringIO(), secrets=(TOKEN,))
        printer.MASK_ELSEWHERE_AFTER = 0
        printer._print("{}")
        _wait_until_ready(printer)
        assert printer._pipe.ready()
        os.close(read)  # the reader goes away (spiro-deploy --json | head -1)
        for _ in range(300):  # more than any pipe buffer holds
            printer._print(json.dumps({"pad": "x" * 1000}))
        printer.close()  # returns: the child ended when its output went away


def test_a_masking_process_that_cannot_start_loses_nothing(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "executable", "/bin/false")  # exits at once, never ready
    inline = io.StringIO()
    _play(JsonPrinter(out=inline, err=io.StringIO(), secrets=(TOKEN,)))
    with open(tmp_path / "out.jsonl", "w") as out:
        printer = JsonPrinter(out=out, err=io.StringIO(), secrets=(TOKEN,))
        printer.MASK_ELSEWHERE_AFTER = 100
        _play(printer)
        assert printer._pipe is None and printer._pipe_tried  # it tried, and printed itself
    shown = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(shown) == len(inline.getvalue().splitlines()) == 33 and not _leaks("".join(shown))


def test_a_token_split_between_two_reads_is_still_masked():
    import subprocess
    import sys
    import time

    ready_read, ready_write = os.pipe()
    child = subprocess.Popen([sys.executable, "-m", "spirodeploy.maskpipe", str(ready_write)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             pass_fds=(ready_write,))
    os.close(ready_write)
    assert os.read(ready_read, 1) == b"1"
    os.close(ready_read)
    child.stdin.write(b"\x00" + json.dumps(TOKEN).encode() + b"\n")
    line = f'{{"msg": "Bearer {TOKEN}"}}'.encode()
    half = len(line) // 2
    for piece in (line[:half], line[half:] + b"\n{}\n", b'{"tail": "' + TOKEN[:30].encode()):
        child.stdin.write(piece)
        child.stdin.flush()
        time.sleep(0.2)  # so that the child reads each piece on its own
    child.stdin.write(b'"}\n')
    out, _ = child.communicate(timeout=30)
    assert out.decode().splitlines() == ['{"msg": "Bearer ***"}', "{}", '{"tail": "***"}']


def test_each_line_is_shown_as_it_comes():
    # A CI job watching --json must see an event when it arrives, not when
    # a buffer fills or the deploy ends.
    import select

    read, write = os.pipe()
    with os.fdopen(write, "w") as out, os.fdopen(read, "rb") as shown:
        printer = JsonPrinter(out=out, err=io.StringIO(), secrets=(TOKEN,))
        printer.MASK_ELSEWHERE_AFTER = 0
        printer._print('{"first": 1}')
        _wait_until_ready(printer)
        assert printer._pipe.ready()
        for line in ('{"second": "Bearer ' + TOKEN + '"}', '{"third": 3}'):
            printer._print(line)
            assert select.select([shown], [], [], 10)[0], "the line was held back"
        received = b""
        while received.count(b"\n") < 3:
            assert select.select([shown], [], [], 10)[0]
            received += os.read(read, 65536)
        printer.close()
    assert received.decode().splitlines() == ['{"first": 1}', '{"second": "Bearer ***"}',
                                              '{"third": 3}']
