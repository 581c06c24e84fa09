"""A multi-master bed: two salt-masters, each running SpiroFS, and one minion on both.

For tests of deploys to several masters. Import the fixture where it is used::

    from tests.saltbed.multimaster import spiro_multimaster_fixture  # noqa: F401

It is independent of ``spiro_bed`` (whose master and minion it leaves
alone) and lives for one test module: two new masters (``spiro-mm-1``,
``spiro-mm-2``), each with one SpiroFS engine on HTTPS with its own
throwaway CA and its own token key (so each issues its own tokens), and
one minion (``spiro-mm-minion``) in hot multi-master mode (``master:`` both
``127.0.0.1:<port>``), whose key both masters accept.  As multi-master
Salt requires, the masters share one master key pair. Built from
``bed.py``'s config helpers and the same shim; one engine per master (not
the ``spiro_bed``'s two) keeps it small.
"""

from __future__ import annotations

import contextlib
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
from .plugin import ENGINE_START_TIMEOUT, _run_token_runner

MASTER_IDS = ("spiro-mm-1", "spiro-mm-2")
MINION_ID = "spiro-mm-minion"


@dataclass
class SpiroMaster:
    """One master of the multi-master bed."""

    id: str
    url: str  #: "https://127.0.0.1:PORT/"
    ca_cert: Path  #: the CA of this master's SpiroFS certificate (each has its own)
    token: str  #: a root token, issued by this master (its own macaroon key)
    daemon: Any  #: saltfactories SaltMaster
    salt_run_cli: Any
    cachedir: Path
    ret_port: int

    def deploy_dir(self, project: str, deployment: str) -> Path:
        """Where this master's SpiroFS keeps saltenv ``<project>/<deployment>``."""
        return self.cachedir / "spirofs" / quote(project) / quote(deployment)

    def master_log(self, lines: int = 100) -> str:
        path = Path(self.daemon.config["log_file"])
        if not path.exists():
            return "(no master log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class SpiroMultiMaster:
    """Handle on the running multi-master bed."""

    masters: list[SpiroMaster]
    minion: Any  #: saltfactories SaltMinion, connected to both masters
    minion_id: str
    output_dir: Path  #: the minion's ``spirodeploy_demo_dir``

    def salt_call(self, master: SpiroMaster, *args: str) -> Any:
        """``salt-call --master 127.0.0.1:<its port>``: ask that master alone."""
        cli = self.minion.salt_call_cli(timeout=120)
        return cli.run(f"--master=127.0.0.1:{master.ret_port}", *args)


def _master_overrides(spirofs_pkg: Path, port: int, tls: bed.TLSFiles) -> dict[str, Any]:
    config = bed.master_config(spirofs_pkg, port, port, tls)
    # One engine (HTTPS) per master, instead of the main bed's HTTP + HTTPS pair.
    config["engines"] = [{"spiro_https": {"engine_module": "spiro", "port": port,
                                          "ssl_crt": str(tls.server_cert),
                                          "ssl_key": str(tls.server_key)}}]
    return config


@pytest.fixture(scope="module", name="spiro_multimaster")
def spiro_multimaster_fixture(salt_factories: Any, event_listener: Any,
                              tmp_path_factory: pytest.TempPathFactory
                              ) -> Iterator[SpiroMultiMaster]:
    """Two masters with SpiroFS and one minion connected to both, for one module."""
    started = time.monotonic()
    spirofs_pkg = ensure_spirofs()
    base = tmp_path_factory.mktemp("spiromm")
    output_dir = base / "output"
    output_dir.mkdir()
    shim_env = bed.shim_environ(salt_factories.environ)
    daemons, tls_files, ports = [], [], []
    for master_id in MASTER_IDS:
        tls = bed.make_tls_files(base / master_id / "tls")
        port = bed.free_port()
        while port in ports:
            port = bed.free_port()
        daemon = salt_factories.salt_master_daemon(
            master_id, overrides=_master_overrides(spirofs_pkg, port, tls))
        daemon.environ = shim_env
        daemons.append(daemon)
        tls_files.append(tls)
        ports.append(port)
    masters_config = [f"127.0.0.1:{daemon.config['ret_port']}" for daemon in daemons]
    minion = daemons[0].salt_minion_daemon(
        MINION_ID, overrides={**bed.minion_config(output_dir), "master": masters_config})
    with contextlib.ExitStack() as stack:
        for daemon in daemons:
            if daemon is not daemons[0]:
                _share_master_key(daemons[0], daemon)
            stack.enter_context(daemon.started())
        stack.enter_context(minion.started())
        masters = []
        for daemon, tls, port in zip(daemons, tls_files, ports, strict=True):
            salt_run = daemon.salt_run_cli(environ=shim_env, timeout=60)
            master = SpiroMaster(
                id=daemon.id, url=f"https://127.0.0.1:{port}/", ca_cert=tls.ca_cert,
                # First: the runner creates the key file the engine reads lazily.
                token=_run_token_runner(salt_run, "spiro.issue_root_token"),
                daemon=daemon, salt_run_cli=salt_run,
                cachedir=Path(daemon.config["cachedir"]), ret_port=daemon.config["ret_port"])
            try:
                bed.wait_for_http(master.url, ENGINE_START_TIMEOUT, verify=str(tls.ca_cert))
            except TimeoutError as exc:
                pytest.fail(f"SpiroFS on {master.id} did not start: {exc}\n"
                            f"--- master log ---\n{master.master_log()}", pytrace=False)
            masters.append(master)
        _wait_for_minion_on(masters, MINION_ID)
        print(f"\nspiro_multimaster ready in {time.monotonic() - started:.1f}s: "
              f"{', '.join(m.url for m in masters)}")
        yield SpiroMultiMaster(masters=masters, minion=minion, minion_id=MINION_ID,
                               output_dir=output_dir)


def _share_master_key(source: Any, target: Any) -> None:
    """Multi-master Salt needs one master key pair on every master (the minion
    refuses a master whose key differs: "The master key has changed").  The
    SpiroFS token key (``spiro_auth/``) stays each master's own."""
    source_pki, target_pki = Path(source.config["pki_dir"]), Path(target.config["pki_dir"])
    target_pki.mkdir(parents=True, exist_ok=True)
    for name in ("master.pem", "master.pub"):
        shutil.copy2(source_pki / name, target_pki / name)


def _wait_for_minion_on(masters: list[SpiroMaster], minion_id: str, timeout: float = 60) -> None:
    """The minion's start event is checked on the first master only: wait until
    every master has accepted its key too (the auth callback accepts it)."""
    deadline = time.monotonic() + timeout
    for master in masters:
        accepted = Path(master.daemon.config["pki_dir"]) / "minions" / minion_id
        while not accepted.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"{master.id} never accepted {minion_id}\n{master.master_log()}",
                            pytrace=False)
            time.sleep(0.5)
