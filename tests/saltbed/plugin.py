"""pytest fixtures for the real test bed: salt-master + SpiroFS + salt-minion.

Import the fixtures into a conftest (tests/integration/conftest.py does)::

    from tests.saltbed.plugin import event_listener, salt_factories_config, spiro_bed  # noqa: F401

``spiro_bed`` (session scope) starts, once per session, a salt-master running
the real spirofs 0.3 (engine twice: HTTP and HTTPS; fileserver backend
``spiro``; runner; utils) with our compatibility shim, and a salt-minion
attached to it, all on 127.0.0.1 under pytest's temp dir. If anything fails
to come up, the fixture raises (tests error, never skip).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from . import bed
from .install import ensure_spirofs

LOOPBACK = "127.0.0.1"
MASTER_ID = "spiro-master"
MINION_ID = "spiro-minion"
#: Seconds to wait for the engines to listen once the master reports started.
ENGINE_START_TIMEOUT = 30


@dataclass
class SpiroBed:
    """Handle on the running bed, returned by the ``spiro_bed`` fixture."""

    http_url: str  #: "http://127.0.0.1:PORT/" (plain-HTTP engine instance)
    https_url: str  #: "https://127.0.0.1:PORT/" (TLS engine instance)
    ca_cert: Path  #: PEM of the CA that signed the HTTPS server certificate
    root_token: str  #: issued by ``salt-run spiro.issue_root_token``
    minion_id: str
    master: Any  #: saltfactories SaltMaster daemon
    minion: Any  #: saltfactories SaltMinion daemon
    salt_run_cli: Any  #: salt-run for this master (with the shim on PYTHONPATH)
    salt_call_cli: Any  #: salt-call on the minion
    output_dir: Path  #: where examples/hello writes (minion option ``spirodeploy_demo_dir``)
    cachedir: Path  #: the master's cachedir

    def issue_token(self, projects: list[str], lifespan: int | None = None) -> str:
        """A token for ``projects``, issued for real by ``salt-run spiro.issue_token``."""
        # JSON is YAML, so Salt's CLI parser hands the runner a real list of
        # strings (a bare "123" would otherwise become an int).
        args = [f"projects={json.dumps(list(projects))}"]
        if lifespan is not None:
            args.append(f"lifespan={int(lifespan)}")
        return _run_token_runner(self.salt_run_cli, "spiro.issue_token", *args)

    def deploy_dir(self, project: str, deployment: str) -> Path:
        """Where the server keeps saltenv ``<project>/<deployment>`` (quoted like spirofs does)."""
        return self.cachedir / "spirofs" / quote(project) / quote(deployment)

    def output_file(self, project: str, deployment: str) -> Path:
        """The file examples/hello's highstate writes for that saltenv."""
        return self.output_dir / project / deployment / "hello.txt"

    def remove_deployment(self, project: str, deployment: str) -> None:
        """Delete a saltenv from the server (e.g. after deploying a broken top.sls,
        which would break highstate targeting for every later deploy)."""
        shutil.rmtree(self.deploy_dir(project, deployment), ignore_errors=True)

    def make_project(self, tmp_path: Path, name: str = "hello", fail: bool = False) -> Path:
        """Copy examples/hello to ``tmp_path/name``; its ``_salt`` works for any deployment.

        With ``fail=True`` the top file also applies ``fail.sls``, one state
        that always fails (id ``spirodeploy-example-failure``).
        """
        dest = Path(tmp_path) / name
        shutil.copytree(bed.EXAMPLE_PROJECT, dest, ignore=shutil.ignore_patterns("README.md"))
        if fail:
            salt_dir = dest / "_salt"
            (salt_dir / "fail.sls").write_text(
                "spirodeploy-example-failure:\n"
                "  test.fail_without_changes:\n"
                "    - comment: This state fails on purpose (make_project(fail=True)).\n"
            )
            with (salt_dir / "top.sls").open("a") as top:
                top.write("    - fail\n")
        return dest

    def master_log(self, lines: int = 200) -> str:
        """Tail of the salt-master log, for failure messages."""
        path = Path(self.master.config["log_file"])
        if not path.exists():
            return "(no master log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _run_token_runner(salt_run_cli: Any, fun: str, *args: str) -> str:
    ret = salt_run_cli.run(fun, *args)
    # salt-run prints a bare string even with --out=json, so ret.data is
    # usually None; the token is the whole of stdout.
    token = ret.data if isinstance(ret.data, str) else ret.stdout.strip()
    if ret.returncode != 0 or not token or any(c.isspace() for c in token):
        raise RuntimeError(f"salt-run {fun} failed: {ret}")
    return token


