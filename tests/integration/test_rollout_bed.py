"""Staged rollouts on the real bed: SpiroFS 0.3 on a salt-master with three minions.

``spirodeploy.deploy ... batch=1 canary=1`` and ``spirodeploy.rollout``
run as real ``salt-run`` jobs; the minions are highstated by Salt's batch
machinery.  The deployed project's state appends a line to
``<output dir>/rollout/<saltenv>/<minion id>.log`` on every highstate (so
each file counts that minion's highstates) and fails only on the minion
id it is built with.  The minions sort as spiro-fleet-1, spiro-fleet-2,
spiro-minion, so with ``batch=1 canary=1`` the batches are those three in
that order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.saltbed.fleet import FLEET_IDS, spiro_fleet_fixture  # noqa: F401
from tests.support import state_results

pytestmark = pytest.mark.timeout(600)

FIRST, SECOND = FLEET_IDS
#: The bed's own minion, last in id order.
LAST = "spiro-minion"


def make_project(tmp_path: Path, fail_on: str | None = None) -> Path:
    """A project whose highstate logs itself per minion, and fails on ``fail_on``."""
    salt_dir = tmp_path / "proj" / "_salt"
    salt_dir.mkdir(parents=True)
    (salt_dir / "top.sls").write_text("{{ saltenv|tojson }}:\n  '*':\n    - rollout\n")
    failing = "" if fail_on is None else f"""
{{% if grains['id'] == {json.dumps(fail_on)} %}}
rollout-failure:
  test.fail_without_changes:
    - comment: fails on purpose on {fail_on}
{{% endif %}}
"""
    (salt_dir / "rollout.sls").write_text("""\
{%- set out = salt['config.get']('spirodeploy_demo_dir') %}
{%- set log = [out, 'rollout', saltenv|replace('/', '-'), grains['id'] ~ '.log']|join('/') %}
rollout-log:
  file.directory:
    - name: {{ ([out, 'rollout', saltenv|replace('/', '-')]|join('/'))|tojson }}
    - makedirs: True
  cmd.run:
    - name: {{ ('echo highstated >> ' ~ log)|tojson }}
""" + failing)
    return salt_dir.parent


def highstates(fleet, saltenv: str) -> dict[str, int]:
    """How many times each minion ran this saltenv's highstate."""
    directory = fleet.bed.output_dir / "rollout" / saltenv.replace("/", "-")
    counts = {}
    for minion in fleet.minion_ids:
        path = directory / f"{minion}.log"
        counts[minion] = len(path.read_text().splitlines()) if path.exists() else 0
    return counts


def json_documents(text: str) -> list:
    """Every JSON document salt-run printed (progress events, then the return)."""
    decoder, docs, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        try:
            doc, pos = decoder.raw_decode(text, pos)
            docs.append(doc)
        except ValueError:
            nl = text.find("\n", pos)
            pos = len(text) if nl < 0 else nl + 1
    return docs


def salt_run(fleet, *args):
    """``salt-run <args>`` with the bed's HTTPS server; returns (return, progress lines, proc)."""
    spiro_bed = fleet.bed
    ret = spiro_bed.salt_run_cli.run(
        *args, f"server={spiro_bed.https_url}", f"ssl_cert={spiro_bed.ca_cert}",
        env={"SPIRO_TOKEN": spiro_bed.root_token}, _timeout=300)
    docs = json_documents(ret.stdout)
    progress = [d["event"]["message"] for d in docs
                if isinstance(d, dict) and d.get("suffix") == "progress"]
    assert docs and isinstance(docs[-1], dict) and "retcode" in docs[-1], ret
    assert spiro_bed.root_token not in ret.stdout
    return docs[-1], progress, ret


