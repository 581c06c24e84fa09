"""The test bed itself works: a real SpiroFS server under a real salt-master.

These tests talk to the server with ``requests`` directly, not with
spiro-deploy's own client, so they prove the bed (and pin down how the real
server behaves) independently of the code under test.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from tests.support import names

HIGHSTATE_EVENTS = [
    "deploy-bundle", "highstate-calc", "highstate-start", "highstate-update", "highstate-finish",
]
GREETING = "Hello from spiro-deploy!"
#: (connect, read) seconds. The read timeout is per read: a server that stops
#: sending (the shared-loop hang) fails the request instead of blocking.
REQUEST_TIMEOUT = (5, 60)


def make_bundle(salt_dir: Path) -> bytes:
    """A plain tar of ``salt_dir``'s contents, as the protocol expects."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(salt_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(salt_dir).as_posix(), recursive=False)
    return buf.getvalue()


def iter_sse(lines: Iterable[bytes]) -> Iterator[tuple[str, dict]]:
    """Minimal Server-Sent Events parser: yields (event, json data)."""
    event, data = None, []
    for raw in _with_end(lines):
        line = raw.decode("utf-8")
        if not line:
            if event is not None or data:
                yield event or "message", json.loads("\n".join(data))
            event, data = None, []
        elif line.startswith("event:"):
            event = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].removeprefix(" "))


def _with_end(lines: Iterable[bytes]) -> Iterator[bytes]:
    yield from lines
    yield b""  # a stream cut without a final blank line still ends its event


class DeployHung(AssertionError):
    """The server stopped sending mid-stream (the shared-loop hang)."""


def deploy(
    url: str, token: str, project: str, deployment: str, bundle: bytes,
    highstate: bool = True, verify: bool | str = True,
) -> tuple[int, list[tuple[str, dict]]]:
    """POST a deploy; return (status, events). Events only for a 200."""
    fields = {"project": project, "deployment": deployment}
    if highstate:
        fields["highstate"] = "1"  # only the field's absence disables highstate
    with requests.post(
        url, headers={"Authorization": f"Bearer {token}"}, data=fields,
        files={"bundle": ("bundle.tar", bundle, "application/x-tar")},
        stream=True, timeout=REQUEST_TIMEOUT, verify=verify,
    ) as resp:
        if resp.status_code != 200:
            return resp.status_code, []
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events: list[tuple[str, dict]] = []
        try:
            for event in iter_sse(resp.iter_lines()):
                events.append(event)
        except requests.exceptions.RequestException as exc:
            raise DeployHung(
                f"{project}/{deployment} (highstate={highstate}): no data for "
                f"{REQUEST_TIMEOUT[1]}s after {names(events)}: {exc}"
            ) from None
        return 200, events


def assert_clean_run(events: list[tuple[str, dict]], highstate: bool) -> None:
    assert names(events) == (HIGHSTATE_EVENTS if highstate else ["deploy-bundle"]), events


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.fixture(scope="module")
def bundle(spiro_bed, tmp_path_factory) -> bytes:
    return make_bundle(spiro_bed.make_project(tmp_path_factory.mktemp("project")) / "_salt")


@pytest.mark.timeout(120)
def test_root_token_auth_ok(spiro_bed):
    for url, verify in ((spiro_bed.http_url, True), (spiro_bed.https_url, str(spiro_bed.ca_cert))):
        resp = requests.get(
            url, headers={"Authorization": f"bearer {spiro_bed.root_token}"},
            timeout=10, verify=verify,
        )
        assert (resp.status_code, resp.text) == (200, "Auth OK")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-token"},
                                     {"Authorization": "Basic dXNlcjpwdw=="}])
def test_bad_token_is_401(spiro_bed, headers):
    assert requests.get(spiro_bed.http_url, headers=headers, timeout=10).status_code == 401


