"""The deploy as one self-contained HTML page (``--html FILE``).

For the person triaging a rollout: the summary (counts, bundle, commit), a
table of the minions that sorts, filters and pages (100 rows a page, so it
stays quick at 10,000 minions), each failed minion's states with their
comments, and a timeline of when the minions reported.

How it is built, and why:

* **Self-contained.** No external asset, no network fetch: the page works as
  an archived CI artifact.  The Content-Security-Policy says so too
  (``default-src 'none'``).
* **Data, then code.** Everything about the minions goes into one JSON blob
  in a ``<script type="application/json">`` element (never executed), which
  the page's own script renders.  The file grows with the fleet by about 50
  bytes a minion, plus the failed states.
* **Hostile text stays text.** Server and minion text reaches the page in
  two ways only: HTML-escaped in the static summary, and as JSON strings
  (with ``<``, ``>`` and ``&`` written as ``\\u003c`` ...) that the script puts
  on the page with ``textContent``, never as markup.  On top of that the CSP
  allows only the page's own script and style, by their sha256: an injected
  ``<script>`` or ``onerror=`` would not run even if it got into the markup.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
from collections.abc import Iterable
from typing import Any

from .reportview import STATUSES, MinionView, ReportView, view

#: Rows of the minion table per page.
PAGE_SIZE = 100

_CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --muted: #57606a; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328;
       background: #f6f8fa; }
header, section { background: #fff; margin: 12px 16px; padding: 12px 16px; border: 1px solid var(--line);
                  border-radius: 6px; }
h1 { font-size: 20px; margin: 0 0 6px; } h2 { font-size: 16px; margin: 0 0 10px; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 4px 0; }
.result { font-weight: 600; padding: 6px 10px; border-radius: 4px; margin: 0; }
.result.ok { background: #dafbe1; color: var(--ok); } .result.bad { background: #ffebe9; color: var(--bad); }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; min-width: 110px; }
.card .n { font-size: 20px; font-weight: 600; display: block; }
.card.bad .n { color: var(--bad); } .card.ok .n { color: var(--ok); } .card.warn .n { color: var(--warn); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
table.facts th { width: 140px; color: var(--muted); font-weight: normal; }
table.facts td { overflow-wrap: anywhere; }
#minion-table th { cursor: pointer; user-select: none; white-space: nowrap; background: #f6f8fa; }
#minion-table th[aria-sort="ascending"]::after { content: " \\25B2"; }
#minion-table th[aria-sort="descending"]::after { content: " \\25BC"; }
#minion-table td.num, #minion-table th.num { text-align: right; }
#minion-table tbody tr { cursor: pointer; }
#minion-table tbody tr:hover { background: #f3f4f6; }
tr.row-failed, tr.row-error, tr.row-no-response, tr.row-unreported { background: #fff5f5; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         color: #fff; }
.badge.ok { background: var(--ok); } .badge.failed, .badge.error { background: var(--bad); }
.badge.no-response, .badge.unreported { background: var(--warn); }
.controls { display: flex; gap: 8px; align-items: center; margin-bottom: 8px; flex-wrap: wrap; }
.controls input { padding: 4px 8px; min-width: 260px; }
.pager { display: flex; gap: 8px; align-items: center; margin-top: 8px; }
.muted { color: var(--muted); }
.minion-failures { margin: 10px 0 16px; }
.minion-failures h3 { font-size: 14px; margin: 0 0 4px; }
.state { border-left: 4px solid var(--line); padding: 4px 10px; margin: 6px 0; background: #f6f8fa; }
.state.failed { border-left-color: var(--bad); background: #ffebe9; }
.state .head { font-weight: 600; }
.detail td { background: #fafbfc; }
.timeline { position: relative; }
.tl-row { display: flex; align-items: center; gap: 8px; height: 18px; }
.tl-name { width: 220px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; font-size: 12px; }
.tl-track { position: relative; flex: 1; height: 10px; border-bottom: 1px dotted var(--line); }
.tl-dot { position: absolute; top: 0; width: 10px; height: 10px; border-radius: 5px;
          margin-left: -5px; }
.tl-dot.ok { background: var(--ok); } .tl-dot.bad { background: var(--bad); }
.histogram { display: flex; align-items: flex-end; height: 120px; gap: 1px;
             border-bottom: 1px solid var(--line); }
.bin { flex: 1; display: flex; flex-direction: column-reverse; height: 100%; }
.bin .ok { background: var(--ok); } .bin .bad { background: var(--bad); }
.axis { display: flex; justify-content: space-between; font-size: 12px; color: var(--muted); }
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var COLS = data.columns;
  var RANK = {"failed": 0, "error": 1, "no-response": 2, "unreported": 3, "ok": 4};
  var PAGE = data.page_size;
  var state = {sort: 1, dir: 1, filter: "", status: "", page: 0, fpage: 0, open: {}};
  var rows = data.minions;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function $(id) { return document.getElementById(id); }
  function ms(value) {
    if (value === null || value === undefined) { return "\u2013"; }
    return value >= 1000 ? (value / 1000).toFixed(2) + " s" : value.toFixed(1) + " ms";
  }
  function secs(value) {
    return value === null || value === undefined ? "\u2013" : "+" + value.toFixed(2) + " s";
  }
  function bad(status) { return status !== "ok"; }

  document.title = "spiro-deploy: " + data.target + (data.succeeded ? " (ok)" : " (failed)");

  // --- the minion table --------------------------------------------------
  function compare(a, b) {
    var i = state.sort, x = a[i], y = b[i];
    if (i === 1) { x = RANK[x]; y = RANK[y]; }
    if (x === null || x === undefined) { x = -Infinity; }
    if (y === null || y === undefined) { y = -Infinity; }
    var c = typeof x === "string" ? x.localeCompare(y) : (x < y ? -1 : x > y ? 1 : 0);
    if (c === 0 && i !== 0) { c = a[0].localeCompare(b[0]); return c; }
    return c * state.dir;
  }
  function visible() {
    var needle = state.filter.toLowerCase();
    return rows.filter(function (row) {
      return (!needle || row[0].toLowerCase().indexOf(needle) !== -1) &&
             (!state.status || row[1] === state.status);
    }).sort(compare);
  }
  function detailRow(row) {
    var tr = el("tr", "detail"), td = el("td");
    td.colSpan = COLS.length;
    td.appendChild(failureBlock(row[0], false));
    tr.appendChild(td);
    return tr;
  }
  function renderTable() {
    var list = visible(), pages = Math.max(1, Math.ceil(list.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var body = $("minion-rows"), frag = document.createDocumentFragment();
    list.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (row) {
      var tr = el("tr", "row-" + row[1]);
      tr.setAttribute("data-minion", row[0]);
      tr.appendChild(el("td", "mono", row[0]));
      var status = el("td"); status.appendChild(el("span", "badge " + row[1], row[1]));
      tr.appendChild(status);
      tr.appendChild(el("td", "num", row[2]));
      tr.appendChild(el("td", "num", row[3]));
      tr.appendChild(el("td", "num", row[4]));
      tr.appendChild(el("td", "num", ms(row[5])));
      tr.appendChild(el("td", "num", secs(row[6])));
      tr.addEventListener("click", function () {
        state.open[row[0]] = !state.open[row[0]];
        renderTable();
      });
      frag.appendChild(tr);
      if (state.open[row[0]]) { frag.appendChild(detailRow(row)); }
    });
    body.textContent = "";
    body.appendChild(frag);
    $("shown").textContent = list.length + " of " + rows.length + " minions";
    $("page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    Array.prototype.forEach.call(document.querySelectorAll("#minion-table th"), function (th, i) {
      th.setAttribute("aria-sort", i === state.sort ? (state.dir > 0 ? "ascending" : "descending") : "none");
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("#minion-table th"), function (th, i) {
    th.addEventListener("click", function () {
      if (state.sort === i) { state.dir = -state.dir; } else { state.sort = i; state.dir = 1; }
      state.page = 0;
      renderTable();
    });
  });
  $("filter").addEventListener("input", function (e) {
    state.filter = e.target.value; state.page = 0; renderTable();
  });
  $("status").addEventListener("change", function (e) {
    state.status = e.target.value; state.page = 0; renderTable();
  });
  $("prev").addEventListener("click", function () { state.page -= 1; renderTable(); });
  $("next").addEventListener("click", function () { state.page += 1; renderTable(); });

  // --- failed states -----------------------------------------------------
  function failureBlock(name, withTitle) {
    var info = data.details[name] || {}, box = el("div", "minion-failures");
    box.setAttribute("data-minion", name);
    if (withTitle) {
      var h = el("h3"); h.appendChild(el("span", "mono", name));
      h.appendChild(document.createTextNode(" "));
      h.appendChild(el("span", "badge " + (info.status || "ok"), info.status || "ok"));
      box.appendChild(h);
    }
    if (info.reason) { box.appendChild(el("div", "muted", info.reason)); }
    (info.errors || []).forEach(function (text) {
      var div = el("div", "state failed"); div.appendChild(el("pre", "", text)); box.appendChild(div);
    });
    (info.failed || []).forEach(function (s) {
      var div = el("div", "state failed");
      div.setAttribute("data-state", s[0]);
      div.appendChild(el("div", "head mono", s[1] ? s[1] + "  " + s[0] : s[0]));
      var meta = [];
      if (s[2] && s[2] !== s[0]) { meta.push("name: " + s[2]); }
      if (s[3]) { meta.push("sls: " + s[3]); }
      if (s[5] !== null) { meta.push("took " + ms(s[5])); }
      if (meta.length) { div.appendChild(el("div", "muted mono", meta.join("   "))); }
      div.appendChild(el("pre", "comment", s[4]));
      box.appendChild(div);
    });
    if (info.failed_omitted) {
      box.appendChild(el("div", "muted", "\u2026 and " + info.failed_omitted +
        " more failed states (job " + (info.jid || "?") + " in Salt's job cache)"));
    }
    if (!box.childNodes.length || (withTitle && box.childNodes.length === 1)) {
      box.appendChild(el("div", "muted", "No failed states."));
    }
    return box;
  }
  var failing = rows.filter(function (row) { return bad(row[1]); })
    .sort(function (a, b) { return RANK[a[1]] - RANK[b[1]] || a[0].localeCompare(b[0]); });
  var FPAGE = 20;
  function renderFailures() {
    var list = $("failure-list"), pages = Math.max(1, Math.ceil(failing.length / FPAGE));
    list.textContent = "";
    if (!failing.length) { list.appendChild(el("p", "muted", "No minion failed.")); }
    failing.slice(state.fpage * FPAGE, (state.fpage + 1) * FPAGE).forEach(function (row) {
      list.appendChild(failureBlock(row[0], true));
    });
    $("fpage").textContent = "page " + (state.fpage + 1) + " of " + pages +
      " (" + failing.length + " minions)";
    $("fprev").disabled = state.fpage === 0;
    $("fnext").disabled = state.fpage >= pages - 1;
  }
  $("fprev").addEventListener("click", function () { state.fpage -= 1; renderFailures(); });
  $("fnext").addEventListener("click", function () { state.fpage += 1; renderFailures(); });

  // --- timeline ------------------------------------------------------------
  function renderTimeline() {
    var box = $("timeline-chart"), reported = rows.filter(function (row) { return row[6] !== null; });
    if (!reported.length) {
      box.appendChild(el("p", "muted", "No minion reported a time."));
      return;
    }
    var max = Math.max.apply(null, reported.map(function (row) { return row[6]; })) || 1;
    if (reported.length <= 60) {
      reported.slice().sort(function (a, b) { return a[6] - b[6]; }).forEach(function (row) {
        var line = el("div", "tl-row"), track = el("div", "tl-track");
        line.appendChild(el("div", "tl-name mono", row[0]));
        var dot = el("div", "tl-dot " + (bad(row[1]) ? "bad" : "ok"));
        dot.style.left = (100 * row[6] / max) + "%";
        dot.title = row[0] + ": " + row[1] + ", " + secs(row[6]);
        track.appendChild(dot);
        line.appendChild(track);
        box.appendChild(line);
      });
    } else {
      var n = 60, bins = [], i, top = 1;
      for (i = 0; i < n; i++) { bins.push([0, 0]); }
      reported.forEach(function (row) {
        var b = Math.min(n - 1, Math.floor(n * row[6] / max));
        bins[b][bad(row[1]) ? 1 : 0] += 1;
      });
      bins.forEach(function (b) { top = Math.max(top, b[0] + b[1]); });
      var hist = el("div", "histogram");
      bins.forEach(function (b, k) {
        var col = el("div", "bin"), ok = el("div", "ok"), fail = el("div", "bad");
        ok.style.height = (100 * b[0] / top) + "%";
        fail.style.height = (100 * b[1] / top) + "%";
        col.title = (k * max / n).toFixed(1) + "\u2013" + ((k + 1) * max / n).toFixed(1) +
          " s: " + b[0] + " ok, " + b[1] + " not ok";
        col.appendChild(ok); col.appendChild(fail); hist.appendChild(col);
      });
      box.appendChild(hist);
    }
    var axis = el("div", "axis");
    axis.appendChild(el("span", "", "deploy started"));
    axis.appendChild(el("span", "", "+" + max.toFixed(2) + " s"));
    box.appendChild(axis);
  }

  renderTable();
  renderFailures();
  renderTimeline();
  document.body.setAttribute("data-ready", "1");
})();
"""

