"""The Salt faces in Salt's terms, against a real master and minion (issue 13):
``watch`` on ``spirodeploy.deployed`` deploys again through Salt's own
requisite system, the state in an orchestration fires on the master's bus
(the library never imports Salt), and the runner reads ``config.get`` and
needs ``root``."""

from __future__ import annotations

import json
import time

import pytest

from tests.support import state_results

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def project(spiro_bed, tmp_path_factory):
    return spiro_bed.make_project(tmp_path_factory.mktemp("salt-terms"))


def test_watch_deploys_unchanged_content_again_in_an_orchestration(spiro_bed, salt_ext,
                                                                   project, event_listener):
    orch = f"""
pulled:
  test.succeed_with_changes: []

deploy-hello-watch:
  spirodeploy.deployed:
    - name: hello/s-watch
    - root: {json.dumps(str(project))}
    - watch:
      - test: pulled
"""
    try:
        with spiro_bed.master.state_tree.base.temp_file("spirodeploy_itest_watch.sls", orch):
            first = spiro_bed.salt_run_cli.run("state.orchestrate", "spirodeploy_itest_watch")
            start = time.time()
            second = spiro_bed.salt_run_cli.run("state.orchestrate", "spirodeploy_itest_watch")
        for ret in (first, second):
            assert ret.returncode == 0, ret
        deployed = [r for r in state_results(first.data)
                    if r["__id__"] == "deploy-hello-watch"][0]
        assert deployed["comment"].startswith("Deployed hello/s-watch ("), deployed
        again = [r for r in state_results(second.data) if r["__id__"] == "deploy-hello-watch"][0]
        # Same content, but the watched state changed: mod_watch uploaded it again.
        assert again["result"] is True, again
        assert again["comment"].startswith(
            "Deployed hello/s-watch (a watched state changed, so it is deployed again)"), again
        assert again["changes"]["old"]["digest"] == again["changes"]["new"]["digest"]
        # Fired by the state on the master's bus, with the sender the state built.
        matched = event_listener.wait_for_events(
            [(spiro_bed.master.id, "spirodeploy/hello/s-watch/highstate-finish")],
            timeout=30, after_time=start)
        assert matched.found_all_events, matched.missed
        assert spiro_bed.root_token not in first.stdout + second.stdout
    finally:
        spiro_bed.remove_deployment("hello", "s-watch")


def test_the_runner_needs_root_and_names_salt_settings(spiro_bed, salt_ext):
    ret = spiro_bed.salt_run_cli.run("spirodeploy.deploy", "hello", "s-noroot",
                                     f"server={spiro_bed.https_url}")
    assert ret.returncode == 2, ret
    error = json.dumps(ret.data)
    assert "no project directory given" in error and "spirodeploy:root" in error
    assert "--directory" not in error
