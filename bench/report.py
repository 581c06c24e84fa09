"""The benchmark's markdown report: one table per part, ratios against the baselines."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common import REPO, TIME_BIN, WORK, KiB, fmt_size, human
from inputs import Scenario
from measure import Stat, paired_ratio, paired_ratios
from tools import venv_bin

if TYPE_CHECKING:
    from run import Bench


def machine_info() -> list[tuple[str, str]]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = human(int(line.split()[1]) * KiB)
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = ", ".join(f for f in ("sha_ni", "avx2", "avx512f", "aes") if f" {f}" in text)
    except OSError:
        pass
    disk = shutil.disk_usage(WORK)
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(WORK)], capture_output=True,
                            text=True).stdout.strip()

    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"

    ours_py = subprocess.run([str(venv_bin() / "python"), "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return [
        ("CPU", f"{model} ({os.cpu_count()} cores; {flags})"),
        ("memory", mem),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("python", f"{ours_py} (ours and 0.4's venv)"),
        ("disk", f"{fstype}, {human(disk.free)} free of {human(disk.total)} at {WORK}"),
        ("tools", f"{first_line(['tar', '--version'])}; {first_line(['curl', '--version']).split(' (')[0]}"),
        ("spiro-deploy", f"{commit} (working tree)"),
        ("load average", f"{LOAD_AT_START} at start, {_loadavg()} at end (1/5/15 min; "
                         "other work on the machine shows here)"),
    ]


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


LOAD_AT_START = _loadavg()


def f2(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def cpu_ratio(a, b) -> str:
    r = ratio(a and a.cpu, b and b.cpu)
    return "" if r is None else f"; CPU {r:.2f}x"


def verdict(value, goal):
    if value is None:
        return "n/a"
    return f"{value:.2f}x {'✅' if value <= goal else '❌'} (goal ≤ {goal}x)"


def render(bench: Bench, scenarios: dict[str, Scenario], cfg, elapsed: float) -> str:
    lines: list[str] = []
    warnings: list[str] = []
    add = lines.append
    cmdline = "python bench/run.py " + " ".join(sys.argv[1:])
    add(f"# spiro-deploy benchmark ({datetime.date.today().isoformat()})")
    add("")
    add(f"Command: `{cmdline.strip()}` — medians of {cfg.runs} run(s); wall and CPU (user+sys) "
        f"in seconds, peak RSS in MiB ("
        + ("GNU time's `%M`: the child's `ru_maxrss`, descendants included"
           if TIME_BIN else "`ru_maxrss` of the child from `wait4`, which includes the "
           "harness's own RSS copied by fork: figures below ~30 MiB are inflated")
        + "). "
        f"Took {elapsed / 60:.1f} min.")
    add("")
    add("| machine | |")
    add("| --- | --- |")
    for k, v in machine_info():
        add(f"| {k} | {v} |")
    add("")

    def row(label, st: Stat | None, *extra, spread: bool = False):
        if st is None:
            return f"| {label} | n/a | n/a | n/a | " + " | ".join(extra) + " |"
        if st.skipped:
            return f"| {label} | skipped: {st.skipped} | | | " + " | ".join(extra) + " |"
        if not st.ok:
            return f"| {label} | FAILED: {st.failed} | | | " + " | ".join(extra) + " |"
        flag = ""
        if st.warning:
            flag = f" ⚠{len(warnings) + 1}"
            warnings.append(f"{label}: {st.warning}")
        wall = f2(st.wall)
        if spread and len(st.ok) > 1:
            walls = [s.wall for s in st.ok]
            wall += f" ({min(walls):.2f}–{max(walls):.2f})"
        return (f"| {label}{flag} | {wall} | {f2(st.cpu)} | {f2(st.rss_mib, 0)} | "
                + " | ".join(extra) + " |")

    add("## Bundle build (`spiro-deploy --dry-run --output FILE`)")
    add("")
    goals = {"a": 1.15, "b": 1.5}  # (a): issue 17's goal
    for key, sc in scenarios.items():
        section = bench.stats.get(f"build-{key}", {})
        ours, tar, ref = section.get("ours"), section.get("tar"), section.get("0.4")
        add(f"### {sc.title}: {sc.files:,} files, {human(sc.size)}, source via `{sc.source}`")
        add("")
        add("| tool | wall s | CPU s | peak RSS MiB | ours / this (vs tar: median of paired runs) |")
        add("| --- | ---: | ---: | ---: | --- |")
        add(row("spiro-deploy (ours)", ours, ""))
        # Paired: the median of each run's ours/tar, both measured back to back.
        r_tar = paired_ratio(ours, tar)
        every = ", ".join(f"{r:.2f}" for r in paired_ratios(ours, tar))
        add(row("GNU tar --sort=name -cf", tar,
                (verdict(r_tar, goals[key]) if key in goals else f2(r_tar) + "x")
                + f" [{every}]; CPU {f2(paired_ratio(ours, tar, 'cpu'))}x (paired)"))
        add(row("spiro-deploy 0.4 TarballBuilder", ref,
                f2(ratio(ours and ours.wall, ref and ref.wall)) + "x" + cpu_ratio(ours, ref)))
        if "sha256" in section:
            add(row("sha256 of the artifact, once (`openssl dgst -sha256`; hashing alone)",
                    section["sha256"], f2(ratio(ours and ours.wall, section["sha256"].wall)) + "x"))
        add("")

    add("## End to end: deploy with `--no-highstate` to a real SpiroFS 0.3 over HTTPS")
    add("")
    add("The server (salt-master + spirofs engine, TLS, Python/Tornado) runs on the same "
        "2 cores; every figure includes it receiving, buffering, parsing and extracting the "
        "bundle, so these walls are noisy (min–max shown). HTTPS because SpiroFS 0.3 over "
        "plain HTTP refuses bodies over 100 MB (Tornado's default limit; see below); HTTPS "
        "allows 10 GiB. curl uploads the bundle spiro-deploy built (same bytes).")
    add("")

    def deploy_table(section_name: str, key: str, goals: bool, extra_rows: bool) -> None:
        section = bench.stats.get(section_name)
        if not section or (section.get("ours") and section["ours"].skipped):
            skip = section["ours"].skipped if section and section.get("ours") else None
            add(f"skipped: {skip or bench.server_skip or 'not run'}")
            add("")
            return
        ours, curl, ref = section.get("ours"), section.get("curl"), section.get("0.4")
        tar = bench.stats.get(f"build-{key}", {}).get("tar")
        add("| client | wall s (min–max) | CPU s | peak RSS MiB | ours / this |")
        add("| --- | ---: | ---: | ---: | --- |")
        ow = ours and ours.wall
        add(row("spiro-deploy (ours), --no-progress", ours, "", spread=True))
        if "ours --no-stream" in section:
            st = section["ours --no-stream"]
            add(row("spiro-deploy --no-stream (builds, then uploads)", st,
                    f2(ratio(ow, st.wall)) + "x" + cpu_ratio(ours, st), spread=True))
        if extra_rows:
            for label, shown in (("ours --json", "spiro-deploy --json"),
                                 ("ours, progress bar on a tty",
                                  "spiro-deploy, progress bar on a pty")):
                if label in section:
                    st = section[label]
                    cost = ratio(st.wall, ow)
                    add(row(shown, st, "" if cost is None else
                            f"costs {100 * (cost - 1):+.1f}% wall, "
                            f"{100 * (ratio(st.cpu, ours.cpu) - 1):+.1f}% CPU vs --no-progress "
                            f"{'✅' if cost <= 1.05 else '❌'} (goal < 5%)", spread=True))
        if extra_rows and "ours, history on" in section:
            st = section["ours, history on"]
            add(row("spiro-deploy, recording the deploy in its history (a copy of the bundle)",
                    st, f"{f2(ratio(st.wall, ow))}x wall, "
                        f"{f2(ratio(st.cpu, ours and ours.cpu))}x CPU of --no-history", spread=True))
        if section_name.startswith("sink-"):
            # Run back to back with ours (bench_e2e): the median of the per-run ratios.
            add(row("curl -F bundle=@prebuilt.tar", curl,
                    f"{f2(paired_ratio(ours, curl))}x (paired); "
                    f"CPU {f2(paired_ratio(ours, curl, 'cpu'))}x (paired)", spread=True))
        else:
            add(row("curl -F bundle=@prebuilt.tar", curl,
                    ((verdict(ratio(ow, curl and curl.wall), 1.05) + " (stretch)") if goals
                     else f2(ratio(ow, curl and curl.wall)) + "x") + cpu_ratio(ours, curl),
                    spread=True))
        if curl and curl.wall is not None and tar and tar.wall is not None:
            tc_wall, tc_cpu = tar.wall + curl.wall, tar.cpu + curl.cpu
            tc_rss = max(tar.med("rss_kib"), curl.med("rss_kib")) / 1024
            add(f"| GNU tar, then curl (sum of medians) | {f2(tc_wall)} | {f2(tc_cpu)} | "
                f"{f2(tc_rss, 0)} | "
                + (verdict(ratio(ow, tc_wall), 1.2) if goals else f2(ratio(ow, tc_wall)) + "x")
                + " |")
        add(row("spiro-deploy 0.4 CLI", ref, f2(ratio(ow, ref and ref.wall)) + "x"
                + cpu_ratio(ours, ref), spread=True))
        add("")

    for key in ("a", "c"):
        add(f"### {scenarios[key].title}"
            + (f" (bundle {human(bench.prebuilt_size[key])})" if key in bench.prebuilt_size else ""))
        add("")
        deploy_table(f"deploy-{key}", key, goals=key == "a", extra_rows=False)
    if getattr(bench, "http_limit", None):
        sample, message = bench.http_limit
        add(f"Plain HTTP with the bundle of (a) (over 100 MB): exit {sample.rc} after "
            f"{sample.wall:.1f}s: `{message.strip()}`")
        add("")

    add("## The client alone: deploy (a) to a sink server")
    add("")
    add("Same commands, but the server is `bench/sink_server.py`: HTTPS, reads the body and "
        "drops it, answers one `deploy-bundle` event (no multipart parsing, no extraction). "
        "What remains is the client's own cost (and the sink's TLS reads, the same for all).")
    add("")
    deploy_table("sink-a", "a", goals=False, extra_rows=True)
    pc = getattr(bench, "progress_cost", None)
    ours_sink = bench.stats.get("sink-a", {}).get("ours")
    if pc and ours_sink and ours_sink.cpu:
        bar = (pc["bar_ms"] + pc["import_ms"]) / 1000
        share = 100 * bar / ours_sink.cpu
        add(f"The walls above are too noisy to resolve 5%, so the display's own cost is also "
            f"measured in-process (`bench/progress_cost.py`): the {pc['calls']} progress "
            f"callbacks of this upload cost {pc['bar_ms']:.1f} ms CPU with the tqdm bar drawn "
            f"on a pty (+ {pc['import_ms']:.0f} ms to import tqdm, once) and "
            f"{pc['json_ms']:.1f} ms with `--json`: {share:.1f}% and "
            f"{100 * pc['json_ms'] / 1000 / ours_sink.cpu:.2f}% of the deploy's "
            f"{ours_sink.cpu:.2f} s CPU {'✅' if share < 5 else '❌'} (goal < 5%).")
        add("")

    sink_sizes = [fmt_size(s) for s in getattr(cfg, "sink_sizes", ())]
    if any(f"sink-size-{k}" in bench.stats for k in sink_sizes):
        add("## The client alone by bundle size: ours vs curl to the sink, paired")
        add("")
        add("Each run deploys with ours (streaming, `--no-progress`) and uploads the same "
            "bundle prebuilt with `curl -F`, back to back, which one first alternating; the "
            "ratios are the medians of the per-run ratios (all per-run ratios in brackets). "
            "Goal: ours ≤ 1.5x curl.")
        add("")
        add("| bundle | ours wall s | ours CPU s | curl wall s | curl CPU s "
            "| ours / curl, wall (paired) | ours / curl, CPU (paired) |")
        add("| --- | ---: | ---: | ---: | ---: | --- | --- |")
        for k in sink_sizes:
            section = bench.stats.get(f"sink-size-{k}", {})
            ours, curl = section.get("ours"), section.get("curl")
            if ours is None or ours.skipped or not ours.ok or curl is None or not curl.ok:
                why = (ours.skipped or ours.failed) if ours is not None else "not run"
                add(f"| {k} | {why or (curl and curl.failed) or 'n/a'} | | | | | |")
                continue
            size = bench.prebuilt_size.get(f"sink-size-{k}")
            cells = []
            for attr in ("wall", "cpu"):
                every = ", ".join(f"{r:.2f}" for r in paired_ratios(ours, curl, attr))
                cells.append(f"{verdict(paired_ratio(ours, curl, attr), 1.5)} [{every}]")
            add(f"| {human(size) if size else k} | {f2(ours.wall)} | {f2(ours.cpu)} "
                f"| {f2(curl.wall)} | {f2(curl.cpu)} | {cells[0]} | {cells[1]} |")
        add("")

    add("## Peak RSS by artifact size (project (a))")
    add("")
    sizes = [fmt_size(s) for s in cfg.sizes]
    add("| | " + " | ".join(sizes) + " |")
    add("| --- | " + " | ".join("---:" for _ in sizes) + " |")
    for label, section, tool in (("spiro-deploy, build (`--dry-run --output`)", "size-build", "ours"),
                                 ("spiro-deploy, deploy (HTTPS, to the sink)", "size-deploy", "ours"),
                                 ("0.4, build (TarballBuilder)", "size-build", "0.4")):
        cells = []
        for s in sizes:
            st = bench.stats.get(section, {}).get(f"{tool}-{s}")
            if st is None:
                cells.append("skipped: no sink server" if section == "size-deploy"
                             and "sink" not in bench.targets else "n/a")
            elif not st.ok:
                cells.append("FAILED")
            else:
                cells.append(f"{st.rss_mib:.0f} MiB")
        add(f"| {label} | " + " | ".join(cells) + " |")
    add("")
    add("Goal: spiro-deploy ≤ 100 MiB at 1 GiB, built or deployed, and flat in the size.")
    add("")

    add("## `--help` start-up")
    add("")
    st = bench.stats.get("startup", {})
    add("| command | wall ms | CPU ms | peak RSS MiB | |")
    add("| --- | ---: | ---: | ---: | --- |")
    ours = st.get("ours")
    ref = st.get("0.4")
    for name, s in st.items():
        extra = ""
        if name == "0.4" and ours is not None:
            extra = verdict(ratio(ours.wall, s.wall), 1.0)
        shown = {"ours": "spiro-deploy --help", "0.4": "spiro-deploy 0.4 --help"}.get(name, name)
        add(f"| {shown} | {f2(s.wall and s.wall * 1000, 0)} | {f2(s.cpu and s.cpu * 1000, 0)} "
            f"| {f2(s.rss_mib, 0)} | {extra} |")
    add("")
    if warnings:
        add("## Warnings (figures kept, but something is wrong)")
        add("")
        for i, text in enumerate(warnings, 1):
            add(f"{i}. {text}")
        add("")
    if bench.notes:
        add("## Notes")
        add("")
        for note in bench.notes:
            add(f"- {note}")
        add("")
    return "\n".join(lines)
