#!/usr/bin/env python3
"""Compressed vs plain deploys over a shaped 100 Mbit/s link, against a real SpiroFS.

    sudo .venv/bin/python bench/netbench.py                 # 1 GiB artifact, 2 rounds
    sudo .venv/bin/python bench/netbench.py --size 256M --runs 3
    .venv/bin/python bench/netbench.py --codecs             # compressor table only (no root)

Needs root (network namespaces).  It makes two namespaces joined by a veth
pair, each end shaped with ``tc qdisc ... tbf rate 100mbit burst 32kbit
latency 400ms``: the client runs in one, the SpiroFS master (salt-master +
spirofs 0.3, HTTPS, bench/spiroserver.py) in the other.  Then, paired and
in rotating order in every round, it deploys each input with

* ``ours --compress``   spiro-deploy, gzip (the default compressor: ISA-L if installed)
* ``ours``              spiro-deploy, plain tar
* ``tar|gzip -1|curl``  GNU tar piped into gzip -1 and curl -F bundle=@-

over the shaped link and over loopback (client in the server's namespace,
127.0.0.1), all with ``--no-highstate``.  Measured per deploy: wall, the
client's CPU and peak RSS (GNU time), the master's peak RSS (the largest
``VmHWM`` among the master's processes, reset with ``clear_refs`` before each
deploy; the spiro engine's buffering is what peaks), and the bytes uploaded.

Inputs: (m) a project with an artifact of half JSON log lines and half
random bytes (1 MiB blocks, alternating; deterministic), (b) the 50,000-file
tree of bench/inputs.py (same seed and layout as bench/run.py's).
Writes bench/netbench-results.md (and the samples to bench/work/netbench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, PROJECT, WORK, MiB, fmt_size, human, parse_size  # noqa: E402
from inputs import TextPool, _stamp, _stamp_ok, tree_stats, write_salt_tree, write_source  # noqa: E402
from measure import _tail, run_measured, sync  # noqa: E402
from tools import ours_bin, venv_bin  # noqa: E402

NS_CLIENT, NS_SERVER = "spironb-cli", "spironb-srv"
DEV_CLIENT, DEV_SERVER = "spironb-c", "spironb-s"
IP_CLIENT, IP_SERVER = "10.201.0.1", "10.201.0.2"
SHAPE = "tbf rate 100mbit burst 32kbit latency 400ms"
TOOLS = ("ours --compress", "ours", "tar|gzip -1|curl")
RESULTS = BENCH / "netbench-results.md"
NBWORK = WORK / "netbench"


# -- the link ---------------------------------------------------------------------

def sh(*cmd: str, check: bool = True) -> None:
    subprocess.run(cmd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                   if not check else None)


def netns_up() -> None:
    netns_down()
    sh("ip", "netns", "add", NS_CLIENT)
    sh("ip", "netns", "add", NS_SERVER)
    sh("ip", "link", "add", DEV_CLIENT, "type", "veth", "peer", "name", DEV_SERVER)
    for ns, dev, ip in ((NS_CLIENT, DEV_CLIENT, IP_CLIENT), (NS_SERVER, DEV_SERVER, IP_SERVER)):
        sh("ip", "link", "set", dev, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", *SHAPE.split())


def netns_down() -> None:
    for ns in (NS_CLIENT, NS_SERVER):
        sh("ip", "netns", "del", ns, check=False)


# -- the inputs -------------------------------------------------------------------

def json_pool(seed: int, size: int = 8 * MiB) -> bytes:
    """JSON log lines: a vocabulary of made-up words, hosts, levels, numbers."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ne", "ra", "to", "shi", "ven", "dor", "al", "eth", "qu", "ber",
            "ix", "on", "pra", "sel", "tum", "ga", "wo"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(4000)]
    weights = [1 / (i + 1) for i in range(len(words))]  # Zipf-like, as in real text
    out, n, i = [], 0, 0
    while n < size:
        rec = {"id": i, "ts": f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
                              f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z",
               "level": rng.choice(["info", "info", "info", "debug", "warning", "error"]),
               "host": f"web{rng.randint(1, 40):02d}.example.com",
               "request_id": f"{rng.getrandbits(64):016x}",
               "msg": " ".join(rng.choices(words, weights, k=rng.randint(4, 16))),
               "latency_ms": round(rng.random() * 300, 2),
               "tags": rng.choices(words[:50], k=rng.randint(0, 3))}
        line = (json.dumps(rec) + "\n").encode()
        out.append(line)
        n += len(line)
        i += 1
    return b"".join(out)


