"""The plain-Python side of the Salt modules: spirodeploy.saltsupport, .state, .saltloader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spirodeploy import saltloader, saltsupport
from spirodeploy import state as spirostate
from spirodeploy.errors import ConfigError, ConnectError, InvalidNameError
from spirodeploy.report import DeployReport
from tests.support import REPO, make_token

TOKEN = make_token()

STATE_OK = {"result": True, "changes": {}, "comment": "ok", "__run_num__": 0, "__id__": "a",
            "name": "a"}
STATE_CHANGED = {"result": True, "changes": {"diff": "new"}, "comment": "File updated",
                 "__run_num__": 1, "__id__": "hello-file", "name": "/tmp/hello.txt"}
STATE_FAILED = {"result": False, "changes": {}, "comment": "It failed\nsecond line",
                "__run_num__": 2, "__id__": "broken", "name": "broken"}


def update_result(*states, retcode=0):
    ret = {}
    for number, state in enumerate(states):
        ret[f"test_|-{state['__id__']}_|-{state['name']}_|-f{number}"] = state
    return {"ret": ret, "retcode": retcode, "jid": "1"}


def getter(values):
    return lambda key: values.get(key, "")


# --- settings ----------------------------------------------------------------------

def test_settings_come_from_arguments_then_config_then_environment():
    config = getter({"spirodeploy:server": "https://conf:4510/",
                     "spirodeploy:token": TOKEN, "spirodeploy:insecure": "true"})
    environ = {"SPIRO_URL": "https://env:4510/", "SPIRO_TOKEN": make_token({"env": 1})}

    settings = saltsupport.resolve_settings(config, environ=environ)
    assert (settings.server, settings.token, settings.insecure) == ("https://conf:4510/", TOKEN,
                                                                    True)

    explicit = make_token({"explicit": 1})
    settings = saltsupport.resolve_settings(config, server="https://arg:1/", token=explicit,
                                            insecure=False, environ=environ)
    assert (settings.server, settings.token, settings.insecure) == ("https://arg:1/", explicit,
                                                                    False)

    settings = saltsupport.resolve_settings(getter({}), environ=environ)
    assert (settings.server, settings.token) == ("https://env:4510/", environ["SPIRO_TOKEN"])


def test_explicit_token_file_hides_the_configured_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = getter({"spirodeploy:token": make_token({"other": 1})})
    settings = saltsupport.resolve_settings(config, server="https://s/", token_file=str(token_file),
                                            environ={})
    assert settings.token == TOKEN


def test_configured_token_file_and_timeouts(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = getter({"spirodeploy:server": "https://s:1/",
                     "spirodeploy:token_file": str(token_file),
                     "spirodeploy:timeout": "12", "spirodeploy:connect_timeout": 3})
    settings = saltsupport.resolve_settings(config, environ={})
    assert (settings.token, settings.read_timeout, settings.connect_timeout) == (TOKEN, 12.0, 3.0)


def test_both_token_and_token_file_configured_is_an_error(tmp_path):
    config = getter({"spirodeploy:token": TOKEN, "spirodeploy:token_file": "/x"})
    with pytest.raises(ConfigError, match="spirodeploy:token and spirodeploy:token_file"):
        saltsupport.resolve_settings(config, server="https://s/", environ={})


def test_explicit_ssl_cert_overrides_configured_insecure(tmp_path):
    from tests.saltbed.bed import make_tls_files

    ca = make_tls_files(tmp_path).ca_cert
    config = getter({"spirodeploy:insecure": True, "spirodeploy:token": TOKEN})
    settings = saltsupport.resolve_settings(config, server="https://s/", ssl_cert=str(ca),
                                            environ={})
    assert settings.insecure is False and settings.ssl_cert == str(ca)


def test_plain_http_needs_insecure():
    with pytest.raises(ConfigError, match="plain HTTP"):
        saltsupport.resolve_settings(getter({}), server="http://s/", token=TOKEN, environ={})


@pytest.mark.parametrize("value, expected", [(True, True), ("yes", True), ("0", False),
                                             (None, False), ("", False), (1, True)])
def test_to_bool(value, expected):
    assert saltsupport.to_bool(value) is expected


def test_to_bool_refuses_nonsense():
    with pytest.raises(ConfigError):
        saltsupport.to_bool("maybe")


@pytest.mark.parametrize("value", [True, 1, 1.0, "1", "true", "True", "TRUE", "yes", "Yes",
                                   "on", "ON", " y "])
def test_to_bool_reads_yes_the_way_salt_users_write_it(value):
    assert saltsupport.to_bool(value, "highstate", default=False) is True


@pytest.mark.parametrize("value", [False, 0, 0.0, "0", "false", "False", "FALSE", "no", "No",
                                   "off", "Off", "n"])
def test_to_bool_reads_no_the_way_salt_users_write_it(value):
    """bool("false") and bool("no") are True: that wiped saltenvs (issue 11, item 6)."""
    assert saltsupport.to_bool(value, "allow_empty", default=True) is False


@pytest.mark.parametrize("value", [None, "", "  "])
def test_to_bool_not_given_is_the_default(value):
    assert saltsupport.to_bool(value, "highstate", default=True) is True
    assert saltsupport.to_bool(value, "allow_empty", default=False) is False


@pytest.mark.parametrize("value", ["maybe", "nope", "2", 2, -1, 0.5, [], ["no"], {"a": 1},
                                   "none"])
def test_to_bool_refuses_what_it_cannot_read_naming_the_argument(value):
    with pytest.raises(ConfigError, match=r"^allow_empty must be true or false"):
        saltsupport.to_bool(value, "allow_empty")


def test_a_configured_insecure_that_cannot_be_read_names_the_setting():
    config = getter({"spirodeploy:insecure": "sometimes", "spirodeploy:token": TOKEN})
    with pytest.raises(ConfigError, match="spirodeploy:insecure must be true or false"):
        saltsupport.resolve_settings(config, server="https://s/", environ={})


@pytest.mark.parametrize("text", ["false", "no", "off", "0"])
def test_a_configured_insecure_false_as_text_keeps_tls_checks(text):
    config = getter({"spirodeploy:insecure": text, "spirodeploy:token": TOKEN})
    settings = saltsupport.resolve_settings(config, server="https://s/", environ={})
    assert settings.insecure is False


def test_token_files_lists_every_place_a_token_file_is_named():
    config = getter({"spirodeploy:token_file": "/etc/conf.token"})
    assert saltsupport.token_files(config, "/arg.token", {"SPIRO_TOKEN_FILE": "/env.token"}) \
        == ["/arg.token", "/etc/conf.token", "/env.token"]
    assert saltsupport.token_files(getter({}), None, {}) == []
    assert saltsupport.token_files(None, None, {"SPIRO_TOKEN_FILE": ""}) == []


def test_to_list():
    assert saltsupport.to_list("a, b,,c") == ["a", "b", "c"]
    assert saltsupport.to_list(["a", 1]) == ["a", "1"]
    assert saltsupport.to_list(None) == []
    with pytest.raises(ConfigError):
        saltsupport.to_list({"a": 1})


def test_config_getter_walks_nested_keys():
    get = saltsupport.config_getter({"spirodeploy": {"server": "https://m/"}})
    assert get("spirodeploy:server") == "https://m/"
    assert get("spirodeploy:token") is None
    assert get("other:x") is None


# --- events ------------------------------------------------------------------------

def test_bus_event_tag_and_flat_data():
    tag, data = saltsupport.bus_event("proj", "prod", "highstate-start",
                                      {"msg": "Highstating 1 minions", "minions": ["m1"]})
    assert tag == "spirodeploy/proj/prod/highstate-start"
    assert data == {"project": "proj", "deployment": "prod", "event": "highstate-start",
                    "msg": "Highstating 1 minions", "minions": ["m1"]}


def test_bus_event_reduces_a_highstate_result_to_a_summary():
    many = [dict(STATE_CHANGED, __id__=f"s{i}", name=f"/tmp/{i}", __run_num__=i)
            for i in range(100)]
    result = update_result(STATE_OK, STATE_FAILED, *many, retcode=2)
    _, data = saltsupport.bus_event("p", "d", "highstate-update",
                                    {"msg": "Minion m1 finished", "minion": "m1",
                                     "result": result})
    summary = data["result"]
    assert summary["succeeded"] is False and summary["retcode"] == 2
    assert summary["counts"] == {"ok": 1, "changed": 100, "failed": 1}
    assert summary["failed"] == [{"id": "broken", "function": "test.f1", "name": "broken",
                                  "comment": "It failed\nsecond line"}]
    # Bounded like the report's summary (issue 14): the first few, then "truncated".
    assert [c["id"] for c in summary["changed"]] == ["s0", "s1", "s2", "s3", "s4"]
    assert summary["truncated"] is True
    assert "_|-" not in json.dumps(summary)
    assert len(json.dumps(data)) < saltsupport.MAX_EVENT_BYTES


def test_bus_event_no_response_and_render_errors():
    _, data = saltsupport.bus_event("p", "d", "highstate-update",
                                    {"msg": "x", "minion": "m", "result": {"failed": True}})
    assert data["result"]["no_response"] is True
    _, data = saltsupport.bus_event("p", "d", "highstate-update",
                                    {"msg": "x", "minion": "m",
                                     "result": {"ret": ["Rendering SLS failed"], "retcode": 1}})
    assert data["result"]["errors"] == ["Rendering SLS failed"]


def test_bus_event_cuts_long_text_and_scrubs_the_token():
    _, data = saltsupport.bus_event("p", "d", "exception",
                                    {"msg": f"Traceback {TOKEN} " + "x" * 10000}, [TOKEN])
    assert TOKEN not in json.dumps(data)
    assert len(data["msg"]) < 5000 and data["msg"].startswith("Traceback *** x")


def test_bus_event_of_odd_data():
    _, data = saltsupport.bus_event("p", "d", "custom", ["not", "a", "dict"])
    assert data["event"] == "custom" and "not" in data["msg"]
    _, data = saltsupport.bus_event("p", "d", "custom", {"msg": "m", "project": "evil"})
    assert data["project"] == "p" and data["data_project"] == "evil"


def test_fire_event_paths(monkeypatch):
    import logging

    warned = []
    monkeypatch.setattr(logging.getLogger("spirodeploy.saltsupport"), "warning",
                        lambda *args: warned.append(args))
    sent = []
    send = lambda tag, data: sent.append((tag, data)) or True  # noqa: E731
    assert saltsupport.fire_event({"__role": "minion"}, send, "t", {"a": 1}) is True
    assert sent == [("t", {"a": 1})]
    assert saltsupport.fire_event({"__role": "minion", "file_client": "local"}, send, "t", {}) \
        is False
    assert saltsupport.fire_event({"__role": "minion", "local": True}, send, "t", {}) is False
    assert len(sent) == 1

    def broken(tag, data):
        raise RuntimeError("bus down")

    assert saltsupport.fire_event({"__role": "minion"}, broken, "t", {}) is False
    assert warned and "bus down" in str(warned[0])


def test_scrub_walks_everything():
    value = {f"k{TOKEN}": [f"a {TOKEN} b", ("x", TOKEN)], "n": 1, "none": None}
    assert saltsupport.scrub(value, [TOKEN, None]) == {"k***": ["a *** b", ["x", "***"]], "n": 1,
                                                       "none": None}
    # Short strings are never treated as secrets (they would mangle everything).
    assert saltsupport.scrub({"a": "abc"}, ["a"]) == {"a": "abc"}


def test_scrub_masks_part_of_the_token_too():
    # A server body cut at a length limit can hold the token's first half.
    half = TOKEN[: len(TOKEN) // 2]
    assert half not in str(saltsupport.scrub({"comment": f"echo: {half}"}, [TOKEN]))


def test_error_report_has_the_report_shape():
    report = saltsupport.error_report("p", "d", ConnectError("cannot connect to x"))
    data = report.to_dict()
    assert data["result"] is False and data["exit_code"] == 4
    assert data["error"] == "cannot connect to x" and data["events"] == []
    assert data["server_has_bundle"] is False


def test_line_sink_emits_complete_lines():
    lines = []
    sink = saltsupport.LineSink(lines.append)
    print("one", file=sink)
    sink.write("two\nthr")
    sink.write("ee\n")
    assert lines == ["one", "two", "three"] and not sink.isatty()


def test_watch_own_highstate_stops_when_only_this_minion_is_left():
    report = DeployReport("p", "d")
    seen = []
    callback = saltsupport.watch_own_highstate("me", lambda e, d, r: seen.append(e))

    def feed(event, data):
        report.add(event, data)
        callback(event, data, report)

    feed("deploy-bundle", {"msg": "x"})
    feed("highstate-start", {"msg": "x", "minions": ["me", "other"]})
    with pytest.raises(saltsupport.StopWaiting) as stop:
        feed("highstate-update", {"msg": "x", "minion": "other", "result": update_result(STATE_OK)})
    assert stop.value.minion == "me" and stop.value.report is report
    assert seen == ["deploy-bundle", "highstate-start", "highstate-update"]

    # Not among the minions: nothing happens.
    other = DeployReport("p", "d")
    callback = saltsupport.watch_own_highstate("me")
    other.add("highstate-start", {"msg": "x", "minions": ["a"]})
    callback("highstate-start", {}, other)


def test_check_token_says_what_the_token_allows(fake_server):
    token = make_token({"not_before": 0, "not_after": 4102444800, "project_allow": ["p"]})
    settings = saltsupport.resolve_settings(None, server=fake_server.url, token=token,
                                            insecure=True, environ={})
    ret = saltsupport.check_token(settings, project="p")
    one = {"result": True, "server": fake_server.url, "project": "p",
           "message": "the server accepted the token and it may deploy project p",
           "projects": ["p"], "expires": "2100-01-01T00:00:00Z"}
    # One server: the keys it always had, plus the per-server part (multi-master).
    assert ret == {**one, "servers": [one], "failed_servers": []}
    assert fake_server.received[0].headers["Authorization"] == f"Bearer {token}"


# --- what is deployed -------------------------------------------------------------------

def manifest(*files, digest=None):
    entries = [{"path": path, "size": 1, "sha256": sha, "mode": 420} for path, sha in files]
    from tests.support import make_manifest

    made = make_manifest(entries, tool="test")
    if digest:
        made["digest"] = digest
    return made


def test_parse_manifest():
    good = manifest(("top.sls", "a"))
    assert spirostate.parse_manifest(json.dumps(good)) == good
    assert spirostate.parse_manifest(good) == good
    for bad in (False, "", None, "not json", "[]", '{"digest": 1}', b"{}"):
        assert spirostate.parse_manifest(bad) is None


def test_records_round_trip(tmp_path):
    path = spirostate.record_path(str(tmp_path), "my proj", "a%b")
    assert path.startswith(str(tmp_path)) and "a%25b.json" in path
    assert spirostate.read_record(path) is None
    m = manifest(("top.sls", "a"))
    written = spirostate.write_record(path, project="my proj", deployment="a%b", manifest=m,
                                      sha256="f" * 64, succeeded=True, now=5)
    assert spirostate.read_record(path) == written
    assert written["digest"] == m["digest"] and written["time"] == 5
    Path(path).write_text("{broken")
    assert spirostate.read_record(path) is None


@pytest.mark.parametrize("project, deployment", [(".", "prod"), ("..", "prod"),
                                                 ("proj", "."), ("proj", ".."),
                                                 ("proj", ".hidden"), ("proj", "a/b")])
def test_record_path_refuses_names_that_leave_its_directory(tmp_path, project, deployment):
    """'.' would put the record of proj/'.' into the records of every project."""
    with pytest.raises(InvalidNameError):
        spirostate.record_path(str(tmp_path), project, deployment)


@pytest.mark.parametrize("project, deployment", [(".", "prod"), ("proj", "a/b"),
                                                 ("proj", ".")])
def test_event_tags_refuse_bad_names(project, deployment):
    with pytest.raises(InvalidNameError):
        saltsupport.bus_event(project, deployment, "deploy-bundle", {"msg": "x"})


def test_the_server_manifest_wins_over_the_record():
    served, recorded = manifest(("top.sls", "a")), manifest(("top.sls", "b"))
    record = {"manifest": recorded, "digest": recorded["digest"], "succeeded": True,
              "sha256": "s"}
    known = spirostate.what_is_deployed(json.dumps(served), record, saltenv="p/d", visible=True)
    assert (known.source, known.digest, known.sha256) == ("server", served["digest"], None)
    assert "serves .spirodeploy.json" in known.detail
    assert spirostate.needs_deploy(known, recorded) is True
    assert spirostate.needs_deploy(known, served) is False


def test_record_used_when_the_saltenv_is_not_visible():
    recorded = manifest(("top.sls", "b"))
    record = {"manifest": recorded, "digest": recorded["digest"], "succeeded": True,
              "sha256": "s"}
    known = spirostate.what_is_deployed(False, record, saltenv="p/d", visible=False)
    assert (known.source, known.sha256) == ("local record", "s")
    assert "local record" in known.detail
    assert spirostate.needs_deploy(known, recorded) is False


def test_a_failed_last_deploy_of_the_same_content_is_retried():
    m = manifest(("top.sls", "b"))
    record = {"manifest": m, "digest": m["digest"], "succeeded": False, "sha256": "s"}
    for served in (json.dumps(m), False):
        known = spirostate.what_is_deployed(served, record, saltenv="p/d", visible=bool(served))
        assert known.last_deploy_failed and spirostate.needs_deploy(known, m)


def test_a_visible_saltenv_without_manifest_is_unknown():
    m = manifest(("top.sls", "b"))
    record = {"manifest": m, "digest": m["digest"], "succeeded": True}
    known = spirostate.what_is_deployed(False, record, saltenv="p/d", visible=True)
    assert known.source == "nothing" and "content is unknown" in known.detail
    assert spirostate.needs_deploy(known, m)
    nothing = spirostate.what_is_deployed(False, None, saltenv="p/d", visible=False)
    assert nothing.source == "nothing" and "no local record" in nothing.detail


def test_file_changes():
    old = manifest(("a", "1"), ("b", "2"), ("c", "3"))
    new = manifest(("a", "1"), ("b", "9"), ("d", "4"))
    assert spirostate.file_changes(old, new) == {"added": ["d"], "removed": ["c"],
                                                 "modified": ["b"]}
    assert spirostate.file_changes(old, old) == {}
    assert spirostate.file_changes(None, new) == {"added": ["a", "b", "d"]}


def test_failure_comment_names_minions_and_states():
    report = DeployReport("p", "d")
    report.add("deploy-bundle", {"msg": "x"})
    report.add("highstate-start", {"msg": "x", "minions": ["m1", "m2", "m3", "m4", "m5"]})
    report.add("highstate-update", {"msg": "x", "minion": "m1",
                                    "result": update_result(STATE_OK, STATE_FAILED, retcode=2)})
    report.add("highstate-update", {"msg": "x", "minion": "m2", "result": {"failed": True}})
    report.add("highstate-update", {"msg": "x", "minion": "m3",
                                    "result": {"ret": ["Rendering SLS 'x' failed"], "retcode": 1}})
    report.add("highstate-update", {"msg": "x", "minion": "m4", "result": update_result(STATE_OK)})
    report.add("highstate-finish", {"msg": "x"})
    comment = spirostate.failure_comment(report)
    assert comment == (
        "Deployed p/d, but the highstate failed: m1 failed 1 state: broken (test.f1): It failed; "
        "m2 did not respond; m3 could not run its highstate: Rendering SLS 'x' failed; "
        "never reported: m5")
    assert spirostate.minions_outcome(report) == {"succeeded": ["m4"],
                                                  "failed": ["m1", "m2", "m3"],
                                                  "unreported": ["m5"]}


def test_failure_comment_for_server_and_client_errors():
    report = DeployReport("p", "d")
    report.add("exception", {"msg": "Traceback...\n  File x\nOSError: disk full\n"})
    assert spirostate.failure_comment(report) == \
        "Deploy of p/d failed on the server: OSError: disk full"
    report = saltsupport.error_report("p", "d", ConnectError("cannot connect"))
    assert spirostate.failure_comment(report) == "Deploy of p/d did not complete: cannot connect"
    report = DeployReport("p", "d")
    report.add("deploy-bundle", {"msg": "x"})
    assert "ended early" in spirostate.failure_comment(report)


# --- saltloader ---------------------------------------------------------------------------

def test_saltloader_finds_the_checkout_dirs():
    assert saltloader.module_dirs() == [str(REPO / "_modules")]
    assert saltloader.runner_dirs() == [str(REPO / "_runners")]
    assert saltloader.states_dirs() == [str(REPO / "_states")]


def test_saltloader_prefers_the_installed_layout(tmp_path, monkeypatch):
    package = tmp_path / "spirodeploy"
    (package / "salt_modules").mkdir(parents=True)
    (package / "salt_modules" / "spirodeploy_mod.py").write_text("")
    monkeypatch.setattr(saltloader, "_PACKAGE_DIR", str(package))
    assert saltloader.module_dirs() == [str(package / "salt_modules")]
    assert saltloader.states_dirs() == []


def test_saltloader_does_not_import_salt():
    code = ("import sys, spirodeploy.saltloader as l; l.module_dirs(); "
            "print(any(m == 'salt' or m.startswith('salt.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), (False, None), ("false", None), ("No", None), ("off", None),
    (True, "auto"), ("yes", "auto"), ("True", "auto"), ("git", "git"), ("fs", "fs"),
    ("auto", "auto")])
def test_include_source_reads_yes_no_too(value, expected):
    """include_source: "false" from pillar is no source, not an unknown method."""
    assert saltsupport.to_source(value) == expected


# --- issue 13: the library never fires on Salt's bus itself; status logic ---------------

def test_fire_event_on_the_master_goes_through_the_given_sender():
    sent = []
    opts = {"__role": "master", "sock_dir": "/nonexistent", "file_client": "local"}
    assert saltsupport.fire_event(opts, lambda tag, data: sent.append(tag) or True,
                                  "t", {}) is True
    assert sent == ["t"]
    assert saltsupport.fire_event(opts, None, "t", {}) is False


def test_what_is_served_from_the_manifest_the_gitcommit_or_nothing():
    made = manifest(("a.sls", "1" * 64))
    files = {spirostate.MANIFEST_NAME: json.dumps(made), "a.sls": "x"}
    served = spirostate.what_is_served("p", "d", sorted(files), files.get, manifest=True)
    assert served["visible"] is True and served["source"] == "manifest"
    assert served["digest"] == made["digest"] and served["file_count"] == 1
    assert served["manifest"] == made and "serves a bundle of 1 files" in served["comment"]
    old = {".gitcommit": "abc\nheads/main\n", "a.sls": "x"}
    served = spirostate.what_is_served("p", "d", sorted(old), old.get)
    assert served["source"] == "gitcommit" and served["gitcommit"] == "abc\nheads/main"
    assert served["file_count"] == 2 and "manifest" not in served
    hidden = spirostate.what_is_served("p", "d", [], {}.get, manifest=True)
    assert hidden["visible"] is False and hidden["source"] is None and "manifest" not in hidden
    assert "not visible from this minion" in hidden["comment"]
    assert spirostate.record_summary(None) is None
    assert spirostate.record_summary({"digest": "d", "sha256": "s", "succeeded": True,
                                      "time": 1, "manifest": made}) == {
        "digest": "d", "sha256": "s", "succeeded": True, "time": 1}
