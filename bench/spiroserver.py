"""A real SpiroFS server (salt-master + spirofs 0.3) for the benchmark, outside pytest.

Reuses the test bed's building blocks (tests/saltbed/bed.py and install.py:
the spirofs install, the compatibility shim, TLS files, the master options)
but starts a bare ``salt-master`` process itself: the benchmark only deploys
with ``--no-highstate``, so no minion is needed.

    with SpiroServer(workdir) as srv:
        srv.https_url, srv.http_url, srv.ca_cert, srv.token_file, srv.token
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from saltbed import bed  # noqa: E402
from saltbed.install import ensure_spirofs  # noqa: E402

START_TIMEOUT = 60


class SpiroServer:
    def __init__(self, workdir: Path, venv_bin: Path | None = None):
        self.dir = Path(workdir)
        self.bin = Path(venv_bin or Path(sys.executable).parent)
        self.proc: subprocess.Popen | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> SpiroServer:
        shutil.rmtree(self.dir, ignore_errors=True)
        conf = self.dir / "conf"
        conf.mkdir(parents=True)
        pkg = ensure_spirofs()
        tls = bed.make_tls_files(self.dir / "tls")
        ports = set()
        while len(ports) < 4:
            ports.add(bed.free_port())
        http_port, https_port, publish_port, ret_port = sorted(ports)
        opts = bed.master_config(pkg, http_port, https_port, tls)
        import getpass
        opts.update({
            "id": "bench-master",
            "root_dir": str(self.dir),
            "pki_dir": str(self.dir / "pki"),
            "cachedir": str(self.dir / "cache"),
            "sock_dir": str(self.dir / "sock"),
            "pidfile": str(self.dir / "master.pid"),
            "log_file": str(self.dir / "master.log"),
            "log_level_logfile": "warning",
            "user": getpass.getuser(),
            "interface": "127.0.0.1",
            "publish_port": publish_port,
            "ret_port": ret_port,
            "open_mode": True,
            "worker_threads": 2,
            "file_roots": {"base": [str(self.dir / "roots")]},
            "pillar_roots": {"base": [str(self.dir / "pillar")]},
        })
        (self.dir / "roots").mkdir()
        (self.dir / "pillar").mkdir()
        import yaml
        (conf / "master").write_text(yaml.safe_dump(opts))
        self.conf = conf
        self.env = bed.shim_environ()
        self.env.pop("PYTHONSTARTUP", None)
        self.log = open(self.dir / "master.out", "wb")
        self.proc = subprocess.Popen(
            [str(self.bin / "salt-master"), "-c", str(conf), "-l", "warning"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            # The runner creates the macaroon key the engines read lazily.
            self.token = self.salt_run("spiro.issue_root_token")
            self.http_url = f"http://127.0.0.1:{http_port}/"
            self.https_url = f"https://127.0.0.1:{https_port}/"
            self.ca_cert = tls.ca_cert
            self.token_file = self.dir / "token"
            self.token_file.write_text(self.token + "\n")
            os.chmod(self.token_file, 0o600)
            bed.wait_for_http(self.http_url, START_TIMEOUT)
            bed.wait_for_http(self.https_url, START_TIMEOUT, verify=str(tls.ca_cert))
        except BaseException:
            self.stop()
            raise
        return self

    def salt_run(self, *args: str) -> str:
        proc = subprocess.run(
            [str(self.bin / "salt-run"), "-c", str(self.conf), "--out=txt", *args],
            env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )
        out = proc.stdout.strip()
        if proc.returncode != 0 or not out or any(c.isspace() for c in out):
            raise RuntimeError(f"salt-run {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stdout}{proc.stderr}\n{self.master_log()}")
        return out

    def deploy_dir(self, project: str, deployment: str) -> Path:
        return self.dir / "cache" / "spirofs" / project / deployment

    def master_log(self, lines: int = 40) -> str:
        text = ""
        for name in ("master.log", "master.out"):
            path = self.dir / name
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return text

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    work = REPO / "bench" / "work" / "server-try"
    with SpiroServer(work) as srv:
        print(srv.https_url, srv.http_url, srv.ca_cert, srv.token[:20])
        import subprocess as sp
        print(sp.run(["curl", "-sS", "--cacert", str(srv.ca_cert), "-H",
                      f"Authorization: Bearer {srv.token}", srv.https_url],
                     capture_output=True, text=True).stdout)
