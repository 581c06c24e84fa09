"""Fleet benchmark (issue 14): does the client stay small and quick as the fleet grows?

A fake SpiroFS server (tests/fakeserver.py) reports N minions x 50 states
(5 changed, every 100th minion failing one state).  For each N, paired in
one run (the commands alternate, REPEAT times, medians reported):

* ``bare``: a reader that only parses the same stream: requests (the same
  HTTP library the client uses), SSE lines, ``json.loads`` of each event;
* ``human``: ``spiro-deploy`` with its human output written to a file
  (not a terminal: the CI-log mode, one line per minion);
* ``json``: ``spiro-deploy --json`` written to a file.

Each is a fresh process under ``/usr/bin/time``: wall seconds, peak RSS and
CPU, byte-compiled as an installed package is (one unmeasured warm-up round
first).  Also measured, in this process: the size of the Salt module's
return per successful minion, from the library path the module takes
(``deploy_bundle`` then ``report.to_dict()`` and ``scrub``, as
``_modules/spirodeploy_mod.py``'s ``_finish`` does).

Goals: peak RSS <= 100 MiB at every size, wall <= 2x bare, module return
<= 2 KB per successful minion.

    .venv/bin/python bench/fleet.py [--sizes 100,1000,10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakeserver import fleet_events  # noqa: E402
from tests.support import make_token  # noqa: E402

TIME = "/usr/bin/time"
GOAL_RSS_MIB = 100
GOAL_WALL_RATIO = 2.0
GOAL_RETURN_BYTES = 2048

BARE_READER = r"""
import json, sys, requests
url = sys.argv[1]
response = requests.post(url, files={"bundle": ("b.tar", b"x")},
                         data={"project": "proj", "deployment": "prod", "highstate": "1"},
                         stream=True)
count, event, data = 0, None, []
for raw in response.iter_lines(chunk_size=65536):
    line = raw.decode("utf-8")
    if not line:
        if data:
            json.loads("\n".join(data))
            count += 1
        event, data = None, []
    elif line.startswith("event:"):
        event = line[6:].strip()
    elif line.startswith("data:"):
        data.append(line[5:].lstrip())
print(count)
"""


class StreamServer:
    """Serve a prepared event stream file to every request, one HTTP chunk per event."""

    def __init__(self, stream_file: Path):
        outer = self
        self.stream_file = stream_file

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0) or 0)
                if length:
                    self.rfile.read(length)
                else:  # chunked upload
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        self.rfile.read(size + 2)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with open(outer.stream_file, "rb") as stream:
                    buffer = b""
                    for line in stream:
                        buffer += line
                        if line == b"\n":  # end of one event
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(buffer), buffer))
                            buffer = b""
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def timed(command: list[str], out_file: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """Run under /usr/bin/time: (wall seconds, peak RSS MiB, CPU seconds)."""
    stats = out_file.with_suffix(".time")
    with open(out_file, "wb") as out:
        proc = subprocess.run([TIME, "-f", "%e %M %U %S", "-o", str(stats), *command], stdout=out,
                              stderr=subprocess.PIPE, env=env, cwd=env["BENCH_CWD"])
    if proc.returncode not in (0, 1):  # 1: the failing minions, as scripted
        raise SystemExit(f"{command[0]} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    wall, rss, user, system = stats.read_text().split()[-4:]
    return float(wall), int(rss) / 1024, float(user) + float(system)


def module_return(url: str, token: str, workdir: Path) -> dict[str, float]:
    """The Salt module's return for this deploy, sized per successful minion."""
    from spirodeploy import saltsupport
    from spirodeploy.deploy import deploy_bundle
    from spirodeploy.settings import Settings

    settings = Settings.resolve(server=url, token=token, insecure=True, environ={})
    with open(workdir / "bundle.tar", "rb") as bundle:
        report = deploy_bundle(bundle, "proj", "prod", settings)
    ret = saltsupport.scrub(report.to_dict(), [token])
    results = ret["results"]
    ok = [len(json.dumps(value)) for value in results.values() if value["succeeded"]]
    return {"total_kib": len(json.dumps(ret)) / 1024, "per_ok_max": max(ok),
            "per_ok_mean": statistics.mean(ok), "minions": len(results)}