def test_a_failing_canary_means_no_other_minion_is_highstated(spiro_fleet, tmp_path):
    project = make_project(tmp_path, fail_on=FIRST)
    try:
        ret, progress, proc = salt_run(spiro_fleet, "spirodeploy.deploy", "hello", "r-canary",
                                       f"root={project}", "batch=1", "canary=1")
        assert proc.returncode == 1, proc
        # Uploaded with the highstate off: the server highstated nobody.
        assert [e["event"] for e in ret["events"]] == ["deploy-bundle"]
        assert (spiro_fleet.bed.deploy_dir("hello", "r-canary") / "rollout.sls").is_file()
        rollout = ret["rollout"]
        assert rollout["minions"] == {"done": [], "failed": [FIRST], "no_response": [],
                                      "never_started": [SECOND, LAST]}
        assert rollout["stopped_at_batch"] == 1
        assert [s["id"] for s in rollout["results"][FIRST]["failed"]] == ["rollout-failure"]
        assert highstates(spiro_fleet, "hello/r-canary") == {FIRST: 1, SECOND: 0, LAST: 0}
        assert f"Canary batch (1 of 3): {FIRST}" in progress
        assert f"Batch 2 of 3: {SECOND}" not in progress
        assert progress[-1] == (
            "Rollout of hello/r-canary stopped after canary batch (1 of 3) failed: 0 of 3 "
            f"minions done; failed: {FIRST}; never started: {SECOND}, {LAST}")
        assert ret["retcode"] == 1 and ret["result"] is False
    finally:
        spiro_fleet.bed.remove_deployment("hello", "r-canary")


