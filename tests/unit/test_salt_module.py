"""The ``spirodeploy`` execution module (_modules/spirodeploy_mod.py), with the loader
dunders supplied by salt-factories' ``configure_loader_modules`` fixture and the
fake SpiroFS server in tests/fakeserver.py."""

from __future__ import annotations

import io
import json
import sys
import tarfile

import pytest

from spirodeploy import state as spirostate
from tests.fakeserver import highstate_events, sse
from tests.saltloader_support import Fileserver, load_salt_file
from tests.support import REPO, make_token

VIRTUAL_REFUSAL = (False, "install spiro-deploy 1.0 or newer: pip install \"spiro-deploy>=1.0\" "
                           "(onedir Salt packages: salt-pip install \"spiro-deploy>=1.0\")")


spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module")

TOKEN = make_token()


@pytest.fixture
def config():
    """What ``config.get`` answers (minion options, grains, pillar)."""
    return {}


@pytest.fixture
def fileserver():
    """An empty fileserver that the tests fill in (not tests/unit/conftest.py's, which
    serves what the fake server received)."""
    return Fileserver()


@pytest.fixture
def configure_loader_modules(config, bus, fileserver, tmp_path):
    return {
        spiromod: {
            "__opts__": {"id": "build-1", "__role": "minion", "file_client": "remote",
                         "cachedir": str(tmp_path / "cache"), "test": False},
            "__salt__": {
                "config.get": lambda key, default="": config.get(key, default),
                "event.send": bus.send,
                "cp.list_master": fileserver.list_master,
                "cp.get_file_str": fileserver.get_file_str,
            },
            "__context__": {},
        }
    }


@pytest.fixture
def pillar_settings(config, fake_server):
    config.update({"spirodeploy:server": fake_server.url, "spirodeploy:token": TOKEN,
                   "spirodeploy:insecure": True})


def context():
    return spiromod.__context__


def test_virtual_says_how_to_install_when_the_library_is_missing(monkeypatch):
    assert spiromod.__virtual__() == "spirodeploy"
    monkeypatch.setattr(spiromod, "LIBRARY_ERROR", "No module named 'spirodeploy'")
    assert spiromod.__virtual__() == VIRTUAL_REFUSAL


