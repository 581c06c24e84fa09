"""spiro-deploy's Salt faces on the real bed: a salt-master running SpiroFS 0.3
and a salt-minion (tests/saltbed).

The modules reach the daemons the way the README's second install route
says: ``_modules``, ``_runners`` and ``_states`` are copied into the master's
file_roots and synced with ``saltutil.sync_all`` (minion) and
``salt-run saltutil.sync_all`` (master: runners, and modules and states for
orchestration).  Settings come from pillar, as documented: the token is
never an argument, so it must appear in no job return, no job cache file and
no event.

A highstate of saltenv ``<project>/<deployment>`` makes the minion sync its
dynamic modules from that saltenv only, and Salt then removes the modules it
had synced from ``base`` (``clean_dynamic_modules``); and a plain
``saltutil.sync_all`` syncs from the saltenvs the minion's top files match,
which are the deployments once anything is deployed, so it must be told
``saltenv=base``.  So every deploy that
highstates the bed's minion also unsyncs spirodeploy from it; the
``synced`` fixture syncs again before each test (and the state test after
its queued highstate).  docs/salt.md tells users the same.

Note the bed's one minion is both the build host and the highstated minion.
``salt-call spirodeploy.deploy`` is fine (it is not a state run), but a state
run on that minion cannot wait for its own highstate (SpiroFS queues it):
the state tests check that the state notices and stops waiting, and the
failing-highstate state test runs as an orchestration on the master, which
is how a fleet of build hosts would do it anyway.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support import REPO, call, state_results, sync_minion

HIGHSTATE_EVENTS = ["deploy-bundle", "highstate-calc", "highstate-start", "highstate-update",
                    "highstate-finish"]
GREETING = "Hello from spiro-deploy!"

pytestmark = pytest.mark.timeout(300)


def wait_for(predicate, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def json_documents(text: str) -> list:
    """Every JSON document printed one after another (salt-run --out=json with progress)."""
    decoder, docs, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except ValueError:
            # Not JSON (a log line): skip it.
            nl = text.find("\n", pos)
            if nl < 0:
                return docs
            pos = nl + 1
            continue
        docs.append(doc)


def bus_payload(event) -> dict:
    """Our data from a master-bus event (salt-call's fire_master wraps it in ``data``)."""
    data = event.data
    if isinstance(data, dict) and "cmd" in data and isinstance(data.get("data"), dict):
        return data["data"]
    return data


def assert_token_not_on_the_bus(spiro_bed, event_listener, since: float) -> None:
    """No event on the master's bus since ``since`` carries the token."""
    events = event_listener.get_events([(spiro_bed.master.id, "*")], after_time=since)
    assert events
    text = json.dumps([[e.tag, e.full_data] for e in events], default=str)
    assert spiro_bed.root_token not in text


@pytest.fixture(scope="module")
def project(spiro_bed, tmp_path_factory):
    return spiro_bed.make_project(tmp_path_factory.mktemp("salt-project"))


@pytest.fixture(scope="module")
def failing_project(spiro_bed, tmp_path_factory):
    return spiro_bed.make_project(tmp_path_factory.mktemp("salt-failing"), fail=True)


def test_sync_all_route_installs_the_modules(spiro_bed, salt_ext):
    minion = salt_ext["minion_sync"]
    # The sync reports file names; Salt loads them as spirodeploy (__virtualname__).
    assert "modules.spirodeploy_mod" in minion["modules"]
    assert "states.spirodeploy_mod" in minion["states"]
    assert "runners.spirodeploy_mod" in salt_ext["master_sync"]["runners"]
    ret = call(spiro_bed, "sys.list_functions", "spirodeploy")
    assert ret.data == public_functions("_modules")
    assert {"spirodeploy.deploy", "spirodeploy.upload", "spirodeploy.status"} <= set(ret.data)
    ret = call(spiro_bed, "sys.doc", "spirodeploy.deploy")
    assert "CLI Example" in ret.data["spirodeploy.deploy"]
    ret = call(spiro_bed, "sys.list_state_functions", "spirodeploy")
    assert ret.data == public_functions("_states")
    assert "spirodeploy.deployed" in ret.data


def public_functions(face: str) -> list[str]:
    """What Salt should list for a face: its public top-level functions."""
    import ast

    tree = ast.parse((REPO / face / "spirodeploy_mod.py").read_text())
    return sorted(f"spirodeploy.{node.name}" for node in tree.body
                  if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"))


def test_check_token_with_pillar_settings(spiro_bed, salt_ext, synced):
    ret = call(spiro_bed, "spirodeploy.check_token", "project=hello")
    assert ret.returncode == 0, ret
    assert ret.data["result"] is True and ret.data["server"] == spiro_bed.https_url
    # salt-call exits 1 on any failure; --retcode-passthrough gives the CLI's exit code.
    bad = call(spiro_bed, "--retcode-passthrough", "spirodeploy.check_token",
               "token=not-a-valid-token")
    assert bad.returncode == 5 and bad.data["result"] is False, bad
    assert "rejected" in bad.data["error"] and bad.data["exit_code"] == 5


def test_salt_call_deploy_highstates_the_minion(spiro_bed, synced, project, event_listener):
    start = time.time()
    ret = call(spiro_bed, "spirodeploy.deploy", "hello", "s-call", f"root={project}")
    assert ret.returncode == 0, ret
    report = ret.data
    assert report["result"] is True and report["exit_code"] == 0
    assert [e["event"] for e in report["events"]] == HIGHSTATE_EVENTS
    assert report["minions"] == {"expected": [spiro_bed.minion_id],
                                 "reported": [spiro_bed.minion_id], "failed": [],
                                 "unreported": []}
    minion = report["results"][spiro_bed.minion_id]
    assert minion["succeeded"] is True and minion["counts"]["failed"] == 0
    assert report["bundle"]["file_count"] == 3 and len(report["bundle"]["sha256"]) == 64
    output = spiro_bed.output_file("hello", "s-call")
    assert output.read_text().splitlines()[0] == GREETING
    assert spiro_bed.root_token not in ret.stdout

    # Each event on the master's bus, with the documented tags and no token.
    tags = [f"spirodeploy/hello/s-call/{name}" for name in HIGHSTATE_EVENTS]
    matched = event_listener.wait_for_events([(spiro_bed.master.id, t) for t in tags],
                                             timeout=30, after_time=start)
    assert matched.found_all_events, matched.missed
    by_tag = {event.tag: bus_payload(event) for event in matched}
    update = by_tag["spirodeploy/hello/s-call/highstate-update"]
    assert update["minion"] == spiro_bed.minion_id and update["result"]["succeeded"] is True
    assert "ret" not in update["result"]
    assert by_tag["spirodeploy/hello/s-call/highstate-start"]["minions"] == [spiro_bed.minion_id]
    assert_token_not_on_the_bus(spiro_bed, event_listener, start)

    # The minion now sees what it deployed.
    sync_minion(spiro_bed)
    status = call(spiro_bed, "spirodeploy.status", "hello", "s-call")
    assert status.returncode == 0, status
    assert status.data["visible"] is True and status.data["source"] == "manifest"
    assert status.data["digest"] == report["bundle"]["digest"]


def test_salt_call_deploy_with_a_failing_state(spiro_bed, salt_ext, synced, failing_project):
    try:
        ret = call(spiro_bed, "spirodeploy.deploy", "hello", "s-callfail",
                   f"root={failing_project}")
        assert ret.returncode == 1, ret
        report = ret.data
        assert report["result"] is False and report["minions"]["failed"] == [spiro_bed.minion_id]
        failed = report["results"][spiro_bed.minion_id]["failed"]
        assert [s["id"] for s in failed] == ["spirodeploy-example-failure"]
    finally:
        spiro_bed.remove_deployment("hello", "s-callfail")


def test_salt_call_bundle_then_upload(spiro_bed, salt_ext, synced, project, tmp_path):
    tar = tmp_path / "hello.tar"
    built = call(spiro_bed, "spirodeploy.bundle", str(project), str(tar))
    assert built.returncode == 0 and built.data["result"] is True and tar.is_file()
    ret = call(spiro_bed, "spirodeploy.upload", "hello", "s-upload", str(tar), "highstate=False")
    assert ret.returncode == 0, ret
    assert [e["event"] for e in ret.data["events"]] == ["deploy-bundle"]
    assert ret.data["bundle"]["sha256"] == built.data["sha256"]
    assert (spiro_bed.deploy_dir("hello", "s-upload") / ".spirodeploy.json").is_file()


def test_salt_run_deploy_prints_progress(spiro_bed, salt_ext, project, failing_project,
                                         event_listener):
    env = {"SPIRO_TOKEN": spiro_bed.root_token}
    settings = [f"server={spiro_bed.https_url}", f"ssl_cert={spiro_bed.ca_cert}"]
    start = time.time()
    ret = spiro_bed.salt_run_cli.run("spirodeploy.deploy", "hello", "s-run", f"root={project}",
                                     *settings, env=env)
    assert ret.returncode == 0, ret
    docs = json_documents(ret.stdout)
    progress = [d["event"]["message"] for d in docs[:-1]
                if isinstance(d, dict) and d.get("suffix") == "progress"]
    bundle = docs[-1]["bundle"]
    assert progress[0].startswith(f"Deploying {bundle['file_count']} files (")
    assert progress[0].endswith(" KiB) to hello/s-run")
    assert "Deploying bundle" in progress
    assert f"== {spiro_bed.minion_id}: 0 ok, 1 changed, 0 failed ==" in progress
    assert progress[-1] == "Deployed hello/s-run: 1 of 1 minions reported"
    report = docs[-1]
    assert report["retcode"] == 0 and report["result"] is True
    assert [e["event"] for e in report["events"]] == HIGHSTATE_EVENTS
    assert spiro_bed.output_file("hello", "s-run").is_file()
    # Progress reached the bus as job events, and the deploy events under our tags.
    matched = event_listener.wait_for_events(
        [(spiro_bed.master.id, "salt/run/*/progress"),
         (spiro_bed.master.id, "spirodeploy/hello/s-run/highstate-finish")],
        timeout=30, after_time=start)
    assert matched.found_all_events, matched.missed
    assert spiro_bed.root_token not in ret.stdout
    assert_token_not_on_the_bus(spiro_bed, event_listener, start)

    try:
        failed = spiro_bed.salt_run_cli.run("spirodeploy.deploy", "hello", "s-runfail",
                                            f"root={failing_project}", *settings, env=env)
        assert failed.returncode == 1, failed
        assert json_documents(failed.stdout)[-1]["minions"]["failed"] == [spiro_bed.minion_id]
    finally:
        spiro_bed.remove_deployment("hello", "s-runfail")


def test_salt_run_check_token(spiro_bed, salt_ext):
    env = {"SPIRO_TOKEN": spiro_bed.root_token}
    ok = spiro_bed.salt_run_cli.run("spirodeploy.check_token", f"server={spiro_bed.https_url}",
                                    f"ssl_cert={spiro_bed.ca_cert}", env=env)
    assert ok.returncode == 0 and ok.data["result"] is True, ok
    bad = spiro_bed.salt_run_cli.run("spirodeploy.check_token", f"server={spiro_bed.https_url}",
                                     f"ssl_cert={spiro_bed.ca_cert}",
                                     env={"SPIRO_TOKEN": "bm90LWEtdG9rZW4"})
    assert bad.returncode == 5, bad


def test_state_deployed_twice_then_test_mode(spiro_bed, synced, tmp_path, event_listener):
    """First run deploys (and stops waiting for this minion's own queued
    highstate), the second changes nothing and uploads nothing, test=True
    lists what would change."""
    project = spiro_bed.make_project(tmp_path)
    sls = f"""
hello-s-state:
  spirodeploy.deployed:
    - name: hello/s-state
    - root: {json.dumps(str(project))}
"""
    output = spiro_bed.output_file("hello", "s-state")
    begin = time.time()
    with spiro_bed.master.state_tree.base.temp_file("spirodeploy_itest_state.sls", sls):
        first = call(spiro_bed, "state.apply", "spirodeploy_itest_state")
        assert first.returncode == 0, first
        (result,) = state_results(first.data)
        assert result["result"] is True, result
        changes = result["changes"]
        assert changes["files"] == {"added": ["hello/files/hello.txt.j2", "hello/init.sls",
                                              "top.sls"]}
        assert changes["minions"]["queued"] == [spiro_bed.minion_id]
        assert "queued behind this state run" in result["comment"]
        deployed = spiro_bed.deploy_dir("hello", "s-state")
        assert (deployed / ".spirodeploy.json").is_file()
        # The queued highstate runs once the state run is over.
        assert wait_for(output.is_file, 60), "the queued highstate never ran"
        assert wait_for(lambda: not call(spiro_bed, "saltutil.is_running", "state.*").data, 60)
        sync_minion(spiro_bed)  # that highstate unsynced the modules

        inode = deployed.stat().st_ino
        start = time.time()
        second = call(spiro_bed, "state.apply", "spirodeploy_itest_state")
        assert second.returncode == 0, second
        (result,) = state_results(second.data)
        assert result["result"] is True and result["changes"] == {}, result
        assert "already serves this content" in result["comment"]
        assert "the server serves .spirodeploy.json" in result["comment"]
        assert deployed.stat().st_ino == inode, "the second run uploaded again"
        assert not event_listener.get_events(
            [(spiro_bed.master.id, "spirodeploy/hello/s-state/*")], after_time=start)

        (project / "_salt" / "hello" / "extra.sls").write_text("extra:\n  test.nop\n")
        dry = call(spiro_bed, "state.apply", "spirodeploy_itest_state", "test=True")
        (result,) = state_results(dry.data)
        assert result["result"] is None, result
        assert result["changes"] == {"added": ["hello/extra.sls"]}
        assert result["comment"].startswith("Would deploy hello/s-state")
        assert deployed.stat().st_ino == inode, "test=True uploaded"
        assert_token_not_on_the_bus(spiro_bed, event_listener, begin)


def test_orchestration_reports_minions_and_failed_states(spiro_bed, salt_ext, project,
                                                          failing_project):
    """The README's orchestration: the state runs on the master."""
    orch = f"""
deploy-hello-ok:
  spirodeploy.deployed:
    - name: hello/s-orch
    - root: {json.dumps(str(project))}

deploy-hello-broken:
  spirodeploy.deployed:
    - name: hello/s-orchfail
    - root: {json.dumps(str(failing_project))}
"""
    try:
        with spiro_bed.master.state_tree.base.temp_file("spirodeploy_itest_orch.sls", orch):
            ret = spiro_bed.salt_run_cli.run("state.orchestrate", "spirodeploy_itest_orch")
        assert ret.returncode != 0, ret
        results = {r["__id__"]: r for r in state_results(ret.data)}
        ok, broken = results["deploy-hello-ok"], results["deploy-hello-broken"]
        assert ok["result"] is True, ok
        assert ok["changes"]["minions"]["succeeded"] == [spiro_bed.minion_id]
        assert broken["result"] is False, broken
        assert broken["comment"] == (
            f"Deployed hello/s-orchfail, but the highstate failed: {spiro_bed.minion_id} failed "
            "1 state: spirodeploy-example-failure (test.fail_without_changes): This state fails "
            "on purpose (make_project(fail=True)).")
        assert broken["changes"]["minions"]["failed"] == [spiro_bed.minion_id]
        assert spiro_bed.root_token not in ret.stdout
    finally:
        spiro_bed.remove_deployment("hello", "s-orchfail")


def test_token_is_in_no_job_cache_file(spiro_bed, salt_ext):
    """Runs last in this file: every job above is in the caches now."""
    token = spiro_bed.root_token.encode()
    jobs = spiro_bed.cachedir / "jobs"
    assert jobs.is_dir()
    searched = ours = 0
    for base in (jobs, Path(spiro_bed.minion.config["cachedir"])):
        for path in base.rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if b"spiro.issue_root_token" in data:
                continue  # the bed's own job that issued the token returns it, of course
            searched += 1
            ours += b"spirodeploy." in data
            assert token not in data, f"token found in {path}"
    assert searched > 20 and ours > 5
    # And the job cache really holds our jobs.
    found = spiro_bed.salt_run_cli.run("jobs.list_jobs", "search_function=spirodeploy.*")
    assert found.returncode == 0 and found.data, found