#: The table's columns: (heading, numeric).
_COLUMNS = (("Minion", False), ("Status", False), ("OK", True), ("Changed", True),
            ("Failed", True), ("Duration", True), ("Reported", True))


def render(report: Any, secrets: Iterable[str] = ()) -> str:
    """The HTML page for ``report`` (a :class:`~spirodeploy.report.DeployReport`).

    ``secrets`` (the token) are masked in every piece of text.
    """
    data = view(report, secrets)
    blob = json.dumps(_data(data), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    # In a <script> element only "</script" (and "<!--") could end it early;
    # with no "<" at all nothing can.
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    csp = ("default-src 'none'; "
           f"script-src '{_sha256(_JS)}'; style-src '{_sha256(_CSS)}'; "
           "img-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'")
    e = html.escape
    ok = data.succeeded
    head = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{e(csp, quote=False)}\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>spiro-deploy: {e(data.target)}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
    )
    parts = [head]
    parts.append(
        "<header>\n"
        f"<h1>Deploy of <span class=\"mono\" id=\"target\">{e(data.target)}</span></h1>\n"
        f"<p class=\"result {'ok' if ok else 'bad'}\" id=\"summary-line\">{e(data.summary)}</p>\n"
        "</header>\n"
    )
    parts.append(_summary(data))
    parts.append(
        "<section id=\"timeline\"><h2>When the minions reported</h2>"
        "<div id=\"timeline-chart\" class=\"timeline\"></div></section>\n"
    )
    options = "".join(f"<option value=\"{status}\">{status}</option>" for status in STATUSES)
    headings = "".join(f"<th class=\"{'num' if numeric else 'text'}\">{title}</th>"
                       for title, numeric in _COLUMNS)
    parts.append(
        "<section id=\"minions\"><h2>Minions</h2>\n<div class=\"controls\">"
        "<input id=\"filter\" type=\"search\" placeholder=\"Filter by minion id\" "
        "aria-label=\"Filter by minion id\">"
        f"<select id=\"status\" aria-label=\"Status\"><option value=\"\">any status</option>{options}"
        "</select><span id=\"shown\" class=\"muted\"></span></div>\n"
        f"<table id=\"minion-table\"><thead><tr>{headings}</tr></thead>"
        "<tbody id=\"minion-rows\"></tbody></table>\n"
        "<div class=\"pager\"><button id=\"prev\" type=\"button\">&lsaquo; Previous</button>"
        "<span id=\"page\" class=\"muted\"></span>"
        "<button id=\"next\" type=\"button\">Next &rsaquo;</button></div>\n"
        "<p class=\"muted\">Click a column to sort, a row to see its failed states.</p></section>\n"
    )
    parts.append(
        "<section id=\"failures\"><h2>Failed states</h2><div id=\"failure-list\"></div>\n"
        "<div class=\"pager\"><button id=\"fprev\" type=\"button\">&lsaquo; Previous</button>"
        "<span id=\"fpage\" class=\"muted\"></span>"
        "<button id=\"fnext\" type=\"button\">Next &rsaquo;</button></div></section>\n"
        "<noscript><section>The minion table, the failed states and the timeline need "
        "JavaScript.</section></noscript>\n"
    )
    parts.append(f"<script type=\"application/json\" id=\"report-data\">{blob}</script>\n")
    parts.append(f"<script>{_JS}</script>\n</body>\n</html>\n")
    return "".join(parts)