@pytest.fixture(scope="session")
def salt_factories_config(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Run the salt daemons under pytest's temp dir, with this venv's python.

    salt-factories' own ``sitecustomize`` injection (coverage) is turned off:
    it would put another ``sitecustomize`` ahead of our shim.
    """
    _log_server_to_loopback(request.config)
    return {
        "root_dir": tmp_path_factory.mktemp("salt"),
        "inject_sitecustomize": False,
        "start_timeout": 60,
        "log_server_host": LOOPBACK,
    }


@pytest.fixture(scope="session")
def event_listener() -> Iterator[Any]:
    """salt-factories' event listener, on 127.0.0.1 instead of 0.0.0.0."""
    from saltfactories.plugins.event_listener import EventListener

    listener = EventListener()
    listener.host = LOOPBACK
    listener.address = f"tcp://{LOOPBACK}:{listener.port}"
    with listener:
        yield listener


def _log_server_to_loopback(config: pytest.Config) -> None:
    """Restart salt-factories' log server (started at session start on
    0.0.0.0) on 127.0.0.1: nothing of the bed should listen on the network."""
    log_server = config.pluginmanager.get_plugin("saltfactories-log-server")
    if log_server is not None and log_server.log_host != LOOPBACK:
        log_server.stop()
        log_server.log_host = LOOPBACK
        log_server.start()


@pytest.fixture(scope="session")
def spiro_bed(salt_factories: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpiroBed]:
    """The running bed; started once per session, torn down at its end."""
    started = time.monotonic()
    spirofs_pkg = ensure_spirofs()
    base = tmp_path_factory.mktemp("spirobed")
    tls = bed.make_tls_files(base / "tls")
    output_dir = base / "output"
    output_dir.mkdir()
    http_port, https_port = bed.free_port(), bed.free_port()
    while https_port == http_port:
        https_port = bed.free_port()
    shim_env = bed.shim_environ(salt_factories.environ)

    master = salt_factories.salt_master_daemon(
        MASTER_ID, overrides=bed.master_config(spirofs_pkg, http_port, https_port, tls)
    )
    # Only the master (and its salt-run) get the shim; the minion does not
    # load spirofs at all.
    master.environ = shim_env
    minion = master.salt_minion_daemon(MINION_ID, overrides=bed.minion_config(output_dir))
    with master.started(), minion.started():
        salt_run_cli = master.salt_run_cli(environ=shim_env, timeout=60)
        # Issue the root token first: the runner creates the macaroon key
        # file, which the engines read lazily on their first token check.
        root_token = _run_token_runner(salt_run_cli, "spiro.issue_root_token")
        spiro = SpiroBed(
            http_url=f"http://127.0.0.1:{http_port}/",
            https_url=f"https://127.0.0.1:{https_port}/",
            ca_cert=tls.ca_cert,
            root_token=root_token,
            minion_id=minion.id,
            master=master,
            minion=minion,
            salt_run_cli=salt_run_cli,
            salt_call_cli=minion.salt_call_cli(timeout=120),
            output_dir=output_dir,
            cachedir=Path(master.config["cachedir"]),
        )
        try:
            bed.wait_for_http(spiro.http_url, ENGINE_START_TIMEOUT)
            bed.wait_for_http(spiro.https_url, ENGINE_START_TIMEOUT, verify=str(tls.ca_cert))
        except TimeoutError as exc:
            pytest.fail(
                f"SpiroFS engine did not start: {exc}\n--- master log ---\n{spiro.master_log()}",
                pytrace=False,
            )
        print(f"\nspiro_bed ready in {time.monotonic() - started:.1f}s: {spiro.http_url} {spiro.https_url}")
        yield spiro
    _quiet_salt_exit_logging()


def _quiet_salt_exit_logging() -> None:
    """Hand Salt's deferred start-up log handler over to pytest's handlers now.

    Importing salt in the pytest process installs a handler that queues
    records and writes them to the stderr of that moment at exit, by which
    time pytest has closed its capture stream: dozens of "--- Logging error
    ---" tracebacks after the summary. Flushing it here routes the records to
    pytest's own logging instead.
    """
    try:
        import salt._logging.impl as salt_logging
    except ImportError:
        return
    salt_logging.shutdown_temp_handler()
