"""The one-command demo (``make demo``): a real deploy, start to finish.

Run as ``python -m tests.saltbed.demo`` from the repository root. Without
pytest, it:

1. installs the real SpiroFS server (spirofs 0.3 from PyPI, off ``sys.path``)
   if it is not there yet, and writes a throwaway master + minion config and
   a throwaway CA + server certificate into a temp dir;
2. starts ``salt-master`` (SpiroFS engine on HTTPS, fileserver backend,
   runner; with our compatibility shim, see README.md) and ``salt-minion``
   from this venv, on 127.0.0.1 with free ports, the minion's key accepted
   automatically, and waits until both answer;
3. issues a deploy token for project ``hello`` for real
   (``salt-run spiro.issue_token hello``) into a token file;
4. runs the real CLI, ``spiro-deploy hello demo -C examples/hello ...``, its
   output straight to the terminal: the server's events and the minion's
   highstate as they happen;
5. shows what the minion has now (``salt-call cp.list_master`` for saltenv
   ``hello/demo``, and the file its highstate wrote);
6. stops everything it started (whole process groups, also on Ctrl-C or on
   failure) and removes the temp dir (``--keep`` keeps it).

Exit status: spiro-deploy's own when the deploy failed, 1 when the bed did
not come up, 130 when interrupted, else 0.

Reuses ``bed.py`` (configs, TLS, shim environment) and ``install.py``;
nothing of pytest-salt-factories.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import bed
from .install import ensure_spirofs

PROJECT = "hello"
DEPLOYMENT = "demo"
MASTER_ID = "demo-master"
MINION_ID = "demo-minion"
#: Seconds to wait for the master's engine, then for the minion, to answer.
START_TIMEOUT = 90
#: Seconds the master gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 10
#: The minion takes 6-10 s to act on SIGTERM (it finishes a 5 s wait first);
#: a throwaway minion has nothing to save, so it gets less.
MINION_STOP_TIMEOUT = 3

BIN_DIR = Path(sys.executable).parent  # the venv's bin (not resolved: symlinks stay in the venv)


class BedError(RuntimeError):
    """The master or minion did not come up."""


# --- output -------------------------------------------------------------------

def _colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def heading(text: str) -> None:
    line = f"==> {text}"
    print(f"\n\033[1;34m{line}\033[0m" if _colour() else f"\n{line}", flush=True)


def note(text: str) -> None:
    print(f"    {text}", flush=True)


def show_command(cmd: Sequence[str]) -> None:
    shown = " ".join(shlex.quote(_short(part)) for part in cmd)
    print(f"\033[2m$ {shown}\033[0m" if _colour() else f"$ {shown}", flush=True)


def _short(part: str) -> str:
    """A path under the venv's bin dir or the repository, shown relative to it."""
    for base in (BIN_DIR, bed.REPO_ROOT):
        try:
            return str(Path(part).relative_to(base))
        except ValueError:
            continue
    return part


# --- configs ------------------------------------------------------------------

def _yaml(data: Any) -> str:
    import yaml  # Salt depends on PyYAML

    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True)


def write_configs(base: Path, spirofs_pkg: Path, tls: bed.TLSFiles, output_dir: Path) -> dict[str, Any]:
    """Master and minion configs under ``base``; return what the rest needs."""
    user = getpass.getuser()
    https_port = bed.free_port()
    ports = _distinct_ports(7, exclude={https_port})
    publish_port, ret_port = ports[0], ports[1]

    master_root = base / "master"
    master_conf = master_root / "conf"
    master_conf.mkdir(parents=True)
    # The bed's master config is for two engine instances (HTTP + HTTPS);
    # the demo uses only HTTPS, as a real deployment should.
    master = bed.master_config(spirofs_pkg, ports[6], https_port, tls)
    master["engines"] = [e for e in master["engines"] if "spiro_https" in e]
    master.update({
        "id": MASTER_ID,
        "user": user,
        "root_dir": str(master_root),
        "conf_file": str(master_conf / "master"),
        "interface": "127.0.0.1",
        "publish_port": publish_port,
        "ret_port": ret_port,
        "tcp_master_pub_port": ports[2],
        "tcp_master_pull_port": ports[3],
        "tcp_master_publish_pull": ports[4],
        "tcp_master_workers": ports[5],
        "pki_dir": "pki",
        "cachedir": "cache",
        "sock_dir": "run/master",
        "pidfile": "run/master.pid",
        "log_file": "logs/master.log",
        "key_logfile": "logs/key.log",
        "log_level": "warning",
        "log_level_logfile": "info",
        # A throwaway master on loopback: accept the demo minion's key at once.
        "auto_accept": True,
        "open_mode": True,
        "file_roots": {"base": [str(master_root / "srv")]},
        "pillar_roots": {"base": [str(master_root / "pillar")]},
        "pillar_opts": False,
        "enable_legacy_startup_events": False,
        "worker_threads": 2,
    })
    (master_root / "srv").mkdir()
    (master_root / "pillar").mkdir()
    (master_conf / "master").write_text(_yaml(master))

    minion_root = base / "minion"
    minion_conf = minion_root / "conf"
    minion_conf.mkdir(parents=True)
    minion = bed.minion_config(output_dir)
    minion.update({
        "id": MINION_ID,
        "user": user,
        "root_dir": str(minion_root),
        "conf_file": str(minion_conf / "minion"),
        "master": "127.0.0.1",
        "master_port": ret_port,
        "publish_port": publish_port,
        "interface": "127.0.0.1",
        "pki_dir": "pki",
        "cachedir": "cache",
        "sock_dir": "run/minion",
        "pidfile": "run/minion.pid",
        "log_file": "logs/minion.log",
        "log_level": "warning",
        "log_level_logfile": "info",
        "acceptance_wait_time": 0.5,
        "acceptance_wait_time_max": 2,
        "loop_interval": 0.05,
        "enable_legacy_startup_events": False,
        "file_roots": {"base": [str(minion_root / "srv")]},
    })
    (minion_conf / "minion").write_text(_yaml(minion))
    return {
        "master_conf": master_conf,
        "minion_conf": minion_conf,
        "master_log": master_root / "logs" / "master.log",
        "minion_log": minion_root / "logs" / "minion.log",
        "https_url": f"https://127.0.0.1:{https_port}/",
    }