@pytest.mark.timeout(120)
def test_deploy_with_highstate_applies_states(spiro_bed, bundle):
    out = spiro_bed.output_file("hello", "t-highstate")
    status, events = deploy(spiro_bed.http_url, spiro_bed.root_token, "hello", "t-highstate", bundle)
    assert status == 200
    assert_clean_run(events, highstate=True)
    data = dict(events)
    assert data["highstate-start"]["minions"] == [spiro_bed.minion_id]
    update = data["highstate-update"]
    assert update["minion"] == spiro_bed.minion_id
    assert update["result"]["retcode"] == 0, update
    states = update["result"]["ret"]
    assert states and all(s["result"] is True for s in states.values()), states
    assert out.read_text().splitlines() == [
        GREETING, "project: hello", "deployment: t-highstate", f"minion: {spiro_bed.minion_id}",
    ]
    assert (spiro_bed.deploy_dir("hello", "t-highstate") / "top.sls").is_file()


@pytest.mark.timeout(120)
def test_deploy_without_highstate_only_deploys(spiro_bed, bundle):
    status, events = deploy(
        spiro_bed.http_url, spiro_bed.root_token, "hello", "t-nohighstate", bundle, highstate=False
    )
    assert status == 200
    assert_clean_run(events, highstate=False)
    deployed = spiro_bed.deploy_dir("hello", "t-nohighstate")
    assert (deployed / "top.sls").is_file()
    assert (deployed / "hello" / "init.sls").is_file()
    assert not spiro_bed.output_file("hello", "t-nohighstate").exists()
    # And the minion sees the bundle as saltenv hello/t-nohighstate through the
    # spiro fileserver backend.
    ret = spiro_bed.salt_call_cli.run("cp.list_master", saltenv="hello/t-nohighstate")
    assert ret.returncode == 0, ret
    assert sorted(ret.data) == ["hello/files/hello.txt.j2", "hello/init.sls", "top.sls"]


@pytest.mark.timeout(120)
def test_failing_state_reports_failure(spiro_bed, tmp_path):
    failing = make_bundle(spiro_bed.make_project(tmp_path, fail=True) / "_salt")
    status, events = deploy(spiro_bed.http_url, spiro_bed.root_token, "hello", "t-fail", failing)
    assert status == 200
    assert_clean_run(events, highstate=True)
    result = dict(events)["highstate-update"]["result"]
    assert result["retcode"] != 0
    failed = [s for s in result["ret"].values() if s["result"] is False]
    assert [s["comment"] for s in failed] == ["This state fails on purpose (make_project(fail=True))."]
    # The other state still ran.
    assert spiro_bed.output_file("hello", "t-fail").is_file()


@pytest.mark.timeout(120)
def test_https_with_test_ca(spiro_bed, bundle):
    status, events = deploy(
        spiro_bed.https_url, spiro_bed.root_token, "hello", "t-https", bundle,
        highstate=False, verify=str(spiro_bed.ca_cert),
    )
    assert status == 200
    assert_clean_run(events, highstate=False)
    # The certificate is also valid for "localhost".
    localhost = spiro_bed.https_url.replace("127.0.0.1", "localhost")
    assert requests.get(localhost, timeout=10, verify=str(spiro_bed.ca_cert)).status_code == 401


@pytest.mark.timeout(60)
def test_https_without_test_ca_fails_verification(spiro_bed):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(spiro_bed.https_url, timeout=10)


@pytest.mark.timeout(60)
def test_engines_listen_on_loopback_only(spiro_bed):
    ports = {int(url.rsplit(":", 1)[1].strip("/")) for url in (spiro_bed.http_url, spiro_bed.https_url)}
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
    }
    assert listening == {("127.0.0.1", port) for port in ports}