def write_mixed(path: Path, size: int, seed: int) -> None:
    """Half JSON text, half random bytes, alternating 1 MiB blocks."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = json_pool(seed)
    rng = random.Random(seed + 1)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        for k in range(size // MiB):
            if k % 2 == 0:
                start = rng.randrange(0, len(pool) - MiB)
                handle.write(pool[start:start + MiB])
            else:
                handle.write(rng.randbytes(MiB))
    tmp.rename(path)


def make_inputs(size: int, files: int) -> dict[str, dict]:
    inputs = {}
    root = NBWORK / "mixed"
    params = {"v": 1, "seed": 7}
    if not _stamp_ok(root, params):
        subprocess.run(["rm", "-rf", str(root)], check=True)
        root.mkdir(parents=True)
        write_salt_tree(root, TextPool(7))
        _stamp(root, params)
    for old in (root / "dist").glob("data-*.bin"):
        if old.name != f"data-{fmt_size(size)}.bin":
            old.unlink()
    art = f"dist/data-{fmt_size(size)}.bin"
    write_mixed(root / art, size, seed=7)
    inputs["m"] = {"label": f"{human(size)} artifact, half JSON half random", "root": root,
                   "ours": ["--artifact", art], "tar": ["_salt", art]}
    if files:
        # The same tree as bench/run.py's (b) (same seed, layout and stamp).
        from common import INPUTS
        root = INPUTS / f"b-files-{files}"
        params = {"v": 1, "seed": 2, "files": files}
        if not _stamp_ok(root, params):
            subprocess.run(["rm", "-rf", str(root)], check=True)
            root.mkdir(parents=True)
            pool = TextPool(2)
            write_salt_tree(root, pool)
            write_source(root, pool, dirs=max(1, files // 1000), subdirs=20, per_dir=50,
                         lo=64, hi=2048)
            _stamp(root, params)
        inputs["b"] = {"label": f"{files:,} small files", "root": root,
                       "ours": ["--include-source", "fs"], "tar": ["_salt", "src"]}
    for inp in inputs.values():
        inp["files"], inp["size"] = tree_stats(inp["root"], inp["tar"])
        subprocess.run(["tar", "-cf", "/dev/null", "-C", str(inp["root"]), *inp["tar"]])
    return inputs


# -- the master's memory ------------------------------------------------------------

def master_pids(session: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == session:  # field 6: session id
                pids.append(int(entry))
    return pids


def reset_peaks(pids: list[int]) -> None:
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS
        except OSError:
            pass


def peak_kib(pids: list[int]) -> int:
    best = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except OSError:
            pass
    return best


# -- the runs -------------------------------------------------------------------

def commands(inp: dict, url: str, srv, dep: str, header: Path) -> dict[str, list[str]]:
    ours = ours_bin() + ["-C", str(inp["root"]), "--no-highstate", "--no-history", "--json",
                         "--server", url, "--ssl-cert", str(srv.ca_cert),
                         "--token-file", str(srv.token_file), *inp["ours"]]
    tar = (f"tar --sort=name -cf - -C {inp['root']} {' '.join(inp['tar'])} | gzip -1 | "
           f"curl -sS -w '\\nuploaded=%{{size_upload}}\\n' --cacert {srv.ca_cert} -H @{header} "
           f"-F project={PROJECT} -F deployment={dep} "
           f"-F 'bundle=@-;filename=bundle.tar.gz;type=application/gzip' {url}")
    return {"ours --compress": ours + ["--compress", PROJECT, dep],
            "ours": ours + [PROJECT, dep],
            "tar|gzip -1|curl": ["bash", "-o", "pipefail", "-c", tar]}


def uploaded_bytes(text: str) -> int | None:
    for line in reversed(text.splitlines()):
        if line.startswith("uploaded="):
            return int(float(line.split("=", 1)[1]))
        if line.startswith('{"report"'):
            return (json.loads(line)["report"].get("bundle") or {}).get("size")
    return None


def check(srv, dep: str, min_size: int):
    def verify(rc: int, text: str) -> str | None:
        if "event: exception" in text or '"exception"' in text and '"exception": null' not in text:
            return f"FATAL: server error: {_tail(text)}"
        where = srv.deploy_dir(PROJECT, dep)
        if not where.is_dir():
            return f"FATAL: nothing deployed at {where}: {_tail(text)}"
        _, size = tree_stats(where, ["."])
        if size < min_size:
            return f"FATAL: the server deployed only {size} of the {min_size} bytes"
        return None
    return verify


def run_all(args) -> int:
    from saltbed import bed
    from spiroserver import SpiroServer

    inputs = make_inputs(args.size, 0 if args.no_files else args.files)
    # The server certificate must also name the veth address; the engine must
    # listen on it (the bed's shim binds 127.0.0.1 unless told).
    bed.make_tls_files = partial(bed.make_tls_files,
                                 hosts=("127.0.0.1", "localhost", IP_SERVER))
    os.environ["SPIROBED_BIND_ADDRESS"] = "0.0.0.0"
    samples: list[dict] = []
    log = print
    with SpiroServer(NBWORK / "server", venv_bin()) as srv:
        header = NBWORK / "auth-header"
        header.write_text(f"Authorization: Bearer {srv.token}\n")
        os.chmod(header, 0o600)
        port = srv.https_url.rsplit(":", 1)[1].rstrip("/")
        links = {"shaped": (f"https://{IP_SERVER}:{port}/", ["ip", "netns", "exec", NS_CLIENT]),
                 "loopback": (srv.https_url, [])}
        pids = master_pids(srv.proc.pid)
        log(f"SpiroFS up ({len(pids)} master processes), links: {links}")
        for key, inp in inputs.items():
            for link, (url, prefix) in links.items():
                runs = args.runs if link == "shaped" else args.loop_runs
                dep = f"nb-{key}"
                cmds = commands(inp, url, srv, dep, header)
                for run in range(runs):
                    order = list(TOOLS[run % 3:] + TOOLS[:run % 3])
                    if run % 2:
                        order.reverse()
                    for tool in order:
                        subprocess.run(["rm", "-rf", str(srv.deploy_dir(PROJECT, dep))])
                        sync()
                        pids = master_pids(srv.proc.pid)
                        reset_peaks(pids)
                        logfile = NBWORK / "logs" / f"{key}-{link}.log"
                        s = run_measured(prefix + cmds[tool], cwd=inp["root"], log=logfile,
                                         check=check(srv, dep, inp["size"]))
                        text = logfile.read_text(errors="replace")
                        row = {"input": key, "link": link, "tool": tool, "run": run,
                               "wall": s.wall, "cpu": s.user + s.sys, "rss_kib": s.rss_kib,
                               "master_kib": peak_kib(pids), "uploaded": uploaded_bytes(text),
                               "error": s.error}
                        samples.append(row)
                        log(f"{key} {link:8} {tool:17} run {run + 1}: {s.wall:6.2f}s "
                            f"cpu {row['cpu']:5.2f}s rss {s.rss_kib / 1024:5.0f} MiB "
                            f"master {row['master_kib'] / 1024:6.0f} MiB "
                            f"up {(row['uploaded'] or 0) / MiB:7.1f} MiB"
                            + (f"  FAILED {s.error}" if s.error else ""), flush=True)
        subprocess.run(["rm", "-rf", str(srv.deploy_dir(PROJECT, "nb-m")),
                        str(srv.deploy_dir(PROJECT, "nb-b"))])
    (WORK / "netbench.json").write_text(json.dumps(samples, indent=1))
    report = render(inputs, samples, args)
    RESULTS.write_text(report)
    print(report)
    return 0


def med(rows: list[dict], field: str) -> float | None:
    values = [r[field] for r in rows if r.get(field) is not None and not r["error"]]
    return statistics.median(values) if values else None


def paired(samples, key, link, a, b, field="wall") -> float | None:
    """Median over rounds of a's value / b's value in the same round."""
    ratios = []
    for run in {r["run"] for r in samples}:
        pick = {r["tool"]: r for r in samples
                if r["input"] == key and r["link"] == link and r["run"] == run and not r["error"]}
        if a in pick and b in pick and pick[b][field]:
            ratios.append(pick[a][field] / pick[b][field])
    return statistics.median(ratios) if ratios else None


def render(inputs, samples, args) -> str:
    out = [f"# Compressed deploys: shaped link ({SHAPE}) and loopback", "",
           f"`bench/netbench.py --size {fmt_size(args.size)} --runs {args.runs} --loop-runs "
           f"{args.loop_runs}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
           f"{os.cpu_count()} CPUs shared with other work. Real SpiroFS 0.3 (HTTPS), "
           "`--no-highstate`; client and master in their own network namespaces. Medians; "
           "ratios are medians of per-round ratios (each round runs every tool, order rotated).",
           ""]
    for key, inp in inputs.items():
        out += [f"## {inp['label']} ({inp['files']:,} files, {human(inp['size'])})", "",
                "| link | tool | wall s | client CPU s | client RSS MiB | master peak RSS MiB "
                "| uploaded MiB |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for link in ("shaped", "loopback"):
            for tool in TOOLS:
                rows = [r for r in samples if r["input"] == key and r["link"] == link
                        and r["tool"] == tool]
                bad = [r["error"] for r in rows if r["error"]]
                cells = [med(rows, f) for f in ("wall", "cpu", "rss_kib", "master_kib", "uploaded")]
                fmt = [f"{cells[0]:.2f}" if cells[0] else "-", f"{cells[1]:.2f}" if cells[1] else "-",
                       f"{cells[2] / 1024:.0f}" if cells[2] else "-",
                       f"{cells[3] / 1024:.0f}" if cells[3] else "-",
                       f"{cells[4] / MiB:.1f}" if cells[4] else "-"]
                note = f" ({len(bad)} failed: {bad[0][:80]})" if bad else ""
                shown = tool.replace("|", " \\| ")  # a pipe would split the table cell
                out.append(f"| {link} | {shown}{note} | " + " | ".join(fmt) + " |")
        out.append("")
        gz_up = med([r for r in samples if r["input"] == key and r["tool"] == "ours --compress"],
                    "uploaded")
        plain_up = med([r for r in samples if r["input"] == key and r["tool"] == "ours"],
                       "uploaded")
        ratio = plain_up / gz_up if gz_up and plain_up else None
        shaped = paired(samples, key, "shaped", "ours --compress", "ours")
        loop = paired(samples, key, "loopback", "ours --compress", "ours")
        vs_curl = paired(samples, key, "shaped", "ours --compress", "tar|gzip -1|curl")
        mem = paired(samples, key, "shaped", "ours --compress", "ours", "master_kib")
        def f(x: float | None) -> str:
            return f"{x:.2f}x" if x else "-"

        out += [f"* compression ratio (plain / gzip bytes uploaded): {f(ratio)}",
                f"* shaped link, compressed / plain wall: {f(shaped)} (goal <= 0.6x)",
                f"* loopback, compressed / plain wall: {f(loop)} (goal <= 1.15x)",
                f"* shaped link, ours compressed / tar|gzip -1|curl wall: {f(vs_curl)}",
                f"* master peak RSS, compressed / plain: {f(mem)} "
                f"(proportional would be {f(1 / ratio if ratio else None)})", ""]
    return "\n".join(out)


# -- the compressors -------------------------------------------------------------

def codecs(size: int) -> str:
    """Throughput (per CPU second) and ratio of each deflate implementation on (m)'s data."""
    import zlib
    pool = json_pool(7)
    rng = random.Random(8)
    blocks = []
    for k in range(size // MiB):
        if k % 2 == 0:
            start = rng.randrange(0, len(pool) - MiB)
            blocks.append(pool[start:start + MiB])
        else:
            blocks.append(rng.randbytes(MiB))
    total = sum(map(len, blocks))
    makers = {"zlib 1": lambda: zlib.compressobj(1, zlib.DEFLATED, -15),
              "zlib 6": lambda: zlib.compressobj(6, zlib.DEFLATED, -15)}
    try:
        from isal import isal_zlib
        for level in (0, 1, 2, 3):
            makers[f"isal {level}"] = partial(isal_zlib.compressobj, level, isal_zlib.DEFLATED, -15)
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng
        for level in (1, 6):
            makers[f"zlib-ng {level}"] = partial(zlib_ng.compressobj, level, zlib_ng.DEFLATED, -15)
    except ImportError:
        pass
    rows = ["| compressor, level | MiB/s per CPU second | ratio |", "| --- | --- | --- |"]
    for name, make in makers.items():
        best = None
        for _ in range(3):
            c = make()
            cpu = time.process_time()
            n = sum(len(c.compress(b)) for b in blocks) + len(c.flush())
            cpu = time.process_time() - cpu
            best = cpu if best is None else min(best, cpu)
        rows.append(f"| {name} | {total / MiB / best:.0f} | {total / n:.2f} |")
        print(rows[-1], flush=True)
    plain = sum(len(b) for b in blocks[0::2])
    text_n = len(zlib.compress(b"".join(blocks[0::2][:32]), 1))
    rows.append(f"\n{human(total)} of input; the JSON half alone compresses "
                f"{min(plain, 32 * MiB) / text_n:.1f}x with zlib 1.\n")
    rows += master_extraction(blocks)
    return "\n".join(rows)


def master_extraction(blocks: list[bytes]) -> list[str]:
    """What SpiroFS 0.3 pays to open and extract the bundle, plain vs gzip.

    It does ``tarfile.open(fileobj=BytesIO(body)).extractall(dir)``: for a
    gzip that is Python's zlib inflating, in the master's engine process.
    """
    import io
    import shutil
    import tarfile
    import tempfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = sum(map(len, blocks))
        tar.addfile(info, io.BytesIO(b"".join(blocks)))
    bodies = {"plain tar": buf.getvalue()}
    bodies["gzip (level 1)"] = gzip_bytes(bodies["plain tar"])
    rows = ["| master extracts (tarfile, as SpiroFS 0.3) | CPU s per GiB of tar |",
            "| --- | --- |"]
    for name, body in bodies.items():
        best = None
        for _ in range(3):
            where = tempfile.mkdtemp(dir=NBWORK)
            cpu = time.process_time()
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                tar.extractall(where)
            cpu = time.process_time() - cpu
            shutil.rmtree(where)
            best = cpu if best is None else min(best, cpu)
        rows.append(f"| {name} | {best * (1 << 30) / len(bodies['plain tar']):.2f} |")
        print(rows[-1], flush=True)
    return rows


def gzip_bytes(data: bytes) -> bytes:
    import gzip
    return gzip.compress(data, compresslevel=1, mtime=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"))
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--no-files", action="store_true", help="skip the 50,000-file tree")
    parser.add_argument("--runs", type=int, default=2, help="rounds on the shaped link")
    parser.add_argument("--loop-runs", type=int, default=3, help="rounds on loopback")
    parser.add_argument("--codecs", action="store_true", help="only the compressor table")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.codecs:
        print(codecs(min(args.size, 256 * MiB)))
        return 0
    if args.inside:
        return run_all(args)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, tc)")
    netns_up()
    try:
        # The harness and the master run in the server's namespace; each
        # shaped client is started in the client's with `ip netns exec`.
        return subprocess.run(["ip", "netns", "exec", NS_SERVER, sys.executable, __file__,
                               "--inside", *(argv if argv is not None else sys.argv[1:])]
                              ).returncode
    finally:
        netns_down()


if __name__ == "__main__":
    sys.exit(main())