def test_virtual_when_spirodeploy_cannot_be_imported(tmp_path):
    """Really without the library: a Python that only sees the Salt file."""
    import subprocess

    path = str(REPO / "_modules" / "spirodeploy_mod.py")
    code = (
        "import importlib.util, sys\n"
        "sys.modules['spirodeploy'] = None\n"  # makes 'import spirodeploy' fail
        f"spec = importlib.util.spec_from_file_location('m', {path!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(m.__virtual__())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(VIRTUAL_REFUSAL)


def test_the_library_is_imported_even_with_this_directory_on_sys_path(monkeypatch):
    """Salt appends the face's own directory to sys.path while loading it: no file
    there may shadow the ``spirodeploy`` package (hence ``spirodeploy_mod.py``)."""
    monkeypatch.setattr(sys, "path", [str(REPO / "_modules")] + sys.path)
    saved = {name: mod for name, mod in sys.modules.items()
             if name == "spirodeploy" or name.startswith("spirodeploy.")}
    for name in saved:
        monkeypatch.delitem(sys.modules, name)
    try:
        face = load_salt_file("modules", "salt_ext_spirodeploy_on_sys_path")
        assert face.LIBRARY_ERROR is None
        assert face.errors.__name__ == "spirodeploy.errors"
        assert hasattr(sys.modules["spirodeploy"], "__path__")
        assert face.__virtual__() == "spirodeploy"
    finally:
        for name in [n for n in sys.modules if n == "spirodeploy" or n.startswith("spirodeploy.")]:
            del sys.modules[name]
        sys.modules.pop("salt_ext_spirodeploy_on_sys_path", None)
        sys.modules.update(saved)


def test_deploy_returns_the_report_and_fires_each_event(project, fake_server, bus,
                                                       pillar_settings):
    ret = spiromod.deploy("proj", "prod", root=str(project))
    assert ret["result"] is True and ret["exit_code"] == 0
    assert [e["event"] for e in ret["events"]] == ["deploy-bundle", "highstate-calc",
                                                   "highstate-start", "highstate-update",
                                                   "highstate-finish"]
    assert ret["minions"] == {"expected": ["minion-1"], "reported": ["minion-1"], "failed": [],
                              "unreported": []}
    assert ret["results"]["minion-1"]["counts"] == {"ok": 0, "changed": 1, "failed": 0}
    request = fake_server.received[0]
    assert request.fields == {"project": "proj", "deployment": "prod", "highstate": "1"}
    with tarfile.open(fileobj=io.BytesIO(request.bundle)) as tar:
        assert {"top.sls", "hello.sls", ".spirodeploy.json"} <= set(tar.getnames())
    bundle = ret["bundle"]
    assert bundle["size"] == len(request.bundle) and len(bundle["sha256"]) == 64
    assert bundle["digest"] and bundle["file_count"] == 2
    assert "retcode" not in context()
    assert bus.tags == [f"spirodeploy/proj/prod/{e['event']}" for e in ret["events"]]
    update = dict(bus.events)["spirodeploy/proj/prod/highstate-update"]
    assert update["minion"] == "minion-1" and update["result"]["succeeded"] is True
    assert "ret" not in update["result"]
    assert TOKEN not in json.dumps(ret) and TOKEN not in json.dumps(bus.events)


def test_deploy_without_highstate(project, fake_server, pillar_settings):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})])
    ret = spiromod.deploy("proj", "prod", root=str(project), highstate=False)
    assert ret["result"] is True and ret["highstate"] is False
    assert "highstate" not in fake_server.received[0].fields


def test_a_failed_highstate_sets_the_retcode(project, fake_server, pillar_settings):
    failed = {"test_|-broken_|-broken_|-fail_without_changes": {
        "result": False, "changes": {}, "comment": "Failure!", "__run_num__": 0,
        "__id__": "broken", "name": "broken"}}
    fake_server.then(chunks=highstate_events(ret=failed, retcode=2))
    ret = spiromod.deploy("proj", "prod", root=str(project))
    assert ret["result"] is False and ret["exit_code"] == 1
    assert ret["minions"]["failed"] == ["minion-1"]
    assert ret["results"]["minion-1"]["failed"][0]["comment"] == "Failure!"
    assert context()["retcode"] == 1


def test_a_server_exception_sets_the_retcode(project, fake_server, pillar_settings):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "x"}),
                             sse("exception", {"msg": "Traceback\nOSError: disk full"})])
    ret = spiromod.deploy("proj", "prod", root=str(project))
    assert ret["result"] is False and ret["exception"].endswith("disk full")
    assert context()["retcode"] == 1


def test_connection_refused_is_a_report_too(project, pillar_settings, config, fake_server,
                                            monkeypatch):
    monkeypatch.setattr("spirodeploy.client.time.sleep", lambda seconds: None)  # no retry waits
    config["spirodeploy:server"] = "http://127.0.0.1:1/"
    ret = spiromod.deploy("proj", "prod", root=str(project), connect_timeout=2)
    assert ret["result"] is False and ret["exit_code"] == 4
    assert "127.0.0.1:1" in ret["error"] and ret["events"] == []
    assert ret["server_has_bundle"] is False
    assert context()["retcode"] == 4
    assert fake_server.received == []


def test_bad_names_fail_before_bundling(tmp_path, pillar_settings, fake_server):
    ret = spiromod.deploy("proj", "../other", root=str(tmp_path / "does-not-exist"))
    assert ret["result"] is False and ret["exit_code"] == 2
    assert "deployment name" in ret["error"]
    assert context()["retcode"] == 2 and fake_server.received == []