def make_project(workdir: Path) -> Path:
    project = workdir / "proj"
    (project / "_salt").mkdir(parents=True, exist_ok=True)
    (project / "_salt" / "top.sls").write_text("{{ saltenv }}:\n  '*':\n    - app\n")
    (project / "_salt" / "app.sls").write_text("app:\n  test.succeed_without_changes\n")
    import tarfile

    with tarfile.open(workdir / "bundle.tar", "w") as tar:
        tar.add(project / "_salt" / "top.sls", "top.sls")
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--states", type=int, default=50)
    parser.add_argument("--json-out", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    token = make_token()
    rows = []
    with tempfile.TemporaryDirectory(prefix="spiro-fleet-") as tmp:
        workdir = Path(tmp)
        project = make_project(workdir)
        # Byte-compiled, as an installed package is (outside the checkout);
        # the first, unmeasured round writes the .pyc files.
        env = dict(os.environ, SPIRO_TOKEN=token, SPIRO_HISTORY_DIR=str(workdir / "history"),
                   NO_COLOR="1", BENCH_CWD=str(project),
                   PYTHONPYCACHEPREFIX=str(workdir / "pycache"))
        for name in ("SPIRO_TOKEN_FILE", "PYTHONDONTWRITEBYTECODE"):
            env.pop(name, None)
        python = sys.executable
        for size in sizes:
            stream_file = workdir / f"fleet-{size}.sse"
            with open(stream_file, "wb") as stream:
                for event in fleet_events(size, states=args.states):
                    stream.write(event)
            server = StreamServer(stream_file)
            commands = {
                "bare": [python, "-c", BARE_READER, server.url],
                "human": [python, "-m", "spirodeploy", "proj", "prod", "--server", server.url,
                          "--insecure", "--no-progress"],
                "json": [python, "-m", "spirodeploy", "proj", "prod", "--server", server.url,
                         "--insecure", "--json"],
            }
            samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
            if size == sizes[0]:
                for name, command in commands.items():  # warm-up: compile, fill caches
                    timed(command, workdir / f"{name}-warm.out", env)
            for _ in range(args.repeat):
                for name, command in commands.items():  # paired: alternate every round
                    samples[name].append(timed(command, workdir / f"{name}-{size}.out", env))
            out_sizes = {name: (workdir / f"{name}-{size}.out").stat().st_size / 1024
                         for name in ("human", "json")}
            out_lines = {name: len((workdir / f"{name}-{size}.out").read_bytes().splitlines())
                         for name in ("human", "json")}
            returned = module_return(server.url, token, workdir)
            server.close()
            median = {name: [statistics.median(sample[i] for sample in values) for i in range(3)]
                      for name, values in samples.items()}
            rows.append({
                "minions": size, "states": args.states,
                "stream_mib": stream_file.stat().st_size / 2**20,
                **{f"{name}_wall": median[name][0] for name in commands},
                **{f"{name}_rss_mib": median[name][1] for name in commands},
                **{f"{name}_cpu": median[name][2] for name in commands},
                "human_out_kib": out_sizes["human"], "human_lines": out_lines["human"],
                "json_out_kib": out_sizes["json"],
                "return_per_ok_max": returned["per_ok_max"],
                "return_per_ok_mean": returned["per_ok_mean"],
                "return_total_kib": returned["total_kib"],
            })
            stream_file.unlink()
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


def table(rows: list[dict]) -> str:
    lines = [
        "| minions x states | stream | bare reader: wall / RSS | human: wall / RSS "
        "| --json: wall / RSS | wall vs bare (human, json) | CPU: bare, human, json "
        "| human output | --json output | module return per ok minion (max / mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['minions']:,} x {row['states']} | {row['stream_mib']:.0f} MiB "
            f"| {row['bare_wall']:.2f} s / {row['bare_rss_mib']:.0f} MiB "
            f"| {row['human_wall']:.2f} s / {row['human_rss_mib']:.0f} MiB "
            f"| {row['json_wall']:.2f} s / {row['json_rss_mib']:.0f} MiB "
            f"| {row['human_wall'] / row['bare_wall']:.2f}x, "
            f"{row['json_wall'] / row['bare_wall']:.2f}x "
            f"| {row['bare_cpu']:.2f} s, {row['human_cpu']:.2f} s, {row['json_cpu']:.2f} s "
            f"| {row['human_out_kib']:.0f} KiB, {row['human_lines']:,} lines "
            f"| {row['json_out_kib']:.0f} KiB "
            f"| {row['return_per_ok_max']:,} B / {row['return_per_ok_mean']:,.0f} B |")
    verdict = all(row["human_rss_mib"] <= GOAL_RSS_MIB and row["json_rss_mib"] <= GOAL_RSS_MIB
                  and row["human_wall"] <= GOAL_WALL_RATIO * row["bare_wall"]
                  and row["json_wall"] <= GOAL_WALL_RATIO * row["bare_wall"]
                  and row["return_per_ok_max"] <= GOAL_RETURN_BYTES for row in rows)
    lines.append("")
    lines.append(f"Goals (RSS <= {GOAL_RSS_MIB} MiB, wall <= {GOAL_WALL_RATIO:g}x bare, "
                 f"return <= {GOAL_RETURN_BYTES} B per ok minion): "
                 f"{'all met' if verdict else 'NOT all met'}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
