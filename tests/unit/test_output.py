"""The printers show server text safely: no token, no terminal control (issue 11, items 5, 11)."""

from __future__ import annotations

import io
import json
import re

import pytest

from spirodeploy.output import HumanPrinter, JsonPrinter
from spirodeploy.report import DeployReport
from spirodeploy.sanitize import escape, scrub
from tests.support import make_token

# Moves the cursor up two lines, clears them and paints a fake green success.
FAKE_LINE = ("\x1b[2A\x1b[2K\r\x1b[32;1mDeployed proj/prod: 3 of 3 minions reported\x1b[0m")
# OSC 52: writes "evil" to the clipboard of terminals that allow it.
OSC52 = "\x1b]52;c;ZXZpbA==\x07"
# The same, with the 8-bit C1 introducers (CSI, OSC) some terminals honour.
C1 = "\x9b2A\x9d52;c;ZXZpbA==\x9c"
# Right-to-left override and a line separator.
BIDI = "safe\u202egnp.exe\u2028next"

RAW_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
OUR_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def human(colour: bool = False, secrets=()) -> tuple[HumanPrinter, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return HumanPrinter(out=out, err=err, colour=colour, progress=False, secrets=secrets), out, err


def report_with(*events) -> DeployReport:
    report = DeployReport("proj", "prod")
    for event, data in events:
        report.add(event, data)
    return report


def raw_controls(text: str, colour: bool = False) -> list[str]:
    """Control characters in printed text, other than newlines and our own colours."""
    if colour:
        text = OUR_COLOURS.sub("", text)
    return RAW_CONTROL.findall(text.replace("\n", ""))


@pytest.mark.parametrize("text", [FAKE_LINE, OSC52, C1, BIDI, "a\rb", "del\x7f", "nul\x00"])
def test_escape_leaves_no_control_character(text):
    shown = escape(text)
    assert not RAW_CONTROL.findall(shown)
    assert shown.isprintable()


def test_escape_is_readable_and_keeps_plain_text_and_tabs():
    assert escape("\x1b[2A") == "\\x1b[2A"
    assert escape("\x9b") == "\\x9b"
    assert escape("a\u202eb") == "a\\u202eb"
    assert escape("plain text, ünïcödé\tand a tab") == "plain text, ünïcödé\tand a tab"


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("evil", [FAKE_LINE, OSC52, C1, BIDI])
def test_server_text_is_escaped_wherever_it_is_printed(evil, colour):
    printer, out, _ = human(colour=colour)
    minion = f"web1{evil}"
    report = report_with(
        ("deploy-bundle", {"msg": f"Deploying{evil}"}),
        ("highstate-start", {"msg": evil, "minions": [minion]}),
        ("highstate-update", {"msg": evil, "minion": minion, "result": {"retcode": 2, "ret": {
            f"cmd_|-id{evil}_|-x_|-run": {"result": False, "changes": {}, "__id__": f"id{evil}",
                                          "comment": f"failed{evil}\nline two{evil}"},
            f"file_|-ch{evil}_|-y_|-managed": {"result": True, "changes": {"x": 1},
                                               "comment": f"changed{evil}"}}}}),
        ("exception", {"msg": f"Traceback{evil}\n  File x{evil}\nError: boom{evil}"}),
        (f"custom{evil}", {"msg": evil}),
    )
    for event, data in report.events:
        printer.event(event, data, report)
    report.minions[minion].errors.append(f"render error{evil}")
    printer.minion(report.minions[minion])
    printer.finish(report)
    printed = out.getvalue()
    assert not raw_controls(printed, colour), printed
    assert "\\x1b" in printed or "\\x9b" in printed or "\\u202e" in printed


def test_a_fake_success_line_cannot_repaint_the_screen():
    printer, out, _ = human(colour=True)
    report = report_with(("deploy-bundle", {"msg": FAKE_LINE}))
    printer.event("deploy-bundle", {"msg": FAKE_LINE}, report)
    printed = out.getvalue()
    # Only our own colour codes reach the terminal; the forged ones are text.
    assert OUR_COLOURS.findall(printed) == ["\x1b[36m", "\x1b[0m"]
    assert "\\x1b[2A\\x1b[2K\\r\\x1b[32;1mDeployed" in printed


def test_warnings_and_errors_are_escaped_too():
    printer, _, err = human()
    printer.warn(f"file name{OSC52}")
    printer.error(f"the server answered HTTP 500: {FAKE_LINE}")
    assert not raw_controls(err.getvalue()) and "\\x1b]52" in err.getvalue()


def test_json_lines_carry_no_raw_control_or_separator():
    out, err = io.StringIO(), io.StringIO()
    printer = JsonPrinter(out=out, err=err)
    data = {"msg": FAKE_LINE + OSC52 + C1 + BIDI + "\x7f", FAKE_LINE: BIDI}
    report = report_with(("deploy-bundle", data))
    printer.event("deploy-bundle", data, report)
    printer.finish(report)
    printer.warn(OSC52)
    printer.error(C1, 7)
    for stream in (out.getvalue(), err.getvalue()):
        assert not raw_controls(stream), stream
    first = json.loads(out.getvalue().splitlines()[0])
    assert first["data"]["msg"].startswith(FAKE_LINE)  # escaped in JSON, not altered


# --- the token ------------------------------------------------------------------

TOKEN = make_token({"not_before": 1, "project_allow": ["proj"]})


def pieces(token: str, size: int = 12) -> list[str]:
    return [token[i:i + size] for i in range(len(token) - size + 1)]


def leaks(text: str, token: str = TOKEN) -> list[str]:
    return [piece for piece in pieces(token) if piece in text]


@pytest.mark.parametrize("text", [
    f"Authorization: Bearer {TOKEN}",
    f"headers: {{'Authorization': 'Bearer {TOKEN[:40]}",     # cut mid-token
    f"...{TOKEN[-30:]} was refused",                        # the end of it
    f"Bearer{TOKEN}",                                       # glued to other letters
    f"x{TOKEN}{TOKEN}y",
])
def test_scrub_masks_the_token_and_any_piece_of_it(text):
    shown = scrub(text, [TOKEN])
    assert not leaks(shown), shown
    assert "***" in shown


def test_scrub_leaves_other_text_alone():
    text = "sha256 " + "ab12" * 16 + " deployed to proj/prod by ci-runner-42"
    assert scrub(text, [TOKEN]) == text
    assert scrub(text, [None, ""]) == text


def test_the_human_printer_masks_the_token_everywhere():
    printer, out, err = human(secrets=(TOKEN,))
    report = report_with(
        ("deploy-bundle", {"msg": f"Deploying for Bearer {TOKEN}"}),
        ("highstate-start", {"msg": "Highstating", "minions": [TOKEN[:20]]}),
        ("highstate-update", {"msg": "x", "minion": TOKEN[:20], "result": {"retcode": 1, "ret": {
            "cmd_|-a_|-b_|-run": {"result": False, "changes": {}, "comment": f"echo {TOKEN}"}}}}),
        ("exception", {"msg": f"Traceback\nValueError: {TOKEN}"}),
    )
    for event, data in report.events:
        printer.event(event, data, report)
    printer.finish(report)
    printer.warn(f"token {TOKEN}")
    printer.error(f"HTTP 407: Authorization: Bearer {TOKEN[:30]}")
    assert not leaks(out.getvalue() + err.getvalue())


def test_the_json_printer_masks_the_token_in_events_report_and_error():
    out, err = io.StringIO(), io.StringIO()
    printer = JsonPrinter(out=out, err=err)
    printer.hide(TOKEN)
    data = {"msg": f"Bearer {TOKEN}", TOKEN: [TOKEN[5:60]]}
    report = report_with(("deploy-bundle", data))
    printer.event("deploy-bundle", data, report)
    printer.finish(report)
    printer.warn(TOKEN)
    printer.error(f"the server answered HTTP 500: {TOKEN}", 7)
    assert not leaks(out.getvalue() + err.getvalue())
    for line in out.getvalue().splitlines():
        json.loads(line)  # still valid JSON


def _decoded(source: str):
    from spirodeploy.client import _decode

    return _decode("highstate-update", source)


def test_the_json_printer_passes_the_servers_json_through_as_it_came():
    # A fleet's stream is 150 MiB: encoding it again cost more than reading it.
    source = '{"minion": "web1",  "result": {"retcode": 0, "b": 1, "a": [1.50, 2]}}'
    out = io.StringIO()
    JsonPrinter(out=out, err=io.StringIO()).event("highstate-update", _decoded(source),
                                                  DeployReport(project="p", deployment="d"))
    assert out.getvalue() == f'{{"data": {source}, "event": "highstate-update"}}\n'


@pytest.mark.parametrize("source", [
    json.dumps({"msg": BIDI}, ensure_ascii=False),       # raw bidi override and U+2028
    json.dumps({"msg": C1}, ensure_ascii=False),         # raw 8-bit CSI and OSC
    '{"msg": "a\x7fb"}',                                 # raw DEL (valid JSON)
    '{"msg":\n "two lines"}',                            # a line end between values
])
def test_server_json_that_is_not_plain_ascii_on_one_line_is_encoded_again(source):
    out = io.StringIO()
    JsonPrinter(out=out, err=io.StringIO()).event("x", _decoded(source),
                                                  DeployReport(project="p", deployment="d"))
    assert out.getvalue().count("\n") == 1 and not raw_controls(out.getvalue())
    assert json.loads(out.getvalue()) == {"event": "x", "data": json.loads(source)}


def test_the_token_is_masked_in_json_passed_through():
    source = json.dumps({"msg": f"Bearer {TOKEN}", "cut": TOKEN[7:40], TOKEN[:20]: 1})
    out = io.StringIO()
    printer = JsonPrinter(out=out, err=io.StringIO(), secrets=(TOKEN,))
    printer.event("x", _decoded(source), DeployReport(project="p", deployment="d"))
    assert not leaks(out.getvalue()) and "***" in out.getvalue()
    json.loads(out.getvalue())


def test_a_short_secret_is_masked_whole_and_a_tiny_one_not_at_all():
    assert scrub("token=s3cr3t-tok here", ["s3cr3t-tok"]) == "token=*** here"
    assert scrub("a test of x", ["x"]) == "a test of x"


def test_scrub_is_quick_on_a_large_message():
    import time

    text = ("A" * 100 + " ") * 20_000  # 2 MB of token-like runs
    start = time.perf_counter()
    assert scrub(text, [TOKEN]) == text
    assert time.perf_counter() - start < 5