def test_missing_token_says_so(project, config, fake_server, monkeypatch):
    for name in ("SPIRO_TOKEN", "SPIRO_TOKEN_FILE", "SPIRO_URL"):
        monkeypatch.delenv(name, raising=False)
    config.update({"spirodeploy:server": fake_server.url, "spirodeploy:insecure": True})
    ret = spiromod.deploy("proj", "prod", root=str(project))
    assert ret["result"] is False and ret["exit_code"] == 2 and "no token" in ret["error"]
    assert fake_server.received == []


def test_explicit_arguments_beat_config_which_beats_the_environment(project, config, fake_server,
                                                                  monkeypatch):
    env_token, conf_token, arg_token = (make_token({"n": n}) for n in range(3))
    monkeypatch.setenv("SPIRO_URL", "http://127.0.0.1:1/")
    monkeypatch.setenv("SPIRO_TOKEN", env_token)
    config.update({"spirodeploy:token": conf_token, "spirodeploy:insecure": "yes"})
    spiromod.deploy("proj", "prod", root=str(project), server=fake_server.url)
    assert fake_server.received[-1].headers["Authorization"] == f"Bearer {conf_token}"
    ret = spiromod.deploy("proj", "prod", root=str(project), server=fake_server.url,
                          token=arg_token)
    assert fake_server.received[-1].headers["Authorization"] == f"Bearer {arg_token}"
    assert arg_token not in json.dumps(ret)


def test_token_file_is_never_bundled(project, config, fake_server):
    token_file = project / "_salt" / "token.txt"
    token_file.write_text(TOKEN)
    config.update({"spirodeploy:server": fake_server.url, "spirodeploy:insecure": True,
                   "spirodeploy:token_file": str(token_file)})
    ret = spiromod.deploy("proj", "prod", root=str(project))
    assert ret["result"] is True
    with tarfile.open(fileobj=io.BytesIO(fake_server.received[0].bundle)) as tar:
        assert "token.txt" not in tar.getnames()
    assert TOKEN.encode() not in fake_server.received[0].bundle


def test_artifacts_as_a_comma_separated_string(project, fake_server, pillar_settings):
    (project / "dist").mkdir()
    (project / "dist" / "a.txt").write_text("a")
    (project / "b.txt").write_text("b")
    ret = spiromod.deploy("proj", "prod", root=str(project), artifacts="dist,b.txt")
    assert ret["result"] is True
    with tarfile.open(fileobj=io.BytesIO(fake_server.received[0].bundle)) as tar:
        assert {"_artifacts/dist/a.txt", "_artifacts/b.txt"} <= set(tar.getnames())


def test_events_can_be_kept_off_the_bus(project, fake_server, bus, pillar_settings):
    spiromod.deploy("proj", "prod", root=str(project), fire_events=False)
    assert bus.events == []


def test_masterless_minions_fire_nothing(project, fake_server, bus, pillar_settings):
    spiromod.__opts__["file_client"] = "local"
    ret = spiromod.deploy("proj", "prod", root=str(project))
    assert ret["result"] is True and bus.events == []


def test_upload_an_existing_bundle(project, fake_server, bus, pillar_settings, tmp_path):
    output = tmp_path / "bundle.tar"
    built = spiromod.bundle(str(project), str(output))
    assert built["result"] is True and output.is_file()
    ret = spiromod.upload("proj", "prod", str(output))
    assert ret["result"] is True
    assert fake_server.received[0].bundle == output.read_bytes()
    assert ret["bundle"]["sha256"] == built["sha256"]
    assert len(bus.events) == 5


