"""The deploy as JUnit XML, the format CI test widgets read (``--junit FILE``).

GitLab's merge request widget, GitHub checks and Jenkins render it.  The
mapping, one ``<testsuite>`` per deploy named ``<project>/<deployment>``:

* one test case ``deploy`` for the deploy itself: an ``<error>`` when the
  server raised, the client gave up (stream cut, timeout, refused) or the
  deploy never finished;
* per minion (``classname`` is the minion id):

  - one test case per **failed** state, a ``<failure>`` with the state's
    comment (``type`` is the state function, e.g. ``file.managed``);
  - one test case per **changed** state, passing;
  - the states that succeeded **unchanged** folded into one test case
    ``unchanged states (N)``: a fleet of thousands of minions with hundreds
    of states each would otherwise give millions of test cases, and the
    report does not keep those states one by one;
  - failed or changed states the report counted but did not keep (it keeps
    the first few per minion) folded likewise, the failed ones as a failure;
  - a minion that never reported, did not answer, or sent render errors:
    one test case ``highstate`` with an ``<error>``;

* test times are the states' durations (Salt's ``duration``, in seconds
  here), the folded cases' the sum of theirs;
* ``<properties>`` carry the bundle's ``sha256``, ``digest`` and
  ``.gitcommit`` (as ``bundle.sha256`` ...), the exit code and the summary.

The XML is valid against the JUnit schema of Jenkins' xUnit plugin (the
tests keep a copy); text is escaped by ElementTree, and characters XML
cannot carry are shown as ``\\x1b`` (:func:`spirodeploy.reportview.safe_text`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from .reportview import MinionView, ReportView, StateView, view

_ERROR_TYPES = {"unreported": "unreported", "no-response": "no-response",
                "error": "render-error"}

#: A failure's ``message`` attribute is the first line of the comment, cut to this.
MESSAGE_LIMIT = 200


def render(report: Any, secrets: Iterable[str] = ()) -> bytes:
    """The JUnit XML document for ``report`` (UTF-8 bytes, with the XML declaration).

    ``secrets`` (the token) are masked in every piece of text.
    """
    data = view(report, secrets)
    suite = ET.Element("testsuite", name=data.target)
    properties = ET.SubElement(suite, "properties")
    for name, value in _properties(data):
        ET.SubElement(properties, "property", name=name, value=value)

    counts = {"tests": 0, "failures": 0, "errors": 0}
    total_ms = 0.0
    for case in _cases(data):
        suite.append(case)
        counts["tests"] += 1
        if case.find("failure") is not None:
            counts["failures"] += 1
        elif case.find("error") is not None:
            counts["errors"] += 1
        if case.get("time") is not None:
            total_ms += float(case.get("time")) * 1000
    if data.messages:
        ET.SubElement(suite, "system-out").text = "\n".join(data.messages) + "\n"

    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("skipped", "0")
    suite.set("time", _seconds(total_ms))
    if data.started_at is not None:
        suite.set("timestamp", _timestamp(data.started_at))

    root = ET.Element("testsuites", name="spiro-deploy", tests=str(counts["tests"]),
                      failures=str(counts["failures"]), errors=str(counts["errors"]),
                      time=_seconds(total_ms))
    root.append(suite)
    ET.indent(root)
    # ElementTree's own declaration uses single quotes and "utf-8"; some
    # consumers only recognise the usual spelling.
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n")


def _properties(data: ReportView) -> list[tuple[str, str]]:
    props = [("project", data.project), ("deployment", data.deployment)]
    props += [(f"bundle.{key}", value) for key, value in data.bundle.items()]
    props += [
        ("exit_code", str(data.exit_code)),
        ("summary", data.summary),
        ("minions.expected", str(data.expected)),
        ("minions.reported", str(sum(1 for m in data.minions if m.status != "unreported"))),
    ]
    return props


def _cases(data: ReportView):
    yield _deploy_case(data)
    for minion in data.minions:
        yield from _minion_cases(minion)


def _deploy_case(data: ReportView) -> ET.Element:
    case = _case(data.target, "deploy")
    if data.exception:
        _problem(case, "error", "the server raised an exception", data.exception)
    elif data.error:
        _problem(case, "error", data.error, data.error)
    elif not data.deployed:
        _problem(case, "error", "the server never said it was deploying the bundle", data.summary)
    elif not data.finished:
        _problem(case, "error", "the server never said the deploy finished", data.summary)
    return case


def _minion_cases(minion: MinionView):
    if minion.status in ("unreported", "no-response", "error"):
        case = _case(minion.minion, "highstate", minion.duration_ms)
        details = "\n\n".join(minion.errors) if minion.errors else minion.reason
        _problem(case, "error", minion.reason, details, kind=_ERROR_TYPES[minion.status])
        yield case
        return
    for state in minion.failed_states:
        case = _case(minion.minion, _state_name(state), state.duration_ms)
        _problem(case, "failure", state.comment or "the state failed", _state_details(state),
                 kind=state.function or "state")
        yield case
    if minion.failed_omitted:
        case = _case(minion.minion, f"more failed states ({minion.failed_omitted})")
        _problem(case, "failure", f"{minion.failed_omitted} more states failed",
                 f"{minion.failed_omitted} more states failed; the report keeps the first "
                 f"{len(minion.failed_states)} (see the job cache, jid {minion.jid or '?'})",
                 kind="state")
        yield case
    if minion.status == "failed" and not minion.failed_states and not minion.failed_omitted:
        # Failed without a failed state (a retcode): still a failure to see.
        case = _case(minion.minion, "highstate", minion.duration_ms)
        _problem(case, "failure", minion.reason, minion.reason, kind="retcode")
        yield case
    for state in minion.changed_states:
        yield _case(minion.minion, _state_name(state), state.duration_ms)
    if minion.changed_omitted:
        yield _case(minion.minion, f"more changed states ({minion.changed_omitted})")
    if minion.counts.get("ok"):
        yield _case(minion.minion, f"unchanged states ({minion.counts['ok']})",
                    minion.unchanged_duration_ms)


def _state_name(state: StateView) -> str:
    return f"{state.id} ({state.function})" if state.function else state.id


def _state_details(state: StateView) -> str:
    lines = [f"state: {state.id}"]
    if state.function:
        lines.append(f"function: {state.function}")
    if state.name and state.name != state.id:
        lines.append(f"name: {state.name}")
    if state.sls:
        lines.append(f"sls: {state.sls}")
    return "\n".join(lines) + "\n\n" + state.comment


def _case(classname: str, name: str, duration_ms: float | None = None) -> ET.Element:
    case = ET.Element("testcase", classname=classname, name=name)
    if duration_ms is not None:
        case.set("time", _seconds(duration_ms))
    return case


def _problem(case: ET.Element, tag: str, message: str, details: str, kind: str = "") -> None:
    first = message.strip().splitlines()[0] if message.strip() else tag
    if len(first) > MESSAGE_LIMIT:
        first = first[:MESSAGE_LIMIT] + "…"
    element = ET.SubElement(case, tag, message=first)
    if kind:
        element.set("type", kind)
    element.text = details


def _seconds(ms: float) -> str:
    # The schema's time pattern: digits and a dot, no exponent, no sign.
    return f"{max(ms, 0.0) / 1000:.3f}"


def _timestamp(epoch: float) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.replace(tzinfo=None).isoformat(timespec="seconds")
