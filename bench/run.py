#!/usr/bin/env python3
"""spiro-deploy performance benchmark: one command, one table.

    .venv/bin/python bench/run.py            # full run: 1 GiB artifact, 50,000 files, 3 runs
    .venv/bin/python bench/run.py --quick    # small sizes, 1 run (a couple of minutes)
    .venv/bin/python bench/run.py --runs 5 --sizes 256M,1G --big

What it does, in one process that starts every measured command as a fresh
child and reads the kernel's accounting of that child: wall clock around it,
user+sys CPU from ``os.wait4``, and peak RSS (``ru_maxrss``) from GNU
``/usr/bin/time -f %M`` wrapped around the command.  (Our own ``wait4``
would report at least this harness's RSS: a forked child keeps the parent's
pages until it execs, and Linux carries that high-water mark across exec.)
A child's reaped descendants, such as ``git archive``, count too.

1. Generates its inputs deterministically under bench/work/inputs (fixed
   seeds; regenerated only when missing or when the parameters change):
   (a) a git project with a 1 GiB artifact (git-ignored ``dist/``), a
   ``_salt`` tree and ~300 source files; (b) a source tree of 50,000 small
   files; (c) a typical small project (~300 files, ~3.5 MB).
2. Installs spiro-deploy 0.4 from PyPI into bench/work/ref-venv.
3. Bundle build, per input: ``spiro-deploy --dry-run --output`` vs GNU
   ``tar --sort=name -cf`` of the same files vs 0.4's ``TarballBuilder``.
4. End to end on (a) and (c), against a real SpiroFS 0.3 server (salt-master
   with the test bed's shim, HTTPS: the plain-HTTP server stops at 100 MB),
   all with ``--no-highstate``: ``spiro-deploy`` (which streams the tar into
   the upload as it is built; also with ``--no-stream``, build then upload)
   vs ``curl -F bundle=@<the
   same bundle, prebuilt>`` (+ the GNU tar time) vs 0.4's CLI.  The server
   runs on the same 2 cores, so it is part of every figure alike.  Plus what
   a user sees over plain HTTP with a bundle over 100 MB.
5. The client alone: the same deploys of (a) to bench/sink_server.py (HTTPS,
   drops the body), with ``--json`` and with the progress bar on a pty too;
   and the progress display's own CPU cost, in-process (progress_cost.py).
   Part ``sink`` (``--only sink`` starts the sink alone, no salt-master):
   ours vs curl at each of ``--sink-sizes``, paired like the builds.
6. Peak RSS of building and deploying (to the sink) at several artifact
   sizes (flat?), and ``--help`` start-up, ours vs 0.4's.

Medians over --runs; the tools of one run are interleaved so that drift hits
all alike.  Builds are paired: ours and GNU tar run back to back, which one
first alternating, and their ratio is the median of the per-run ratios
(bench/measure.py: paired_ratio); deploys rotate, each run starting with the
next tool (no tool always follows the same one).  Before each measured run:
``sync`` (dirty pages of the previous run are not flushed on the next one's
clock) and, for deploys, the previous
deployment is removed on the server so every deploy does the same work.
Inputs are in the page cache for everyone (written just before or read once).

Parts: inputs.py (the generated inputs), tools.py (the commands compared),
measure.py (one child's wall, CPU and RSS), report.py (the tables); this
file runs the sections.  Prints a markdown report and writes it to bench/results.md (and the raw
samples to bench/work/results.json).  Big generated files are deleted at the
end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, INPUTS, LOGS, OUT, PROJECT, REPO, WORK, GiB, fmt_size, human, parse_size  # noqa: E402
from inputs import Scenario, make_inputs, tree_stats  # noqa: E402
from measure import Stat, _tail, paired_order, rotated, run_measured, sync  # noqa: E402
from report import render  # noqa: E402
from tools import build_cmds, check_tar, ensure_ref_venv, install_ours, ours_bin, venv_bin  # noqa: E402


@dataclass
class Target:
    """Where deploys go: the real SpiroFS, or the sink (reads and drops the body)."""

    name: str
    url: str
    ca_cert: Path
    token_file: Path
    token: str
    header_file: Path
    deploy_dir: Callable[[str], Path] | None = None


class Bench:
    def __init__(self, cfg):
        self.cfg = cfg
        self.stats: dict[str, dict[str, Stat]] = {}
        self.notes: list[str] = []
        self.ref_bin: Path | None = None
        self.server = None
        self.server_skip: str | None = None
        self.targets: dict = {}
        self.prebuilt_size: dict = {}

    def stat(self, section: str, key: str, label: str | None = None) -> Stat:
        return self.stats.setdefault(section, {}).setdefault(key, Stat(label or key))

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # -- bundle build -------------------------------------------------------
    def bench_build(self, sc: Scenario, runs: int) -> None:
        section = f"build-{sc.key}"
        for run in range(runs):
            for tool in paired_order(("ours", "tar"), ("0.4",), run):
                if tool == "0.4" and self.ref_bin is None:
                    continue
                out = OUT / f"{section}-{tool.replace('.', '')}.tar"
                cmds = build_cmds(sc, out, self.ref_bin)
                out.unlink(missing_ok=True)
                sync()
                sample = run_measured(cmds[tool], cwd=sc.root, log=LOGS / f"{section}-{tool}.log",
                                      check=check_tar(out, sc.size, sc.files))
                self.stat(section, tool).samples.append(sample)
                self.log(f"build {sc.key} {tool:5} run {run + 1}: {sample.wall:.2f}s "
                         f"cpu {sample.cpu:.2f}s rss {sample.rss_kib / 1024:.0f} MiB"
                         + (f"  FAILED {sample.error}" if sample.error else "")
                         + (f"  WARNING {sample.warning}" if sample.warning else ""))
                out.unlink(missing_ok=True)
        if sc.key == "a":
            # Reference: hashing the artifact alone, once (OpenSSL's sha256, the
            # same code as Python's hashlib; coreutils' sha256sum is slower).
            hasher = (["openssl", "dgst", "-sha256"] if shutil.which("openssl")
                      else ["sha256sum"])
            for _ in range(runs):
                sync()
                sample = run_measured(hasher + sc.artifacts, cwd=sc.root,
                                      log=LOGS / f"{section}-sha256.log")
                self.stat(section, "sha256").samples.append(sample)

    # -- memory vs size -----------------------------------------------------
    def bench_sizes(self, sc: Scenario) -> None:
        """Peak RSS of ours (build, and deploy to the sink) and 0.4 (build) by artifact size."""
        for size in self.cfg.sizes:
            art = f"dist/app-{fmt_size(size)}.bin"
            key = fmt_size(size)
            out = OUT / f"size-{key}.tar"
            for tool in ("ours", "0.4"):
                if tool == "0.4" and (self.ref_bin is None or size > 2 * GiB):
                    continue
                if size == self.cfg.artifact_size and self.stats.get("build-a", {}).get(tool):
                    self.stats.setdefault("size-build", {})[f"{tool}-{key}"] = self.stats["build-a"][tool]
                    continue
                cmds = build_cmds(sc, out, self.ref_bin, artifacts=[art])
                out.unlink(missing_ok=True)
                sync()
                sample = run_measured(cmds[tool], cwd=sc.root, log=LOGS / f"size-{tool}-{key}.log",
                                      check=check_tar(out, size))
                self.stat("size-build", f"{tool}-{key}").samples.append(sample)
                self.log(f"size {key} build {tool}: rss {sample.rss_kib / 1024:.0f} MiB"
                         + (f"  FAILED {sample.error}" if sample.error else ""))
                out.unlink(missing_ok=True)
            target = self.targets.get("sink")
            if target is None:
                continue
            if size == self.cfg.artifact_size and self.stats.get("sink-a", {}).get("ours"):
                self.stats.setdefault("size-deploy", {})[f"ours-{key}"] = self.stats["sink-a"]["ours"]
                continue
            cmd = self.deploy_cmds(sc, target, "size", artifacts=[art])["ours"]
            sample = run_measured(cmd, cwd=sc.root, log=LOGS / f"size-deploy-{key}.log")
            self.stat("size-deploy", f"ours-{key}").samples.append(sample)
            self.log(f"size {key} deploy ours (sink): {sample.wall:.2f}s "
                     f"rss {sample.rss_kib / 1024:.0f} MiB"
                     + (f"  FAILED {sample.error}" if sample.error else ""))

    # -- servers ------------------------------------------------------------
    def start_servers(self) -> None:
        """The real SpiroFS (salt-master + spirofs 0.3) and the sink, both HTTPS."""
        self.targets: dict[str, Target] = {}
        if self.cfg.no_e2e:
            self.server_skip = "--no-e2e given"
            return
        tls_dir = None
        try:
            from spiroserver import SpiroServer

            self.log("starting SpiroFS (salt-master + spirofs 0.3) on 127.0.0.1 ...")
            srv = self.server = SpiroServer(WORK / "server", venv_bin()).start()
            header = WORK / "server" / "auth-header"
            header.write_text(f"Authorization: Bearer {srv.token}\n")
            os.chmod(header, 0o600)
            self.targets["spirofs"] = Target(
                "spirofs", srv.https_url, srv.ca_cert, srv.token_file, srv.token, header,
                deploy_dir=lambda dep: srv.deploy_dir(PROJECT, dep))
            tls_dir = srv.dir / "tls"
            self.log(f"SpiroFS up: {srv.https_url}")
        except Exception as exc:  # noqa: BLE001 - any failure means: no e2e figures
            self.server = None
            self.server_skip = f"no server ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            self.log(f"skipped end-to-end against SpiroFS: {self.server_skip}")
        try:
            self.start_sink(tls_dir)
        except Exception as exc:  # noqa: BLE001
            self.sink_skip = f"no sink server ({type(exc).__name__}: {exc})"
            self.log(f"skipped the client-only measurements: {self.sink_skip}")

    def start_sink(self, tls_dir: Path | None) -> None:
        if tls_dir is None:
            sys.path.insert(0, str(REPO / "tests"))
            from saltbed import bed

            tls_dir = WORK / "sink-tls"
            bed.make_tls_files(tls_dir)
        portfile = WORK / "sink.port"
        portfile.unlink(missing_ok=True)
        self.sink = subprocess.Popen(
            [str(venv_bin() / "python"), str(BENCH / "sink_server.py"), str(portfile),
             str(tls_dir / "server.pem"), str(tls_dir / "server.key")],
            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not (portfile.exists() and portfile.read_text().strip()):
            if time.monotonic() > deadline or self.sink.poll() is not None:
                raise RuntimeError("the sink server did not start")
            time.sleep(0.05)
        url = f"https://127.0.0.1:{portfile.read_text().strip()}/"
        srv = self.server
        if srv is not None:
            token, token_file, header = srv.token, srv.token_file, WORK / "server" / "auth-header"
        else:
            sys.path.insert(0, str(REPO))
            from tests.support import make_token

            token = make_token()
            token_file = WORK / "sink-token"
            token_file.write_text(token + "\n")
            header = WORK / "sink-header"
            header.write_text(f"Authorization: Bearer {token}\n")
        self.targets["sink"] = Target("sink", url, tls_dir / "ca.pem", token_file, token, header)
        self.log(f"sink server up: {url}")

    def stop_servers(self) -> None:
        if getattr(self, "sink", None) is not None and self.sink.poll() is None:
            os.killpg(self.sink.pid, signal.SIGTERM)
            self.sink.wait(10)
        if self.server is not None:
            self.server.stop()

    # -- end to end ---------------------------------------------------------
    def deploy_cmds(self, sc: Scenario, target: Target, dep: str,
                    artifacts: list[str] | None = None,
                    prebuilt: Path | None = None) -> dict[str, list[str]]:
        artifacts = sc.artifacts if artifacts is None else artifacts
        arts = [x for a in artifacts for x in ("--artifact", a)]
        # --no-history: the history store's copy of the bundle is a feature's
        # cost, not the deploy's; the sink section measures it on its own ("ours, history on").
        base = ours_bin() + ["-C", str(sc.root), "--no-highstate", "--no-history", "--server", target.url,
                             "--ssl-cert", str(target.ca_cert), "--token-file",
                             str(target.token_file), "--include-source", sc.source, *arts]
        cmds = {
            "ours": base + ["--no-progress", PROJECT, dep],
            "ours --no-stream": base + ["--no-progress", "--no-stream", PROJECT, dep],
            "ours --json": base + ["--json", PROJECT, dep],
            "ours, progress bar on a tty": base + [PROJECT, dep],
            "ours, history on": [a for a in base if a != "--no-history"]
            + ["--no-progress", "--history-dir", str(WORK / "history"), PROJECT, dep],
        }
        if prebuilt is not None:
            cmds["curl"] = ["curl", "-sS", "--no-buffer", "--cacert", str(target.ca_cert),
                            "-H", f"@{target.header_file}", "-F", f"project={PROJECT}",
                            "-F", f"deployment={dep}",
                            "-F", f"bundle=@{prebuilt};type=application/x-tar", target.url]
        if self.ref_bin is not None:
            cmds["0.4"] = [str(self.ref_bin / "spiro-deploy"), PROJECT, dep, "--no-highstate",
                           "--server", target.url, "--ssl-cert", str(target.ca_cert),
                           "--include-source", sc.source, *arts]
        return cmds

    def reset_deployment(self, target: Target, dep: str) -> None:
        if target.deploy_dir is not None:
            shutil.rmtree(target.deploy_dir(dep), ignore_errors=True)
        sync()

    def check_deployed(self, target: Target, dep: str, min_size: int, curl: bool = False):
        def check(rc: int, text: str) -> str | None:
            if curl and ("event: deploy-bundle" not in text or "event: exception" in text):
                return f"FATAL: curl: no clean deploy in the answer: {_tail(text)}"
            if "Error occurred on server" in text or "event: exception" in text:
                return f"FATAL: server error: {_tail(text)}"
            if target.deploy_dir is None:
                return None
            where = target.deploy_dir(dep)
            if not where.is_dir():
                return f"FATAL: nothing deployed at {where}: {_tail(text)}"
            _, size = tree_stats(where, ["."])
            if size < min_size:
                return f"the server deployed only {size} of the {min_size} bytes"
            return None
        return check

    def bench_e2e(self, sc: Scenario, runs: int, target_name: str, tools: list[str]) -> None:
        """Deploys of ``sc`` to a target: ``spirofs`` (the real server) or ``sink``."""
        section = f"{'deploy' if target_name == 'spirofs' else 'sink'}-{sc.key}"
        target = self.targets.get(target_name)
        if target is None:
            self.stat(section, "ours").skipped = (self.server_skip if target_name == "spirofs"
                                                  else getattr(self, "sink_skip", "not run"))
            return
        prebuilt = OUT / f"prebuilt-{sc.key}.tar"
        if not prebuilt.exists():
            build = build_cmds(sc, prebuilt, None)["ours"]
            subprocess.run(build, cwd=sc.root, check=True, stdout=subprocess.DEVNULL)
        self.prebuilt_size[sc.key] = prebuilt.stat().st_size
        dep = f"e2e-{sc.key}"
        cmds = self.deploy_cmds(sc, target, dep, prebuilt=prebuilt)
        pair = ("ours", "curl") if target_name == "sink" else None
        for run in range(runs):
            # To the sink, ours and curl back to back (paired ratio); the rest rotate.
            order = (paired_order(pair, tuple(rotated([t for t in tools if t not in pair], run)), run)
                     if pair else rotated(tools, run))
            for tool in order:
                if tool not in cmds:
                    continue
                env = dict(os.environ)
                if tool == "0.4":
                    env["SPIRO_TOKEN"] = target.token
                self.reset_deployment(target, dep)
                sample = run_measured(cmds[tool], cwd=sc.root, env=env,
                                      log=LOGS / f"{section}-{tool.split(',')[0].replace(' ', '')}.log",
                                      tty=tool.startswith("ours, progress"),
                                      check=self.check_deployed(target, dep, sc.size,
                                                                curl=tool == "curl"))
                self.stat(section, tool).samples.append(sample)
                self.log(f"{section} {tool:12} run {run + 1}: {sample.wall:.2f}s "
                         f"cpu {sample.cpu:.2f}s rss {sample.rss_kib / 1024:.0f} MiB"
                         + (f"  FAILED {sample.error}" if sample.error else "")
                         + (f"  WARNING {sample.warning}" if sample.warning else ""))
        self.reset_deployment(target, dep)

    def bench_sink_sizes(self, sc: Scenario, runs: int) -> None:
        """The client alone at several bundle sizes: ours and curl to the sink, paired.

        Each run measures ours (streaming, --no-progress) and curl of the same
        bundle prebuilt back to back, which one first alternating; the report
        gives the median of the per-run ratios, of wall and of CPU.
        """
        target = self.targets.get("sink")
        for size in self.cfg.sink_sizes:
            key = fmt_size(size)
            section = f"sink-size-{key}"
            if target is None:
                self.stat(section, "ours").skipped = getattr(self, "sink_skip", "no sink server")
                continue
            art = f"dist/app-{key}.bin"
            prebuilt = OUT / f"prebuilt-sink-{key}.tar"
            if not prebuilt.exists():
                build = build_cmds(sc, prebuilt, None, artifacts=[art])["ours"]
                subprocess.run(build, cwd=sc.root, check=True, stdout=subprocess.DEVNULL)
            self.prebuilt_size[section] = prebuilt.stat().st_size
            cmds = self.deploy_cmds(sc, target, f"sink-{key}", artifacts=[art], prebuilt=prebuilt)
            for run in range(runs):
                for tool in paired_order(("ours", "curl"), (), run):
                    sync()
                    sample = run_measured(cmds[tool], cwd=sc.root,
                                          log=LOGS / f"{section}-{tool}.log",
                                          check=self.check_deployed(target, "x", 0,
                                                                    curl=tool == "curl"))
                    self.stat(section, tool).samples.append(sample)
                    self.log(f"{section} {tool:5} run {run + 1}: {sample.wall:.2f}s "
                             f"cpu {sample.cpu:.2f}s rss {sample.rss_kib / 1024:.0f} MiB"
                             + (f"  FAILED {sample.error}" if sample.error else ""))
            prebuilt.unlink(missing_ok=True)

    def bench_http_limit(self, sc: Scenario) -> None:
        """What a user sees deploying a >100 MB bundle over plain HTTP."""
        if self.server is None or sc.size <= 100 * 1000 * 1000:
            return
        srv = self.server
        cmd = ours_bin() + ["-C", str(sc.root), "--no-highstate", "--no-history", "--no-progress",
                            "--insecure",
                            "--server", srv.http_url, "--token-file", str(srv.token_file),
                            "--include-source", sc.source,
                            *[x for a in sc.artifacts for x in ("--artifact", a)], PROJECT, "httplimit"]
        log = LOGS / "http-limit.log"
        sample = run_measured(cmd, cwd=sc.root, log=log, timeout=600)
        text = log.read_text(errors="replace")
        msg = [line for line in text.splitlines() if "error" in line.lower()]
        self.http_limit = (sample, msg[-1] if msg else _tail(text))
        self.log(f"plain HTTP > 100 MB: exit {sample.rc} in {sample.wall:.1f}s: {self.http_limit[1]}")

    def bench_progress(self, size: int) -> None:
        """The progress bar's and --json's own cost for a bundle of ``size`` (in-process)."""
        proc = subprocess.run([str(venv_bin() / "python"), str(BENCH / "progress_cost.py"),
                               str(size)], capture_output=True, text=True, cwd=REPO)
        try:
            self.progress_cost = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.notes.append(f"bench/progress_cost.py failed: {_tail(proc.stderr)}")

    # -- start-up -----------------------------------------------------------
    def bench_startup(self, runs: int) -> None:
        python = Path(ours_bin()[0]).parent / "python"  # the interpreter ours runs on
        if not python.exists():
            python = venv_bin() / "python"
        cmds = {"ours": ours_bin() + ["--help"],
                "python -c pass (floor)": [str(python), "-c", "pass"]}
        if self.ref_bin is not None:
            cmds["0.4"] = [str(self.ref_bin / "spiro-deploy"), "--help"]
        for cmd in cmds.values():
            run_measured(cmd, log=LOGS / "startup-warm.log")  # warm the page cache / pyc
        for _ in range(runs):
            for name, cmd in cmds.items():
                self.stat("startup", name).samples.append(
                    run_measured(cmd, log=LOGS / f"startup-{name.split()[0]}.log"))


# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small and fast: 128 MiB artifact, 5,000 files, 1 run")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 3; --quick 1)")
    parser.add_argument("--sizes", help="artifact sizes for the RSS-by-size table "
                                        "(default 256M,1G; --quick 32M,128M)")
    parser.add_argument("--artifact-size", help="artifact of input (a) (default 1G; --quick 128M)")
    parser.add_argument("--files", type=int, help="files of input (b) (default 50000; --quick 5000)")
    parser.add_argument("--big", action="store_true", help="add 4G to the sizes (needs ~10 GB disk)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end deploys")
    parser.add_argument("--only", help="comma list of parts: build,e2e,sink,sizes,startup "
                                       "(default all; sink: the client alone against the sink "
                                       "server at --sink-sizes, no SpiroFS)")
    parser.add_argument("--sink-sizes", help="artifact sizes deployed to the sink, paired with "
                                             "curl (default 128M,1G; --quick 128M)")
    parser.add_argument("--keep", action="store_true", help="keep generated inputs and outputs")
    parser.add_argument("--ours-src", type=Path, help="measure spiro-deploy built from this "
                                                      "checkout instead of this one (a before/after "
                                                      "comparison with the same harness)")
    cfg = parser.parse_args(argv)
    cfg.runs = cfg.runs or (1 if cfg.quick else 3)
    cfg.artifact_size = parse_size(cfg.artifact_size or ("128M" if cfg.quick else "1G"))
    cfg.many_files = cfg.files or (5000 if cfg.quick else 50000)
    default_sizes = "32M,128M" if cfg.quick else "256M,1G"
    cfg.sizes = sorted({parse_size(s) for s in (cfg.sizes or default_sizes).split(",")}
                       | ({4 * GiB} if cfg.big else set()))
    cfg.sink_sizes = sorted({parse_size(s) for s in
                             (cfg.sink_sizes or ("128M" if cfg.quick else "128M,1G")).split(",")})
    parts = set((cfg.only or "build,e2e,sink,sizes,startup").split(","))

    need = (cfg.artifact_size + sum(cfg.sizes) + sum(cfg.sink_sizes)) * 4 + 2 * GiB
    free = shutil.disk_usage(REPO).free
    if free < need:
        print(f"bench: needs about {human(need)} free disk, {human(free)} free", file=sys.stderr)
        return 2

    # SIGTERM takes the same path as Ctrl-C: the finally below stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    for d in (OUT, LOGS):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    sys.path.insert(0, str(BENCH))
    bench = Bench(cfg)
    bench.log(f"generating inputs under {INPUTS} ...")
    scenarios = make_inputs(cfg)
    for sc in scenarios.values():
        bench.log(f"  {sc.title}: {sc.files:,} files, {human(sc.size)}")
    bench.log(f"installing spiro-deploy from {cfg.ours_src or 'this checkout'} into its own venv ...")
    note = install_ours(cfg.ours_src)
    if note:
        bench.notes.append(note)
    if cfg.ours_src:
        bench.notes.append(f"\"ours\" is spiro-deploy built from {cfg.ours_src}, not this checkout")
    bench.log(f"  measuring {' '.join(ours_bin())}")
    try:
        bench.ref_bin = ensure_ref_venv()
    except (subprocess.CalledProcessError, OSError) as exc:
        bench.notes.append(f"spiro-deploy 0.4 could not be installed from PyPI ({exc}): no 0.4 figures")
    try:
        if "build" in parts:
            for sc in scenarios.values():
                bench.bench_build(sc, cfg.runs)
        if "e2e" in parts or "sizes" in parts:
            bench.start_servers()
        elif "sink" in parts:  # the sink alone: no salt-master to start
            try:
                bench.start_sink(None)
            except Exception as exc:  # noqa: BLE001
                bench.sink_skip = f"no sink server ({type(exc).__name__}: {exc})"
        if "e2e" in parts:
            bench.bench_e2e(scenarios["a"], cfg.runs, "spirofs",
                            ["ours", "ours --no-stream", "curl", "0.4"])
            bench.bench_e2e(scenarios["c"], cfg.runs, "spirofs", ["ours", "curl", "0.4"])
            bench.bench_e2e(scenarios["a"], cfg.runs, "sink",
                            ["ours", "ours --no-stream", "ours --json",
                             "ours, progress bar on a tty", "ours, history on", "curl", "0.4"])
            bench.bench_http_limit(scenarios["a"])
            bench.bench_progress(bench.prebuilt_size.get("a") or scenarios["a"].size)
        if "sink" in parts:
            bench.bench_sink_sizes(scenarios["a"], cfg.runs)
        if "sizes" in parts:
            bench.bench_sizes(scenarios["a"])
        if "startup" in parts:
            bench.bench_startup(max(10, cfg.runs * 5))
    finally:
        bench.stop_servers()
        if not cfg.keep:
            shutil.rmtree(OUT, ignore_errors=True)
            shutil.rmtree(WORK / "server", ignore_errors=True)
            shutil.rmtree(WORK / "history", ignore_errors=True)
            for p in (INPUTS / "a-artifact" / "dist").glob("*.bin"):
                p.unlink()
            for p in INPUTS.glob("b-files-*"):
                shutil.rmtree(p, ignore_errors=True)
    report = render(bench, scenarios, cfg, time.monotonic() - started)
    print(report)
    (BENCH / "results.md").write_text(report + "\n")
    raw = {section: {k: {"label": st.label, "skipped": st.skipped,
                         "samples": [asdict(s) for s in st.samples]}
                     for k, st in stats.items()}
           for section, stats in bench.stats.items()}
    (WORK / "results.json").write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