def test_upload_refuses_an_unsafe_tar(fake_server, pillar_settings, tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../escape.sls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    ret = spiromod.upload("proj", "prod", str(bad))
    assert ret["result"] is False and ret["exit_code"] == 2
    assert context()["retcode"] == 2 and fake_server.received == []


def test_bundle_builds_only(project, tmp_path):
    output = tmp_path / "out.tar"
    ret = spiromod.bundle(str(project), str(output), files=True)
    assert ret["result"] is True and ret["output"] == str(output)
    assert ret["file_count"] == 2 and ret["size"] == output.stat().st_size
    assert [f["path"] for f in ret["files"]] == ["hello.sls", "top.sls"]
    assert ret["digest"] == spirostate.parse_manifest(
        json.dumps({"digest": ret["digest"], "files": []}))["digest"]


def test_bundle_of_an_empty_project_fails(tmp_path):
    (tmp_path / "empty" / "_salt").mkdir(parents=True)
    ret = spiromod.bundle(str(tmp_path / "empty"), str(tmp_path / "out.tar"))
    assert ret["result"] is False and ret["exit_code"] == 2 and "allow_empty=True" in ret["error"]
    assert "--allow-empty" not in ret["error"]
    assert context()["retcode"] == 2


def test_check_token(fake_server, pillar_settings):
    ret = spiromod.check_token()
    assert ret["result"] is True and ret["server"] == fake_server.url
    assert ret["projects"] is None and ret["expires"] is None
    assert fake_server.received[0].method == "GET"


def test_check_token_rejected(fake_server, pillar_settings):
    fake_server.then(status=401, content_type="text/html", chunks=[b"no"])
    ret = spiromod.check_token()
    assert ret["result"] is False and ret["exit_code"] == 5 and "rejected" in ret["error"]
    assert context()["retcode"] == 5
    assert TOKEN not in json.dumps(ret)


def test_check_token_for_a_project_it_may_not_deploy(fake_server, config):
    token = make_token({"not_before": 0, "project_allow": ["other"]})
    config.update({"spirodeploy:server": fake_server.url, "spirodeploy:insecure": True})
    ret = spiromod.check_token(token=token, project="proj")
    assert ret["result"] is False and "may not deploy project 'proj'" in ret["error"]
    assert token not in json.dumps(ret)


def test_status_reads_the_served_manifest(fileserver):
    manifest = {"format": 1, "tool": "spiro-deploy 1.0.0", "gitcommit": "abc\nheads/main\n",
                "digest": "d" * 64, "files": [{"path": "top.sls", "size": 1, "sha256": "a",
                                               "mode": 420}]}
    fileserver.envs["proj/prod"] = {".spirodeploy.json": json.dumps(manifest), "top.sls": "x"}
    ret = spiromod.status("proj", "prod")
    assert ret["visible"] is True and ret["source"] == "manifest"
    assert ret["digest"] == "d" * 64 and ret["file_count"] == 1
    assert ret["gitcommit"] == "abc\nheads/main\n" and "manifest" not in ret
    assert spiromod.status("proj", "prod", manifest=True)["manifest"] == manifest


def test_status_without_a_manifest_falls_back_to_gitcommit(fileserver):
    fileserver.envs["proj/prod"] = {".gitcommit": "abc123\n", "top.sls": "x"}
    ret = spiromod.status("proj", "prod")
    assert (ret["visible"], ret["source"], ret["gitcommit"]) == (True, "gitcommit", "abc123")
    assert "not deployed by spiro-deploy" in ret["comment"]


def test_status_when_the_saltenv_is_not_visible(tmp_path):
    ret = spiromod.status("proj", "prod")
    assert ret["visible"] is False and ret["source"] is None
    assert "not visible from this minion" in ret["comment"]
    assert ret["local_record"] is None and ret["result"] is True


def test_status_shows_the_local_record(tmp_path):
    path = spirostate.record_path(spiromod.__opts__["cachedir"], "proj", "prod")
    spirostate.write_record(path, project="proj", deployment="prod",
                            manifest={"digest": "d", "files": []}, sha256="s", succeeded=True,
                            now=1)
    assert spiromod.status("proj", "prod")["local_record"] == {
        "digest": "d", "sha256": "s", "succeeded": True, "time": 1}


def test_status_refuses_bad_names():
    ret = spiromod.status("proj", "..")
    assert ret["result"] is False and context()["retcode"] == 2


# --- issue 11: names, yes/no arguments, the token file in bundles --------------

@pytest.mark.parametrize("project_name, deployment", [(".", "otherproj"), ("proj", "."),
                                                      ("proj", "..."), ("proj", ".staging"),
                                                      (".proj", "prod"), ("proj", "prod.")])
def test_names_mapped_onto_another_directory_are_refused(project, pillar_settings, fake_server,
                                                         bus, project_name, deployment):
    for ret in (spiromod.deploy(project_name, deployment, root=str(project)),
                spiromod.upload(project_name, deployment, str(project / "none.tar"))):
        assert ret["result"] is False and ret["exit_code"] == 2
        assert "name" in ret["error"]
    assert fake_server.received == [] and bus.events == []
    assert spiromod.status(project_name, deployment)["result"] is False


@pytest.mark.parametrize("value", ["false", "False", "no", "off", "0", 0, False])
def test_allow_empty_false_as_text_does_not_empty_the_saltenv(tmp_path, pillar_settings,
                                                               fake_server, value):
    """bool("false") is True: an empty project wiped the saltenv (issue 11, item 6)."""
    (tmp_path / "empty" / "_salt").mkdir(parents=True)
    ret = spiromod.deploy("proj", "prod", root=str(tmp_path / "empty"), allow_empty=value)
    assert ret["result"] is False and ret["exit_code"] == 2 and "allow_empty=True" in ret["error"]
    assert "--allow-empty" not in ret["error"]
    assert fake_server.received == []


@pytest.mark.parametrize("value", ["no", "false", "off", "0", "NO"])
def test_highstate_no_as_text_does_not_highstate(project, pillar_settings, fake_server, value):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})])
    ret = spiromod.deploy("proj", "prod", root=str(project), highstate=value)
    assert ret["result"] is True and ret["highstate"] is False
    assert "highstate" not in fake_server.received[0].fields


