"""The history store, rollback, promotion and rollback on failure, against the fake server."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tarfile

import pytest

from spirodeploy.cli import main
from spirodeploy.errors import ExitCode
from spirodeploy.history import (
    HistoryError,
    HistoryStore,
    ci_job,
    clean_server,
    default_dir,
)
from tests.fakeserver import highstate_events

FAILED_RET = {"test_|-broken_|-broken_|-fail_without_changes": {
    "result": False, "changes": {}, "comment": "fails", "__run_num__": 0, "__id__": "broken",
    "name": "broken"}}


@pytest.fixture
def hdir(tmp_path):
    return tmp_path / "history"


@pytest.fixture
def cli(project, fake_server, token, monkeypatch, capsys, hdir):
    """main() in the project dir against the fake server, history in ``hdir``."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("SPIRO_URL", fake_server.url)
    monkeypatch.setenv("SPIRO_TOKEN", token)
    monkeypatch.setenv("SPIRO_HISTORY_DIR", str(hdir))
    for name in ("SPIRO_TOKEN_FILE", "NO_COLOR", "GITHUB_ACTIONS", "GITLAB_CI", "CI"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--insecure"] if "--history" not in args else list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def entries(hdir, project="proj", deployment="prod"):
    return HistoryStore(str(hdir)).entries(project, deployment)


def change(project, text):
    (project / "_salt" / "hello.sls").write_text(f"hello:\n  test.succeed_without_changes:\n"
                                                 f"    - name: {text}\n")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- recording -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [[], ["--no-stream"]])
