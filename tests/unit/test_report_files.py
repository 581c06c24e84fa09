"""``spiro-deploy --junit FILE --html FILE`` against the fake server: the files
are written after the deploy, also a failed one; a path that cannot be
written is an error before anything is uploaded."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import junitparser
import pytest
import xmlschema

from spirodeploy.errors import ExitCode, UsageError
from spirodeploy.reportfiles import check_writable, write_reports
from tests.fakeserver import highstate_events
from tests.report_events import mixed_fleet

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "junit.xsd"
FAILED_RET = {"cmd_|-broken_|-false_|-run": {
    "result": False, "changes": {}, "comment": 'Command "false" run', "__run_num__": 0,
    "__id__": "broken", "name": "false", "duration": 12.5}}


def html_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text,
                     re.DOTALL)
    return json.loads(blob.group(1))


def junit_cases(path: Path) -> dict:
    xmlschema.XMLSchema(str(SCHEMA_FILE)).validate(str(path))
    xml = junitparser.JUnitXml.fromfile(str(path))
    return {(case.classname, case.name): case for suite in xml for case in suite}


def test_a_failed_deploy_writes_both_files(cli, fake_server, tmp_path):
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    junit, html = tmp_path / "out" / "junit.xml", tmp_path / "out" / "report.html"
    junit.parent.mkdir()
    code, _, err = cli("proj", "prod", "--insecure", "--junit", str(junit), "--html", str(html))
    assert code == ExitCode.DEPLOY_FAILED, err
    case = junit_cases(junit)[("minion-1", "broken (cmd.run)")]
    assert case.result[0].message == 'Command "false" run'
    assert case.time == pytest.approx(0.0125, abs=1e-3)
    assert [row[:2] for row in html_data(html)["minions"]] == [["minion-1", "failed"]]
    # Nothing half written is left beside them.
    assert sorted(p.name for p in junit.parent.iterdir()) == ["junit.xml", "report.html"]


def test_a_deploy_that_succeeded_writes_them_too(cli, tmp_path):
    junit = tmp_path / "junit.xml"
    code, _, err = cli("proj", "prod", "--insecure", "--junit", str(junit))
    assert code == ExitCode.OK, err
    assert [c.result for c in junit_cases(junit).values()] == [[], []]


@pytest.mark.parametrize("option", ["--junit", "--html"])
@pytest.mark.parametrize("where, message", [
    ("missing/dir/report", "does not exist"),
    (".", "is a directory"),
    ("", "the file name is empty"),
])
def test_an_unwritable_path_is_an_error_before_the_upload(cli, fake_server, tmp_path, option,
                                                          where, message):
    path = str(tmp_path / where) if where else ""
    code, _, err = cli("proj", "prod", "--insecure", option, path)
    assert code == ExitCode.USAGE
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"spiro-deploy: error: {option}") and message in lines[-1], err
    assert "Traceback" not in err
    assert fake_server.received == []  # nothing was uploaded


def test_a_directory_without_write_permission_is_refused(tmp_path):
    # os.access says yes to root for any mode, so the check creates a file.
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "x").mkdir()
    if os.geteuid() == 0:
        target = "/proc/self/report.xml"  # even root cannot create files there
    else:
        locked.chmod(0o500)
        target = str(locked / "report.xml")
    with pytest.raises(UsageError, match="cannot write in"):
        check_writable("junit", target)


def test_reports_are_not_for_dry_runs_or_history_verbs(cli, fake_server, tmp_path):
    for extra in (["--dry-run"], ["--history"], ["--rollback"]):
        code, _, err = cli("proj", "prod", "--insecure", "--junit", str(tmp_path / "j.xml"),
                           *extra)
        assert code == ExitCode.USAGE and "--junit and --html report a deploy" in err
    assert not (tmp_path / "j.xml").exists()
    assert fake_server.received == []


def test_a_deploy_refused_by_the_server_still_writes_them(cli, fake_server, tmp_path):
    fake_server.then(status=500, content_type="text/plain", chunks=[b"boom"])
    junit, html = tmp_path / "junit.xml", tmp_path / "report.html"
    code, _, err = cli("proj", "prod", "--insecure", "--junit", str(junit), "--html", str(html))
    assert code == ExitCode.SERVER and "HTTP 500" in err
    [(key, case)] = junit_cases(junit).items()
    assert key == ("proj/prod", "deploy")
    assert isinstance(case.result[0], junitparser.Error) and "HTTP 500" in case.result[0].message
    assert "HTTP 500" in html.read_text()


def test_write_reports_replaces_and_says_which_failed(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text("old")
    assert write_reports(mixed_fleet(), junit=str(junit)) == [str(junit)]
    assert junit.read_bytes().startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    with pytest.raises(UsageError, match=r"--html .*cannot write"):
        write_reports(mixed_fleet(), junit=str(junit), html=str(tmp_path / "gone" / "r.html"))


def test_a_report_file_error_names_each_faces_option(tmp_path):
    # The messages carry the setting; the CLI says --junit, a Salt face junit.
    from spirodeploy.errors import naming
    from spirodeploy.reportfiles import write_for_salt
    from spirodeploy.saltsupport import SALT_NAMES

    missing = str(tmp_path / "missing" / "junit.xml")
    with pytest.raises(UsageError) as cli_error:
        write_reports(mixed_fleet(), junit=missing)
    assert cli_error.value.message.startswith(f"--junit {missing!r}: cannot write")
    with naming(SALT_NAMES):
        ret = write_for_salt({}, mixed_fleet(), missing, None, secrets=())
    assert ret["report_files_error"].startswith(f"junit {missing!r}: cannot write")
    with pytest.raises(UsageError, match=r"^--html: the file name is empty$"):
        check_writable("html", "  ")