def test_upload_highstate_no_as_text_does_not_highstate(project, pillar_settings, fake_server,
                                                        tmp_path):
    output = tmp_path / "b.tar"
    assert spiromod.bundle(str(project), str(output))["result"] is True
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})])
    ret = spiromod.upload("proj", "prod", str(output), highstate="no", fire_events="off")
    assert ret["result"] is True and "highstate" not in fake_server.received[0].fields


def test_fire_events_false_as_text_fires_nothing(project, fake_server, bus, pillar_settings):
    spiromod.deploy("proj", "prod", root=str(project), fire_events="false")
    assert fake_server.received and bus.events == []


@pytest.mark.parametrize("argument", ["highstate", "allow_empty", "fire_events"])
def test_a_yes_no_argument_that_cannot_be_read_is_a_clear_error(project, pillar_settings,
                                                                fake_server, argument):
    ret = spiromod.deploy("proj", "prod", root=str(project), **{argument: "maybe"})
    assert ret["result"] is False and ret["exit_code"] == 2
    assert ret["error"].startswith(f"{argument} must be true or false")
    assert context()["retcode"] == 2 and fake_server.received == []
    ret = spiromod.upload("proj", "prod", "x.tar", highstate="sometimes")
    assert ret["result"] is False and ret["error"].startswith("highstate must be true or false")


def test_a_configured_insecure_that_cannot_be_read_is_a_clear_error(project, config,
                                                                    fake_server):
    config.update({"spirodeploy:server": fake_server.url, "spirodeploy:token": TOKEN,
                   "spirodeploy:insecure": "perhaps"})
    ret = spiromod.deploy("proj", "prod", root=str(project))
    assert ret["result"] is False and "spirodeploy:insecure must be" in ret["error"]
    assert fake_server.received == []