@pytest.mark.timeout(120)
def test_project_token_scope(spiro_bed, bundle):
    """A token for project "other" is refused for "hello" with 403, but
    spirofs 0.3 deploys and highstates the bundle anyway (a server bug the
    client must not paper over: it must report the 403 as a failure)."""
    other = spiro_bed.issue_token(["other"])
    # Valid token, so GET (no project) is fine.
    assert requests.get(spiro_bed.http_url, headers={"Authorization": f"Bearer {other}"},
                        timeout=10).status_code == 200
    status, _ = deploy(spiro_bed.http_url, other, "hello", "t-forbidden", bundle)
    assert status == 403
    deployed = spiro_bed.deploy_dir("hello", "t-forbidden") / "top.sls"
    output = spiro_bed.output_file("hello", "t-forbidden")
    assert wait_for(deployed.is_file, 30), "403: expected spirofs 0.3 to deploy anyway"
    assert wait_for(output.is_file, 60), "403: expected spirofs 0.3 to highstate anyway"

    # A token for "hello" itself is accepted.
    scoped = spiro_bed.issue_token(["hello"])
    status, events = deploy(spiro_bed.http_url, scoped, "hello", "t-scoped", bundle, highstate=False)
    assert status == 200
    assert_clean_run(events, highstate=False)


@pytest.mark.timeout(60)
def test_token_lifespan_expires(spiro_bed):
    token = spiro_bed.issue_token(["hello"], lifespan=1)
    time.sleep(1.5)
    resp = requests.get(spiro_bed.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 401


@pytest.mark.timeout(180)
def test_broken_top_file_blocks_highstate_targeting(spiro_bed, bundle, tmp_path):
    """Why ``remove_deployment`` exists: the server picks minions with
    ``state.show_top``, which renders every saltenv's top file; one that does
    not render leaves *every* deploy with no minions to highstate."""
    broken_salt = spiro_bed.make_project(tmp_path) / "_salt"
    (broken_salt / "top.sls").write_text("{{ not jinja\n")
    url, token = spiro_bed.http_url, spiro_bed.root_token
    try:
        status, _ = deploy(url, token, "hello", "t-broken-top", make_bundle(broken_salt), highstate=False)
        assert status == 200
        _, events = deploy(url, token, "hello", "t-after-broken", bundle)
        assert names(events) == ["deploy-bundle", "highstate-calc", "highstate-start", "highstate-finish"]
        assert dict(events)["highstate-start"]["minions"] == []
    finally:
        spiro_bed.remove_deployment("hello", "t-broken-top")
    _, events = deploy(url, token, "hello", "t-after-broken", bundle)
    assert_clean_run(events, highstate=True)


@pytest.mark.timeout(600)
def test_repeated_and_concurrent_deploys_never_hang(spiro_bed, bundle):
    """Guards fix 4 of the shim (a fresh event loop in the engine process).

    Without it about one deploy in ten hangs forever after "deploy-bundle" or
    after the last "highstate-update". Every request here has a read timeout,
    so a hang fails the test instead of blocking it.
    """
    url, token = spiro_bed.http_url, spiro_bed.root_token

    for i in range(30):
        highstate = i % 3 == 0
        status, events = deploy(url, token, "hello", f"stress-seq-{i % 3}", bundle, highstate)
        assert status == 200, f"deploy {i}"
        assert_clean_run(events, highstate)

    def one(slot: int, highstate: bool) -> list[str]:
        status, events = deploy(url, token, "hello", f"stress-par-{slot}", bundle, highstate)
        assert status == 200
        return names(events)

    with ThreadPoolExecutor(3) as pool:
        for round_ in range(3):
            # Distinct deployments: concurrent deploys to one deployment race
            # in the server's directory swap (a separate server bug).
            plan = [(slot, (slot + round_) % 3 != 0) for slot in range(3)]
            results = list(pool.map(lambda p: one(*p), plan))
            for (_, highstate), got in zip(plan, results, strict=True):
                assert got == (HIGHSTATE_EVENTS if highstate else ["deploy-bundle"]), (round_, got)


@pytest.mark.timeout(60)
def test_nothing_of_the_bed_listens_beyond_loopback(spiro_bed):
    """The master, its engines and salt-factories' helpers: all on 127.0.0.1."""
    pids = {spiro_bed.master.pid, spiro_bed.minion.pid, psutil.Process().pid}
    for pid in list(pids):
        pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    exposed = [
        c for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids and c.laddr.ip not in ("127.0.0.1", "::1")
    ]
    assert exposed == []