def test_every_deploy_is_recorded_with_the_uploaded_bytes(cli, fake_server, hdir, mode,
                                                          monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
    code, _, err = cli("proj", "prod", *mode)
    assert code == 0, err
    [entry] = entries(hdir)
    uploaded = fake_server.received[0].bundle
    assert entry["sha256"] == sha(uploaded)
    assert (hdir / "bundles" / f"{entry['sha256']}.tar").read_bytes() == uploaded
    assert entry["id"] == 1 and entry["exit_code"] == 0 and entry["deployed"] is True
    assert entry["minions"] == {"ok": ["minion-1"], "failed": [], "unreported": [],
                                "counts": {"ok": 1, "failed": 0, "unreported": 0}}
    assert entry["digest"] and len(entry["digest"]) == 64
    assert entry["server"] == fake_server.url.rstrip("/") + "/" or entry["server"].startswith(
        "http://127.0.0.1")
    assert entry["ci"] == {"system": "GitHub Actions", "job_id": "42",
                           "job_url": "https://github.com/o/r/actions/runs/42"}
    assert entry["user"] and entry["host"]


def test_a_bundle_from_elsewhere_is_recorded_too(cli, fake_server, hdir, project, tmp_path):
    out = tmp_path / "b.tar"
    assert cli("proj", "staging", "--dry-run", "--output", str(out))[0] == 0
    code, _, err = cli("proj", "prod", "--bundle", str(out))
    assert code == 0, err
    [entry] = entries(hdir)
    assert entry["sha256"] == sha(out.read_bytes()) == sha(fake_server.received[0].bundle)
    assert entry["digest"]  # read from the stored bundle's manifest


def test_no_history_records_nothing(cli, hdir):
    assert cli("proj", "prod", "--no-history")[0] == 0
    assert not hdir.exists()


def test_a_failed_upload_is_not_recorded(cli, fake_server, hdir):
    fake_server.then(status=500, chunks=[b"boom"], content_type="text/plain")
    assert cli("proj", "prod")[0] == ExitCode.SERVER
    assert entries(hdir) == []
    assert not [p for p in (hdir / "bundles").iterdir()]  # no temp file left behind


def test_unwritable_store_warns_and_deploys_unless_rollback_on_failure(cli, fake_server,
                                                                     tmp_path, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    monkeypatch.setenv("SPIRO_HISTORY_DIR", str(blocker))
    code, _, err = cli("proj", "prod")
    assert code == 0
    assert f"history path {blocker} is not a directory" in err and "not recorded" in err
    assert len(fake_server.received) == 1

    code, _, err = cli("proj", "prod", "--rollback-on-failure")
    assert code == ExitCode.USAGE
    assert "is not a directory" in err and "Traceback" not in err
    assert len(fake_server.received) == 1  # nothing uploaded


def test_project_named_history_or_rollback_still_deploys(cli, fake_server, hdir):
    code, _, err = cli("history", "rollback")
    assert code == 0, err
    assert fake_server.received[0].fields["project"] == "history"
    assert fake_server.received[0].fields["deployment"] == "rollback"


# --- the store --------------------------------------------------------------------------

def _entry(project="p", deployment="d", data=b"x", code=0):
    return {"project": project, "deployment": deployment, "sha256": sha(data),
            "exit_code": code, "deployed": True, "digest": sha(b"d" + data)}


def _put(store, data, **kw):
    import tempfile

    store.ensure()
    fd, tmp = tempfile.mkstemp(dir=store.bundles_dir, prefix=".bundle.", suffix=".tmp")
    os.write(fd, data)
    os.close(fd)
    return store.append(_entry(data=data, **kw), tmp)


def _append_many(directory, tag, count):
    store = HistoryStore(directory, keep=1000)
    for i in range(count):
        _put(store, f"{tag}-{i}".encode())


def test_concurrent_writers_never_corrupt_the_log(hdir):
    procs = [multiprocessing.Process(target=_append_many, args=(str(hdir), n, 25))
             for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    warnings = []
    store = HistoryStore(str(hdir), on_warning=warnings.append)
    found = store.entries("p", "d")
    assert warnings == []
    assert sorted(e["id"] for e in found) == list(range(1, 101))  # unique numbers
    assert len({e["sha256"] for e in found}) == 100
    assert all(store.verified_bundle(e) for e in found)
    assert not [n for n in os.listdir(store.bundles_dir) if n.endswith(".tmp")]


def test_cut_and_corrupt_lines_are_skipped_with_a_warning(hdir):
    store = HistoryStore(str(hdir))
    _put(store, b"one")
    with open(store.log_path, "ab") as log:
        log.write(b"not json\n")
        log.write(b'{"id": 7, "project": "p"')  # cut: no end, no newline
    warnings = []
    store = HistoryStore(str(hdir), on_warning=warnings.append)
    assert [e["id"] for e in store.entries("p", "d")] == [1]
    assert len(warnings) == 2 and all("cut or corrupt" in w for w in warnings)
    # The next line is not glued onto the cut one.
    _put(store, b"two")
    assert [e["id"] for e in store.entries("p", "d")] == [1, 2]


def test_retention_keeps_the_last_n_bundles_per_saltenv(hdir):
    store = HistoryStore(str(hdir), keep=2)
    for data in (b"a", b"b", b"c"):
        _put(store, data)
    _put(store, b"a", deployment="other")   # another saltenv keeps its own
    _put(store, b"b")                        # b again: still one of the last two
    kept = {n[:-4] for n in os.listdir(store.bundles_dir)}
    assert kept == {sha(b"b"), sha(b"c"), sha(b"a")}
    _put(store, b"d", deployment="other")
    _put(store, b"e", deployment="other")
    kept = {n[:-4] for n in os.listdir(store.bundles_dir)}
    assert kept == {sha(b"b"), sha(b"c"), sha(b"d"), sha(b"e")}
    assert len(store.entries()) == 7  # the log keeps every entry


def test_size_cap_drops_the_oldest_but_never_a_saltenvs_newest(hdir):
    store = HistoryStore(str(hdir), keep=10, max_bytes=250)
    for data in (b"a" * 100, b"b" * 100, b"c" * 100):
        _put(store, data)
    _put(store, b"z" * 300, deployment="big")
    kept = {n[:-4] for n in os.listdir(store.bundles_dir)}
    assert kept == {sha(b"z" * 300), sha(b"c" * 100)}


def test_unreadable_references_and_bad_paths(hdir, tmp_path):
    store = HistoryStore(str(hdir))
    with pytest.raises(HistoryError, match="no deploys of p/d are recorded"):
        store.resolve("p", "d", "1")
    _put(store, b"one")
    _put(store, b"two")
    assert store.resolve("p", "d", "#2")["sha256"] == sha(b"two")
    assert store.resolve("p", "d", sha(b"one")[:8])["id"] == 1
    for ref, message in (("9", "no entry #9"), ("zz", "unknown reference"),
                         ("ffffff" if not sha(b"one").startswith("ffffff") else "eeeeee",
                          "starting with")):
        with pytest.raises(HistoryError, match=message):
            store.resolve("p", "d", ref)
    afile = tmp_path / "f"
    afile.write_text("")
    with pytest.raises(HistoryError, match="is not a directory"):
        HistoryStore(str(afile)).entries()


def test_a_corrupted_bundle_is_refused_and_named(hdir):
    store = HistoryStore(str(hdir))
    entry = _put(store, b"payload")
    path = store.bundle_path(entry["sha256"])
    with open(path, "r+b") as handle:
        handle.write(b"P")
    with pytest.raises(HistoryError, match=f"stored bundle {path} .* is corrupt"):
        store.verified_bundle(entry)


def test_defaults_ci_and_server_cleaning():
    assert default_dir({"SPIRO_HISTORY_DIR": "/x"}) == "/x"
    assert default_dir({"XDG_STATE_HOME": "/s"}) == "/s/spiro-deploy"
    assert default_dir({}).endswith("/.local/state/spiro-deploy")
    assert ci_job({"GITLAB_CI": "true", "CI_JOB_ID": "5", "CI_JOB_URL": "u"})["system"] == \
        "GitLab CI"
    assert ci_job({"JENKINS_URL": "j", "BUILD_NUMBER": "3", "BUILD_URL": "b"}) == {
        "system": "Jenkins", "job_id": "3", "job_url": "b"}
    assert ci_job({"BUILDKITE": "true", "BUILDKITE_JOB_ID": "j1",
                   "BUILDKITE_BUILD_URL": "https://bk/b"})["job_url"] == "https://bk/b#j1"
    assert ci_job({"CIRCLECI": "true", "CIRCLE_BUILD_NUM": "9"})["job_id"] == "9"
    assert ci_job({}) is None
    assert clean_server("https://user:pw@salt:4510/x?token=1") == "https://salt:4510/x"


# --- listing, rollback, promotion from the CLI ---------------------------------------------

def test_history_lists_newest_first_and_marks_the_served_entry(cli, project, fake_server, hdir):
    assert cli("proj", "prod")[0] == 0
    change(project, "two")
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    assert cli("proj", "prod")[0] == 1
    code, out, err = cli("proj", "prod", "--history")
    assert code == 0, err
    lines = out.splitlines()
    rows = [line for line in lines if line[3:7].strip().isdigit()]
    assert [row[3:7].strip() for row in rows] == ["2", "1"]
    assert rows[0].startswith(" * ") and "failed" in rows[0] and "ok" in rows[1]
    assert "cannot see what the server serves" in out
    code, out, _ = cli("proj", "prod", "--history", "--json")
    listing = json.loads(out)["history"]
    assert listing["served"] == 2 and [e["id"] for e in listing["entries"]] == [2, 1]

    code, _, err = cli("proj", "staging", "--history")
    assert code == ExitCode.USAGE and "no deploys of proj/staging are recorded" in err


def test_rollback_deploys_the_last_good_bundle_and_records_it(cli, project, fake_server, hdir):
    assert cli("proj", "prod")[0] == 0
    good = fake_server.received[0].bundle
    change(project, "two")
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    assert cli("proj", "prod")[0] == 1
    code, out, err = cli("proj", "prod", "--rollback")
    assert code == 0, err
    assert "Rolling back proj/prod to proj/prod#1" in out
    assert fake_server.received[-1].bundle == good
    last = entries(hdir)[-1]
    assert last["id"] == 3 and last["rollback_of"] == 2 and last["restored"] == 1
    assert last["sha256"] == sha(good)

    # Now the good bundle is served: rolling back to it again does nothing.
    code, _, err = cli("proj", "prod", "--rollback", "--to", "1")
    assert code == ExitCode.USAGE and "serves already" in err and "--force" in err
    assert len(fake_server.received) == 3
    assert cli("proj", "prod", "--rollback", "--to", "1", "--force")[0] == 0
    assert len(fake_server.received) == 4


def test_rollback_refusals_deploy_nothing(cli, project, fake_server, hdir):
    code, _, err = cli("proj", "prod", "--rollback")
    assert code == ExitCode.USAGE and "no deploys of proj/prod are recorded" in err
    assert cli("proj", "prod")[0] == 0
    code, _, err = cli("proj", "prod", "--rollback")
    assert code == ExitCode.USAGE and "no earlier successful deploy" in err
    code, _, err = cli("proj", "prod", "--rollback", "--to", "abcdefabcdef")
    assert code == ExitCode.USAGE and "starting with abcdefabcdef" in err
    change(project, "two")
    assert cli("proj", "prod")[0] == 0
    [first] = [e for e in entries(hdir) if e["id"] == 1]
    bundle = hdir / "bundles" / f"{first['sha256']}.tar"
    data = bytearray(bundle.read_bytes())
    data[600] ^= 1
    bundle.write_bytes(bytes(data))
    code, _, err = cli("proj", "prod", "--rollback")
    assert code == ExitCode.USAGE and f"stored bundle {bundle}" in err and "corrupt" in err
    assert len(fake_server.received) == 2  # nothing deployed by the refusals
    assert "Traceback" not in err


def test_rollback_on_failure_deploys_the_previous_good_bundle(cli, project, fake_server, hdir):
    assert cli("proj", "prod")[0] == 0
    good = fake_server.received[0].bundle
    change(project, "bad")
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    code, out, err = cli("proj", "prod", "--rollback-on-failure")
    assert code == ExitCode.DEPLOY_FAILED
    assert len(fake_server.received) == 3 and fake_server.received[2].bundle == good
    assert "rolling back to proj/prod#1" in out
    assert "failed; rolled back to proj/prod#1" in err and "the rollback succeeded" in err
    assert [(e["id"], e["exit_code"], e.get("rollback_of")) for e in entries(hdir)] == [
        (1, 0, None), (2, 1, None), (3, 0, 2)]
    assert entries(hdir)[-1]["automatic"] is True


def test_rollback_on_failure_json_reports_both(cli, project, fake_server):
    assert cli("proj", "prod")[0] == 0
    change(project, "bad")
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    code, out, _ = cli("proj", "prod", "--rollback-on-failure", "--json")
    assert code == 1
    objs = [json.loads(line) for line in out.splitlines()]
    reports = [o["report"] for o in objs if "report" in o]
    assert [r["exit_code"] for r in reports] == [1, 0]
    [rollback] = [o["rollback"] for o in objs if "rollback" in o]
    assert rollback["failed"] == 2 and rollback["to"] == 1 and rollback["result"] is True


def test_rollback_on_failure_with_nothing_to_roll_back_to(cli, project, fake_server):
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    code, _, err = cli("proj", "prod", "--rollback-on-failure")
    assert code == 1 and len(fake_server.received) == 1
    assert "nothing to roll back to" in err and "was not rolled back" in err


def test_promotion_deploys_the_staging_bundle_byte_for_byte(cli, project, fake_server, hdir):
    assert cli("proj", "staging")[0] == 0
    code, _, err = cli("proj", "prod", "--promote-from", "staging")
    assert code == 0, err
    assert fake_server.received[1].bundle == fake_server.received[0].bundle
    assert fake_server.received[1].fields["deployment"] == "prod"
    assert entries(hdir, deployment="prod")[-1]["promoted_from"] == "proj/staging#1"
    code, _, err = cli("proj", "prod", "--promote-from", "qa")
    assert code == ExitCode.USAGE and "no deploys of proj/qa" in err


def test_promotion_refuses_a_spirotop_without_the_target_key(cli, project, fake_server, hdir):
    (project / "_salt" / "top.sls").unlink()
    (project / "_salt" / "spirotop.sls").write_text("staging:\n  '*':\n    - hello\n")
    assert cli("proj", "staging")[0] == 0
    code, _, err = cli("proj", "prod", "--promote-from", "staging")
    assert code == ExitCode.USAGE
    assert "no top.sls and its spirotop.sls has no key for 'prod'" in err
    assert len(fake_server.received) == 1
    assert cli("proj", "prod", "--promote-from", "staging", "--force")[0] == 0
    (project / "_salt" / "spirotop.sls").write_text("staging:\n  '*': [hello]\n"
                                                   "'prod':\n  '*': [hello]\n")
    assert cli("proj", "staging")[0] == 0
    assert cli("proj", "prod", "--promote-from", "staging")[0] == 0


@pytest.mark.parametrize("args, message", [
    (["--to", "1"], "--to goes with"),
    (["--force"], "--force goes with"),
    (["--rollback", "--no-history"], "--no-history contradicts"),
    (["--rollback", "--dry-run"], "deploy no new bundle"),
    (["--history-max-size", "lots"], "not a size"),
])
def test_option_mistakes_are_usage_errors(cli, args, message):
    code, _, err = cli("proj", "prod", *args)
    assert code == ExitCode.USAGE and message in err


def test_recording_survives_a_full_disk_mid_upload(cli, fake_server, hdir, monkeypatch):
    from spirodeploy import history

    real = history.Recording._write

    def full(self, block):
        if self._file is not None:
            self._file.write = _raise_enospc
        return real(self, block)

    monkeypatch.setattr(history.Recording, "_write", full)
    code, _, err = cli("proj", "prod")
    assert code == 0 and len(fake_server.received) == 1
    assert "No space left on device" in err and "not recorded" in err
    assert entries(hdir) == [] and not [p for p in (hdir / "bundles").iterdir()]


def _raise_enospc(data):
    raise OSError(28, "No space left on device")


def test_stored_bundle_is_a_tar_with_the_manifest(cli, hdir):
    assert cli("proj", "prod")[0] == 0
    [entry] = entries(hdir)
    with tarfile.open(hdir / "bundles" / f"{entry['sha256']}.tar") as tf:
        manifest = json.load(tf.extractfile(".spirodeploy.json"))
    assert manifest["digest"] == entry["digest"]


def test_history_listing_shows_recorded_text_inert(cli, hdir):
    # Recorded fields come from git and CI variables, as given.
    store = HistoryStore(str(hdir))
    entry_data = b"hostile"
    store.ensure()
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=store.bundles_dir, prefix=".bundle.", suffix=".tmp")
    os.write(fd, entry_data)
    os.close(fd)
    store.append(dict(_entry("proj", "prod", entry_data), user="ci\x1b]52;c;cHduZWQ=\x07",
                      gitcommit="abc\x1b[2J\x1b[32mDeployed"), tmp)
    code, out, err = cli("proj", "prod", "--history")
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out


def test_a_fleets_log_entry_stays_small(cli, fake_server, hdir):
    # Every deploy reads the whole log: an entry that named each of 10,000
    # minions (130 KB) made each later deploy slower and bigger.
    from tests.fakeserver import fleet_events

    fake_server.default.chunks = list(fleet_events(1000, states=2, changed=0, fail_every=100))
    code, _, _ = cli("proj", "prod")
    assert code == ExitCode.DEPLOY_FAILED  # every 100th minion fails, as scripted
    [entry] = entries(hdir)
    minions = entry["minions"]
    assert minions["counts"] == {"ok": 990, "failed": 10, "unreported": 0}
    assert len(minions["ok"]) == 100 and len(minions["failed"]) == 10
    assert len((hdir / "log.jsonl").read_bytes()) < 5000
