#!/usr/bin/env python3
"""Measure the prototypes (proto_*.py) next to spiro-deploy, GNU tar and curl.

Evidence for the proposed fixes; not part of the benchmark's result table.
Uses the inputs bench/run.py generated (run it with --keep first) and the same
measuring (fresh child per run, GNU time for peak RSS, medians).

    .venv/bin/python bench/protos.py [--runs N] [--parts build-a,build-b,deploy,sink]

Writes bench/prototypes.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as B  # noqa: E402

PY = str(B.venv_bin() / "python")


def table(title: str, stats: dict, base: str, note: str = "") -> list[str]:
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| variant | wall s (median; min–max) | CPU s | peak RSS MiB | wall / " + base + " |",
              "| --- | ---: | ---: | ---: | ---: |"]
    ref = stats.get(base)
    for name, st in stats.items():
        if not st.ok:
            lines.append(f"| {name} | FAILED: {st.failed} | | | |")
            continue
        walls = [s.wall for s in st.ok]
        r = B.ratio(st.wall, ref.wall if ref else None)
        flag = f" ⚠ {st.warning}" if st.warning else ""
        lines.append(f"| {name}{flag} | {st.wall:.2f} ({min(walls):.2f}–{max(walls):.2f}) | "
                     f"{st.cpu:.2f} | {st.rss_mib:.0f} | {B.f2(r)}x |")
    return lines + [""]


def measure(cases: dict, runs: int, cwd: Path, check=None, before=None, tag="") -> dict:
    stats = {name: B.Stat(name) for name in cases}
    for r in range(runs):
        for name, (cmd, env) in cases.items():
            if before:
                before(name)
            B.sync()
            s = B.run_measured(cmd, cwd=cwd, env=env, log=B.LOGS / f"proto-{tag}-{len(name)}.log",
                               check=check(name) if check else None)
            stats[name].samples.append(s)
            print(f"[{tag}] {name}: {s.wall:.2f}s cpu {s.cpu:.2f} rss {s.rss_kib // 1024} MiB"
                  + (f" FAILED {s.error}" if s.error else "")
                  + (f" WARN {s.warning}" if s.warning else ""), file=sys.stderr, flush=True)
    return stats


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--parts", default="build-a,build-b,sink,deploy")
    cfg = ap.parse_args()
    parts = set(cfg.parts.split(","))
    B.OUT.mkdir(parents=True, exist_ok=True)
    B.LOGS.mkdir(parents=True, exist_ok=True)
    ours = B.ours_bin()
    a = B.INPUTS / "a-artifact"
    art = "dist/app-1G.bin"
    b = max(B.INPUTS.glob("b-files-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)
    out = B.OUT / "proto.tar"
    report = ["# Prototypes: evidence for the proposed fixes", "",
              f"`python bench/protos.py --runs {cfg.runs}`; medians of {cfg.runs} runs, "
              f"interleaved. Load average at start: {B._loadavg()}.", ""]

    def rm_out(_name):
        out.unlink(missing_ok=True)

    if "build-a" in parts and (a / art).exists():
        common = ["-C", str(a), "--dry-run", "--output", str(out), "--no-progress",
                  "--include-source", "git", "--artifact", art, "bench", "a"]
        cases = {
            "spiro-deploy (as is)": (ours + common, None),
            "proto_build.py: no sha256 of the tar stream": (
                [PY, str(B.BENCH / "proto_build.py")] + common, None),
            "GNU tar --sort=name -cf": (
                ["tar", "--sort=name", "-cf", str(out), "-C", str(a), "_salt", "src", art], None),
        }
        st = measure(cases, cfg.runs, a, check=lambda n: B.check_tar(out, 1 << 30),
                     before=rm_out, tag="build-a")
        report += table("Build (a), 1 GiB artifact", st, "GNU tar --sort=name -cf")

    if "build-b" in parts and b is not None:
        cases = {
            "spiro-deploy (as is)": (ours + ["-C", str(b), "--dry-run", "--output", str(out),
                                             "--no-progress", "--include-source", "fs",
                                             "bench", "b"], None),
            "proto_manyfiles.py serial (floor of this design in Python)": (
                [PY, str(B.BENCH / "proto_manyfiles.py"), "serial", str(out), str(b)], None),
            "proto_manyfiles.py, 2 reader threads": (
                [PY, str(B.BENCH / "proto_manyfiles.py"), "threads", str(out), str(b)], None),
            "GNU tar --sort=name -cf": (
                ["tar", "--sort=name", "-cf", str(out), "-C", str(b), "_salt", "src"], None),
        }
        st = measure(cases, cfg.runs, b, check=lambda n: B.check_tar(out, 50 << 20, 50000),
                     before=rm_out, tag="build-b")
        report += table(f"Build (b), {b.name}", st, "GNU tar --sort=name -cf")

    if ("sink" in parts or "deploy" in parts) and (a / art).exists():
        bench = B.Bench(argparse.Namespace(no_e2e=False))
        bench.start_servers()
        prebuilt = B.OUT / "proto-prebuilt.tar"
        try:
            subprocess.run(ours + ["-C", str(a), "--dry-run", "--output", str(prebuilt),
                                   "--include-source", "git", "--artifact", art, "bench", "a"],
                           check=True, stdout=subprocess.DEVNULL)
            for part, tname in (("sink", "sink"), ("deploy", "spirofs")):
                target = bench.targets.get(tname)
                if part not in parts:
                    continue
                if target is None:
                    report += [f"{part}: skipped ({bench.server_skip})", ""]
                    continue
                dep = "proto"
                base = ["--no-highstate", "--server", target.url, "--ssl-cert",
                        str(target.ca_cert), "--token-file", str(target.token_file),
                        "--include-source", "git", "--artifact", art]
                cases = {
                    "spiro-deploy (as is)": (ours + ["-C", str(a), "--no-progress"] + base
                                             + ["bench", dep], None),
                    "proto_upload_fix.py: bundle not handed to toolbelt with getvalue()": (
                        [PY, str(B.BENCH / "proto_upload_fix.py"), "-C", str(a),
                         "--no-progress"] + base + ["bench", dep], None),
                    "proto_stream.py: tar streamed into a chunked POST as it is built": (
                        [PY, str(B.BENCH / "proto_stream.py"), "-C", str(a)] + base
                        + ["bench", dep], None),
                    "proto_upload_lean.py: prebuilt bundle, lean multipart body (no toolbelt)": (
                        [PY, str(B.BENCH / "proto_upload_lean.py"), "lean", target.url,
                         str(target.ca_cert), str(target.token_file), str(prebuilt), "bench",
                         dep], None),
                    "proto_upload_lean.py: prebuilt bundle, toolbelt MultipartEncoder": (
                        [PY, str(B.BENCH / "proto_upload_lean.py"), "toolbelt", target.url,
                         str(target.ca_cert), str(target.token_file), str(prebuilt), "bench",
                         dep], None),
                    "curl -F bundle=@prebuilt.tar": (
                        ["curl", "-sS", "--cacert", str(target.ca_cert), "-H",
                         f"@{target.header_file}", "-F", "project=bench", "-F",
                         f"deployment={dep}", "-F",
                         f"bundle=@{prebuilt};type=application/x-tar", target.url], None),
                }

                def before(_name, _t=target):
                    bench.reset_deployment(_t, dep)

                def check(name, _t=target):
                    return bench.check_deployed(_t, dep, 1 << 30, curl=name.startswith("curl"))

                st = measure(cases, cfg.runs, a, check=check, before=before, tag=part)
                title = ("Deploy (a) to the sink server (HTTPS; reads and drops the body: "
                         "the client's own cost)" if part == "sink" else
                         "Deploy (a) to the real SpiroFS 0.3 over HTTPS, --no-highstate")
                report += table(title, st, "curl -F bundle=@prebuilt.tar")
        finally:
            bench.stop_servers()
            prebuilt.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    report.append(f"Load average at end: {B._loadavg()}.")
    text = "\n".join(report) + "\n"
    print(text)
    (B.BENCH / "prototypes.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