def test_a_failing_second_batch_means_the_third_never_starts(spiro_fleet, tmp_path):
    """The README's CI recipe: ``spiro-deploy --no-highstate``, then ``salt-run
    spirodeploy.rollout``."""
    spiro_bed = spiro_fleet.bed
    project = make_project(tmp_path, fail_on=SECOND)
    env = {**os.environ, "SPIRO_TOKEN": spiro_bed.root_token}
    upload = subprocess.run(
        [sys.executable, "-m", "spirodeploy", "--no-highstate", "--server", spiro_bed.https_url,
         "--ssl-cert", str(spiro_bed.ca_cert), "-C", str(project), "hello", "r-batch2"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert upload.returncode == 0, upload
    assert highstates(spiro_fleet, "hello/r-batch2") == {FIRST: 0, SECOND: 0, LAST: 0}
    try:
        ret, progress, proc = salt_run(spiro_fleet, "spirodeploy.rollout", "hello", "r-batch2",
                                       "batch=1", "canary=1")
        assert proc.returncode == 1, proc
        assert ret["minions"] == {"done": [FIRST], "failed": [SECOND], "no_response": [],
                                  "never_started": [LAST]}
        assert ret["stopped_at_batch"] == 2
        assert [b["started"] for b in ret["batches"]] == [True, True, False]
        assert highstates(spiro_fleet, "hello/r-batch2") == {FIRST: 1, SECOND: 1, LAST: 0}
        assert f"Batch 2 of 3: {SECOND}" in progress
        assert f"Batch 3 of 3: {LAST}" not in progress
        # The CLI's minion line (it may go on with the highstate's duration).
        assert any(line.startswith(f"== {SECOND}: 1 ok, 1 changed, 1 failed")
                   for line in progress), progress
    finally:
        spiro_bed.remove_deployment("hello", "r-batch2")


def test_when_everything_passes_every_minion_is_highstated_once(spiro_fleet, tmp_path,
                                                                event_listener):
    spiro_bed = spiro_fleet.bed
    project = make_project(tmp_path)
    start = time.time()
    ret, progress, proc = salt_run(spiro_fleet, "spirodeploy.deploy", "hello", "r-all",
                                   f"root={project}", "batch=1", f"canary={LAST}")
    assert proc.returncode == 0, proc
    rollout = ret["rollout"]
    assert rollout["minions"] == {"done": [FIRST, SECOND, LAST], "failed": [],
                                  "no_response": [], "never_started": []}
    assert [b["minions"] for b in rollout["batches"]] == [[LAST], [FIRST], [SECOND]]
    assert len(rollout["jids"]) == 3
    assert highstates(spiro_fleet, "hello/r-all") == {FIRST: 1, SECOND: 1, LAST: 1}
    assert progress[-1] == "Rolled out hello/r-all: 3 of 3 minions done"
    assert f"Canary batch (1 of 3): {LAST}" in progress
    assert ret["retcode"] == 0 and ret["result"] is True

    # Each batch and each minion on the bus, under the deploy's tags.
    tags = [f"spirodeploy/hello/r-all/{name}" for name in
            ("deploy-bundle", "rollout-start", "rollout-batch", "rollout-minion",
             "rollout-finish")]
    matched = event_listener.wait_for_events([(spiro_bed.master.id, t) for t in tags],
                                             timeout=30, after_time=start)
    assert matched.found_all_events, matched.missed
    minion_events = event_listener.get_events(
        [(spiro_bed.master.id, "spirodeploy/hello/r-all/rollout-minion")], after_time=start)
    assert sorted(e.data["minion"] for e in minion_events) == [FIRST, SECOND, LAST]
    assert {e.data["outcome"] for e in minion_events} == {"done"}


def test_a_compressed_staged_deploy_really_highstates(spiro_fleet, tmp_path):
    """``compress=gzip`` with ``batch``: the server gets the gzip and every minion is
    highstated once, in batches."""
    project = make_project(tmp_path)
    try:
        ret, progress, proc = salt_run(spiro_fleet, "spirodeploy.deploy", "hello", "r-gzip",
                                       f"root={project}", "batch=2", "compress=gzip")
        assert proc.returncode == 0, proc
        assert ret["bundle"]["compression"] == "gzip"
        assert ret["bundle"]["size"] < ret["bundle"]["tar_size"]
        assert [e["event"] for e in ret["events"]] == ["deploy-bundle"]
        assert (spiro_fleet.bed.deploy_dir("hello", "r-gzip") / "rollout.sls").is_file()
        assert [b["minions"] for b in ret["rollout"]["batches"]] == [[FIRST, SECOND], [LAST]]
        assert ret["rollout"]["minions"]["done"] == [FIRST, SECOND, LAST]
        assert highstates(spiro_fleet, "hello/r-gzip") == {FIRST: 1, SECOND: 1, LAST: 1}
        assert progress[-1] == "Rolled out hello/r-gzip: 3 of 3 minions done"
    finally:
        spiro_fleet.bed.remove_deployment("hello", "r-gzip")


@pytest.mark.parametrize("option", ["batch=0", "batch=-1", "batch=200%", "batch=abc",
                                    "canary=nobody-here"])
def test_bad_options_upload_nothing(spiro_fleet, tmp_path, option):
    project = make_project(tmp_path)
    ret, _, proc = salt_run(spiro_fleet, "spirodeploy.deploy", "hello", "r-bad",
                            f"root={project}", option)
    assert proc.returncode == 2, proc
    assert ret["result"] is False and ret["error"] and ret["events"] == []
    assert not spiro_fleet.bed.deploy_dir("hello", "r-bad").exists()


def test_state_in_an_orchestration_rolls_out_in_batches(spiro_fleet, tmp_path):
    """``spirodeploy.deployed`` with ``batch``/``canary`` on the master: upload, then
    the rollout runner through ``saltutil.runner``."""
    spiro_bed = spiro_fleet.bed
    project = make_project(tmp_path, fail_on=SECOND)
    token_file = tmp_path / "token"
    token_file.write_text(spiro_bed.root_token)
    orch = f"""
rollout-hello:
  spirodeploy.deployed:
    - name: hello/r-orch
    - root: {json.dumps(str(project))}
    - server: {json.dumps(spiro_bed.https_url)}
    - ssl_cert: {json.dumps(str(spiro_bed.ca_cert))}
    - token_file: {json.dumps(str(token_file))}
    - batch: 1
    - canary: 1
"""
    try:
        with spiro_bed.master.state_tree.base.temp_file("spirodeploy_rollout_orch.sls", orch):
            ret = spiro_bed.salt_run_cli.run("state.orchestrate", "spirodeploy_rollout_orch",
                                             _timeout=300)
        assert ret.returncode != 0, ret
        results = state_results(ret.data)
        assert len(results) == 1, ret
        (result,) = results
        assert result["result"] is False, result
        assert result["changes"]["rollout"]["done"] == [FIRST], result
        assert result["changes"]["rollout"]["failed"] == [SECOND], result
        assert result["changes"]["rollout"]["never_started"] == [LAST], result
        assert "stopped after batch 2 of 3 failed" in result["comment"], result
        assert highstates(spiro_fleet, "hello/r-orch") == {FIRST: 1, SECOND: 1, LAST: 0}
        assert spiro_bed.root_token not in ret.stdout
    finally:
        spiro_bed.remove_deployment("hello", "r-orch")