def test_bundle_and_status_read_yes_no_text(project, tmp_path, fileserver):
    (tmp_path / "empty" / "_salt").mkdir(parents=True)
    ret = spiromod.bundle(str(tmp_path / "empty"), str(tmp_path / "e.tar"), allow_empty="no")
    assert ret["result"] is False and "allow_empty=True" in ret["error"]
    assert "--allow-empty" not in ret["error"]
    ret = spiromod.bundle(str(project), str(tmp_path / "o.tar"), files="false", gitcommit="no")
    assert ret["result"] is True and "files" not in ret and ret["gitcommit"] is None
    ret = spiromod.bundle(str(project), str(tmp_path / "o.tar"), files="maybe")
    assert ret["result"] is False and ret["error"].startswith("files must be true or false")
    fileserver.envs["proj/prod"] = {".spirodeploy.json": json.dumps(
        {"digest": "d" * 64, "files": []})}
    assert "manifest" not in spiromod.status("proj", "prod", manifest="false")
    assert spiromod.status("proj", "prod", manifest="yes")["manifest"]["digest"] == "d" * 64
    assert spiromod.status("proj", "prod", manifest="maybe")["result"] is False


def _fs_bundle_names(output):
    with tarfile.open(output) as tar:
        return tar.getnames()


def test_bundle_never_includes_the_configured_token_file(project, config, tmp_path,
                                                         monkeypatch):
    """spirodeploy.bundle resolved no settings, so include_source=fs took the token
    file and any minion could read it from the saltenv (issue 11, item 7)."""
    monkeypatch.delenv("SPIRO_TOKEN_FILE", raising=False)
    (project / "deploy.token").write_text(TOKEN)
    config.update({"spirodeploy:token_file": str(project / "deploy.token")})
    output = tmp_path / "out.tar"
    (project / "README").write_text("source")
    ret = spiromod.bundle(str(project), str(output), include_source="fs")
    assert ret["result"] is True
    names = _fs_bundle_names(output)
    assert "_source/README" in names  # the source is there; only the token file is not
    assert "_source/deploy.token" not in names and TOKEN.encode() not in output.read_bytes()


def test_bundle_never_includes_a_token_file_given_as_argument_or_environment(
        project, tmp_path, monkeypatch):
    (project / "arg.token").write_text(TOKEN)
    (project / "env.token").write_text(TOKEN + "x")
    monkeypatch.setenv("SPIRO_TOKEN_FILE", str(project / "env.token"))
    output = tmp_path / "out.tar"
    ret = spiromod.bundle(str(project), str(output), include_source="fs",
                          token_file=str(project / "arg.token"))
    assert ret["result"] is True
    names = _fs_bundle_names(output)
    assert "_source/arg.token" not in names and "_source/env.token" not in names
    assert TOKEN.encode() not in output.read_bytes()


def test_deploy_with_a_token_argument_still_leaves_out_the_configured_token_file(
        project, config, fake_server, monkeypatch):
    """A token argument hides spirodeploy:token_file, but that file still holds a token."""
    monkeypatch.delenv("SPIRO_TOKEN_FILE", raising=False)
    other = make_token({"n": "configured"})
    (project / "deploy.token").write_text(other)
    config.update({"spirodeploy:server": fake_server.url, "spirodeploy:insecure": True,
                   "spirodeploy:token_file": str(project / "deploy.token")})
    ret = spiromod.deploy("proj", "prod", root=str(project), token=TOKEN, include_source="fs")
    assert ret["result"] is True
    assert other.encode() not in fake_server.received[0].bundle


def test_include_source_no_as_text_adds_no_source(project, tmp_path):
    (project / "README").write_text("source")
    output = tmp_path / "out.tar"
    ret = spiromod.bundle(str(project), str(output), include_source="no")
    assert ret["result"] is True, ret
    assert not [n for n in _fs_bundle_names(output) if n.startswith("_source/")]
    ret = spiromod.bundle(str(project), str(output), include_source="yes")
    assert ret["result"] is True and "_source/README" in _fs_bundle_names(output)