def _distinct_ports(count: int, exclude: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = bed.free_port()
        if port not in exclude and port not in ports:
            ports.append(port)
    return ports


# --- processes ----------------------------------------------------------------

class Daemons:
    """The salt-master and salt-minion we started, each in its own process group."""

    def __init__(self, base: Path):
        self.base = base
        self.procs: list[tuple[str, subprocess.Popen, float]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              grace: float = STOP_TIMEOUT) -> None:
        """Start ``cmd``; on :meth:`stop` it gets ``grace`` seconds after SIGTERM."""
        console = open(self.base / f"{name}.console.log", "wb")
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                env=env, cwd=self.base,
                # Own session: a Ctrl-C in the terminal reaches only the demo,
                # which then stops the daemons in order (below).
                start_new_session=True,
            )
        finally:
            console.close()
        self.procs.append((name, proc, grace))

    def check_alive(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                raise BedError(f"{name} exited with status {proc.returncode}")

    def stop(self) -> tuple[list[str], list[str]]:
        """Stop every process we started and all their descendants.

        Returns (one line per daemon saying how it stopped, what is still
        alive even after SIGKILL).
        """
        import psutil  # a Salt dependency

        report: list[str] = []
        survivors: list[str] = []
        # Minion first, then the master: no "lost the master" retries.
        for name, proc, grace in reversed(self.procs):
            try:
                family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            except psutil.Error:
                family = []
            _signal_group(proc.pid, signal.SIGTERM)
            for member in family:  # in case one left the group
                _signal(member, signal.SIGTERM)
            _, alive = psutil.wait_procs(family, timeout=grace)
            if alive:
                report.append(f"{name}: still running {grace:g}s after SIGTERM, killed "
                              f"({len(alive)} of {len(family)} processes)")
            else:
                report.append(f"{name}: stopped ({len(family)} processes)")
            for member in alive:
                _signal(member, signal.SIGKILL)
            _signal_group(proc.pid, signal.SIGKILL)
            _, still = psutil.wait_procs(alive, timeout=5)
            survivors.extend(f"{name} (pid {member.pid})" for member in still)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                survivors.append(f"{name} (pid {proc.pid})")
        self.procs = []
        return report, sorted(set(survivors))


def _signal(process: Any, sig: int) -> None:
    import psutil

    try:
        process.send_signal(sig)
    except psutil.Error:
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass


def run_quiet(cmd: list[str], env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=env, timeout=timeout)


def salt_bin(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        raise BedError(f"{path} not found: run `make demo` (it installs Salt into .venv)")
    return str(path)


def wait_for_minion(daemons: Daemons, master_conf: Path, timeout: float) -> None:
    """Until the master can run a job on the minion (key accepted, connected)."""
    deadline = time.monotonic() + timeout
    cmd = [salt_bin("salt"), "-c", str(master_conf), "--out=json", "--static",
           "-t", "5", MINION_ID, "test.ping"]
    last = ""
    while time.monotonic() < deadline:
        daemons.check_alive()
        proc = run_quiet(cmd, timeout=30)
        if proc.returncode == 0 and "true" in proc.stdout:
            return
        last = (proc.stdout + proc.stderr).strip()
        time.sleep(0.5)
    raise BedError(f"the minion did not answer test.ping within {timeout}s: {last[-500:]}")


def wait_for_engine(daemons: Daemons, url: str, ca: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        daemons.check_alive()
        try:
            bed.wait_for_http(url, min(2.0, max(0.1, deadline - time.monotonic())), verify=str(ca))
            return
        except TimeoutError as exc:
            if time.monotonic() >= deadline:
                raise BedError(f"the SpiroFS engine did not start: {exc}") from None


def _tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return f"(no {path.name})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- the demo -----------------------------------------------------------------

def _on_signal(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def demo(keep: bool = False) -> int:
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="spirodeploy-demo-"))
    daemons = Daemons(base)
    paths: dict[str, Any] = {}
    status = 0
    survivors: list[str] = []
    try:
        heading("Setting up: SpiroFS 0.3, a throwaway CA and Salt configs")
        spirofs_pkg = ensure_spirofs()
        note(f"spirofs:  {spirofs_pkg}")
        note(f"temp dir: {base}")
        tls = bed.make_tls_files(base / "tls")
        output_dir = base / "minion-output"
        output_dir.mkdir()
        paths = write_configs(base, spirofs_pkg, tls, output_dir)
        shim_env = bed.shim_environ()

        heading("Starting salt-master (with the SpiroFS engine, HTTPS) and salt-minion on 127.0.0.1")
        daemons.start("salt-master", [salt_bin("salt-master"), "-c", str(paths["master_conf"])],
                      env=shim_env)
        daemons.start("salt-minion", [salt_bin("salt-minion"), "-c", str(paths["minion_conf"])],
                      grace=MINION_STOP_TIMEOUT)
        wait_for_engine(daemons, paths["https_url"], tls.ca_cert, START_TIMEOUT)
        note(f"SpiroFS listens on {paths['https_url']} ({time.monotonic() - started:.1f}s)")
        wait_for_minion(daemons, paths["master_conf"], START_TIMEOUT)
        note(f"minion {MINION_ID} answers ({time.monotonic() - started:.1f}s)")

        heading(f"Issuing a deploy token for project {PROJECT!r}")
        cmd = [salt_bin("salt-run"), "-c", str(paths["master_conf"]), "spiro.issue_token", PROJECT]
        show_command(cmd)
        proc = run_quiet(cmd, env=shim_env)
        token = proc.stdout.strip()
        if proc.returncode != 0 or not token or any(c.isspace() for c in token):
            raise BedError(f"salt-run spiro.issue_token failed: {proc.stdout}{proc.stderr}")
        token_file = base / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(token + "\n")
        note(f"written to {token_file}")

        heading(f"Deploying examples/hello as {PROJECT}/{DEPLOYMENT} with the real CLI")
        cmd = [salt_bin("spiro-deploy"), PROJECT, DEPLOYMENT, "-C", "examples/hello",
               "--server", paths["https_url"], "--ssl-cert", str(tls.ca_cert),
               "--token-file", str(token_file)]
        show_command(cmd)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPIRO_")}
        deploy = subprocess.run(cmd, cwd=bed.REPO_ROOT, stdin=subprocess.DEVNULL, env=env)
        status = deploy.returncode

        heading(f"What the minion has now: saltenv {PROJECT}/{DEPLOYMENT}")
        cmd = [salt_bin("salt-call"), "-c", str(paths["minion_conf"]), "cp.list_master",
               f"saltenv={PROJECT}/{DEPLOYMENT}"]
        show_command(cmd)
        listing = run_quiet(cmd)
        print((listing.stdout or listing.stderr).rstrip(), flush=True)
        written = output_dir / PROJECT / DEPLOYMENT / "hello.txt"
        print(flush=True)
        show_command(["cat", str(written)])
        if written.is_file():
            print(written.read_text().rstrip(), flush=True)
        else:
            print(f"(no {written}: the highstate did not write it)", flush=True)
            status = status or 1
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr, flush=True)
        status = 130
    except (BedError, subprocess.TimeoutExpired, RuntimeError) as exc:
        print(f"\ndemo: error: {exc}", file=sys.stderr, flush=True)
        for key in ("master_log", "minion_log"):
            if key in paths:
                print(f"--- {paths[key]} (tail) ---\n{_tail(paths[key])}", file=sys.stderr)
        for console in sorted(base.glob("*.console.log")):
            print(f"--- {console.name} (tail) ---\n{_tail(console)}", file=sys.stderr)
        status = 1
    finally:
        # Keep Ctrl-C (or SIGTERM, SIGHUP) from interrupting the clean-up itself.
        previous = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            heading("Stopping salt-master and salt-minion")
            stopped, survivors = daemons.stop()
            for line in stopped:
                note(line)
            if survivors:
                print("demo: error: still running: " + ", ".join(survivors), file=sys.stderr)
                status = status or 1
            if keep:
                note(f"kept {base}")
            else:
                shutil.rmtree(base, ignore_errors=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if status == 0:
        verdict = "succeeded"
    elif status == 130:
        verdict = "interrupted"
    else:
        verdict = f"failed (exit status {status})"
    left = "nothing left running" if not survivors else "SOME PROCESSES ARE STILL RUNNING"
    heading(f"Demo {verdict} in {time.monotonic() - started:.0f}s; {left}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.saltbed.demo",
                                     description="Deploy examples/hello through a throwaway "
                                                 "Salt master + minion + SpiroFS on 127.0.0.1.")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (configs, logs) for a look afterwards")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    return demo(keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
