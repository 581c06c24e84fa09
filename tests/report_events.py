"""Realistic SpiroFS deploys for the report-file tests (JUnit, HTML).

Reports are built the way the client builds them: event by event through
``DeployReport.add``, with ``highstate-update`` results shaped like Salt's
``cmd_iter`` returns (state keys ``mod_|-id_|-name_|-fun``, ``duration`` in
ms, ``__run_num__``, ``__sls__``), so the tests do not depend on the
report's internals.
"""

from __future__ import annotations

from typing import Any

from spirodeploy.report import DeployReport

BUNDLE = {"sha256": "a" * 64, "size": 20480, "file_count": 7, "digest": "d" * 64,
          "gitcommit": "0123456789abcdef0123456789abcdef01234567"}
#: Text a hostile minion or server could send: markup, an attribute break-out,
#: a CDATA end, terminal escapes, a NUL, a lone surrogate, a bidi override.
HOSTILE = ('<script>window.__pwned=1;document.title="pwned"</script>'
           '"><img src=x onerror="window.__pwned=1;document.title=\'pwned\'">'
           ' ]]> \x1b[31mred\x1b[0m \x00nul \ud800 \u202eevil')
#: HOSTILE as the report files show it: characters XML cannot carry made visible.
HOSTILE_SHOWN = ('<script>window.__pwned=1;document.title="pwned"</script>'
                 '"><img src=x onerror="window.__pwned=1;document.title=\'pwned\'">'
                 ' ]]> \\x1b[31mred\\x1b[0m \\x00nul \\ud800 \\u202eevil')


def state(state_id: str, fun: str = "test.succeed_without_changes", *, result: Any = True,
          comment: str = "Success!", changes: dict | None = None, duration: float | None = 1.0,
          run_num: int = 0, sls: str = "app") -> tuple[str, dict[str, Any]]:
    """One entry of a highstate return, as Salt writes it."""
    module, function = fun.split(".", 1)
    value: dict[str, Any] = {"__id__": state_id, "name": state_id, "result": result,
                             "comment": comment, "changes": changes or {},
                             "__run_num__": run_num, "__sls__": sls}
    if duration is not None:
        value["duration"] = duration
    return f"{module}_|-{state_id}_|-{state_id}_|-{function}", value


def update(minion: str, states: list[tuple[str, dict]] | None = None, *, retcode: int = 0,
           result: Any = None, jid: str = "20261129113000123456") -> dict[str, Any]:
    """A ``highstate-update`` event's data."""
    if result is None:
        result = {"ret": dict(states or []), "retcode": retcode, "jid": jid}
    return {"msg": f"Minion {minion} finished", "minion": minion, "result": result}


def deploy(updates: list[dict[str, Any]], *, expected: list[str] | None = None,
           project: str = "shop", deployment: str = "prod", bundle: dict | None = BUNDLE,
           finish: bool = True) -> DeployReport:
    """A report fed the events of one deploy with highstate."""
    report = DeployReport(project=project, deployment=deployment,
                          bundle=dict(bundle) if bundle else None)
    if expected is None:
        expected = [item["minion"] for item in updates]
    report.add("deploy-bundle", {"msg": "Deploying bundle"})
    report.add("highstate-calc", {"msg": "Calculating minions to highstate"})
    report.add("highstate-start", {"msg": f"Highstating {len(expected)} minions",
                                   "minions": expected})
    for data in updates:
        report.add("highstate-update", data)
    if finish:
        report.add("highstate-finish", {"msg": "Highstate complete"})
    return report


def mixed_fleet() -> DeployReport:
    """web1 fails one state (hostile comment), web2 is fine, db1 has a render
    error, cache1 does not answer, gone1 never reports."""
    return deploy([
        update("web1", [
            state("packages", "pkg.installed", duration=120.5, run_num=0),
            state("config", "file.managed", comment="File /etc/app.conf updated",
                  changes={"diff": "+x"}, duration=30.25, run_num=1),
            state("service", "service.running", duration=10.0, run_num=2),
            state("migrate", "cmd.run", result=False, comment=f"Command failed: {HOSTILE}",
                  duration=2500.0, run_num=3, sls="app.db"),
        ], retcode=2),
        update("web2", [state("packages", "pkg.installed", duration=100.0),
                        state("service", "service.running", duration=5.5, run_num=1)]),
        update("db1", result={"ret": [("Rendering SLS 'prod:db' failed: mapping values are "
                                       "not allowed here")], "retcode": 5, "jid": "1"}),
        update("cache1", result={"failed": True}),
    ], expected=["web1", "web2", "db1", "cache1", "gone1"])


def big_fleet(minions: int, states: int = 50, failing_every: int = 100) -> DeployReport:
    """``minions`` minions with ``states`` unchanged states each; one in
    ``failing_every`` also fails a state."""
    updates = []
    for i in range(minions):
        entries = [state(f"s{k}", duration=0.5, run_num=k) for k in range(states)]
        if i % failing_every == 0:
            entries.append(state("broken", "cmd.run", result=False, comment="exit status 1",
                                 run_num=states))
        updates.append(update(f"node{i:05d}.example.com", entries,
                              retcode=2 if i % failing_every == 0 else 0))
    return deploy(updates)