def _summary(data: ReportView) -> str:
    e = html.escape
    totals = data.state_totals()
    failing = sum(data.count(status) for status in ("failed", "error", "no-response"))
    cards = [
        ("expected", data.expected, ""),
        ("reported", len(data.minions) - data.count("unreported"), ""),
        ("succeeded", data.count("ok"), "ok"),
        ("failed", failing, "bad" if failing else ""),
        ("never reported", data.count("unreported"), "warn" if data.count("unreported") else ""),
        ("states ok", totals["ok"], ""),
        ("states changed", totals["changed"], ""),
        ("states failed", totals["failed"], "bad" if totals["failed"] else ""),
    ]
    html_cards = "".join(
        f"<div class=\"card {cls}\" data-count=\"{e(label)}\"><span class=\"n\">{value}</span>"
        f"{e(label)}</div>" for label, value, cls in cards)
    facts = [("exit code", str(data.exit_code))]
    labels = {"sha256": "bundle sha256", "digest": "bundle digest", "gitcommit": "commit",
              "size": "bundle size", "file_count": "files", "compression": "compression"}
    facts += [(labels[key], f"{int(value):,} bytes" if key == "size" and value.isdigit() else value)
              for key, value in data.bundle.items()]
    if "gitcommit" not in data.bundle:
        facts.append(("commit", "(none recorded: no .gitcommit in the bundle, or not known)"))
    if data.started_at is not None:
        facts.append(("started", _iso(data.started_at)))
    facts.append(("report written", _iso(None)))
    rows = "".join(f"<tr><th>{e(label)}</th><td class=\"mono\" id=\"fact-{e(label.replace(' ', '-'))}\">"
                   f"{e(value)}</td></tr>" for label, value in facts)
    problems = ""
    if data.exception:
        problems += f"<h2>Server exception</h2><pre class=\"state failed\">{e(data.exception)}</pre>"
    if data.error:
        problems += f"<h2>Client error</h2><pre class=\"state failed\">{e(data.error)}</pre>"
    return (f"<section id=\"summary\"><h2>Summary</h2><div class=\"cards\">{html_cards}</div>"
            f"<table class=\"facts\">{rows}</table>{problems}</section>\n")


def _data(data: ReportView) -> dict[str, Any]:
    """The JSON blob the page's script renders: one compact row per minion."""
    minions = []
    details: dict[str, Any] = {}
    for minion in data.minions:
        minions.append([
            minion.minion, minion.status, minion.counts.get("ok", 0),
            minion.counts.get("changed", 0), minion.counts.get("failed", 0),
            _round(minion.duration_ms), _round(minion.reported_at),
        ])
        if minion.status != "ok":
            details[minion.minion] = _details(minion)
    return {
        "target": data.target,
        "succeeded": data.succeeded,
        "page_size": PAGE_SIZE,
        "columns": [title for title, _ in _COLUMNS],
        "minions": minions,
        "details": details,
    }


def _details(minion: MinionView) -> dict[str, Any]:
    return {
        "status": minion.status,
        "reason": minion.reason,
        "jid": minion.jid,
        "errors": minion.errors,
        "failed": [[state.id, state.function, state.name, state.sls, state.comment,
                    _round(state.duration_ms)] for state in minion.failed_states],
        "failed_omitted": minion.failed_omitted,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def _iso(epoch: float | None) -> str:
    moment = (datetime.datetime.now(datetime.timezone.utc) if epoch is None
              else datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc))
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
