"""The study's single self-contained HTML page.

Everything the page needs is inside the file: CSS and JavaScript inline,
plots and contact sheets as base64 PNG ``data:`` URIs, so it opens offline
from disk and can be mailed as one attachment. A Content-Security-Policy
forbids every network fetch and runs only the page's own script and style
(marked with a per-page nonce): even if a string slipped through unescaped,
an injected ``<script>`` would not run. Every user-derived string (model
names, paths, config values, warnings) goes through :func:`esc`.

Tables sort by clicking a header; the script sorts each table once on load
(by its rank column), marks ``<body data-ready="1">`` when done, and writes
any JavaScript error into ``#js-errors`` (``data-js-errors`` on the body)
so a headless browser can check the page without a debugger.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Iterable

from fmeval.report.schema import RunResult
from fmeval.studies.tables import Table

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:0 auto;max-width:1400px;
padding:0 24px 48px;color:#1d2330}
h1{margin:24px 0 4px}h2{margin-top:36px;border-bottom:1px solid #d6dae3;padding-bottom:4px}
h3{margin:24px 0 6px}nav a{margin-right:14px}.meta{color:#5b6475}.note{color:#5b6475;margin:4px 0}
table{border-collapse:collapse;margin:8px 0 16px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d6dae3;padding:3px 7px;text-align:left;white-space:nowrap}
th{background:#f0f2f6;cursor:pointer;user-select:none;position:relative;padding-right:16px}
th[aria-sort=ascending]::after{content:"\\25B2";position:absolute;right:3px;font-size:9px;top:7px}
th[aria-sort=descending]::after{content:"\\25BC";position:absolute;right:3px;font-size:9px;top:7px}
tbody tr:nth-child(even){background:#fafbfc}tbody tr:hover{background:#eef3ff}
.wrap{overflow-x:auto}figure{margin:12px 0 24px}figure img{max-width:100%;border:1px solid #e3e6ec}
figcaption{color:#5b6475;font-size:13px}details{margin:3px 0;border:1px solid #e3e6ec;border-radius:4px;padding:2px 8px}
details[open]{background:#fbfcfd}summary{cursor:pointer}dl{display:grid;grid-template-columns:max-content 1fr;
gap:2px 14px;margin:6px 0}dt{color:#5b6475}dd{margin:0;word-break:break-all}code{font-size:12px}
#js-errors{color:#b00020}.beats{color:#0a6b2d;font-weight:600}
"""

JS = r"""
(function () {
  function key(td) {
    var v = td.getAttribute('data-v');
    if (v !== null && v !== '' && !isNaN(parseFloat(v))) return [0, parseFloat(v)];
    var t = td.textContent.trim();
    return (t === '' || t === '\u2013') ? [2, ''] : [1, t.toLowerCase()];
  }
  function cmp(a, b, dir) {
    if (a[0] !== b[0]) {
      if (a[0] === 2 || b[0] === 2) return a[0] - b[0];  // missing values last either way
      return dir === 'desc' ? b[0] - a[0] : a[0] - b[0];
    }
    var c = a[1] < b[1] ? -1 : (a[1] > b[1] ? 1 : 0);
    return dir === 'desc' ? -c : c;
  }
  function sortTable(table, col, dir) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (r, i) { return {row: r, k: key(r.cells[col]), i: i}; });
    keyed.sort(function (x, y) { return cmp(x.k, y.k, dir) || (x.i - y.i); });
    keyed.forEach(function (x) { body.appendChild(x.row); });
    var ths = table.tHead.rows[0].cells;
    for (var j = 0; j < ths.length; j++) ths[j].removeAttribute('aria-sort');
    ths[col].setAttribute('aria-sort', dir === 'desc' ? 'descending' : 'ascending');
    table.setAttribute('data-sorted', col + ':' + dir);
  }
  var tables = document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables, function (table) {
    var ths = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths, function (th, col) {
      th.addEventListener('click', function () {
        var next = th.getAttribute('aria-sort') === 'ascending' ? 'desc' : 'asc';
        sortTable(table, col, next);
      });
    });
    sortTable(table, parseInt(table.getAttribute('data-sort-col') || '0', 10),
              table.getAttribute('data-sort-dir') || 'asc');
  });
  document.body.setAttribute('data-tables', String(tables.length));
  document.body.setAttribute('data-ready', '1');
})();
"""

# Registered before anything else runs: errors are written into the page itself.
ERROR_HOOK = r"""
window.addEventListener('error', function (ev) {
  var msg = 'JavaScript error: ' + (ev.message || ev.type) + (ev.lineno ? ' (line ' + ev.lineno + ')' : '');
  var box = document.getElementById('js-errors');
  if (!box) { (window.__pendingErrors = window.__pendingErrors || []).push(msg); return; }
  var li = document.createElement('li'); li.textContent = msg; box.appendChild(li); box.hidden = false;
  document.body.setAttribute('data-js-errors', String(box.children.length));
});
"""


def esc(v: Any) -> str:
    return escape("" if v is None else str(v), quote=True)


def dom_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def table_html(t: Table, *, sort_col: int = 0, sort_dir: str = "asc") -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in t.columns)
    body = []
    for row in t.rows:
        cells = []
        for c in row:
            v = "" if c.sort is None or isinstance(c.sort, str) else f' data-v="{esc(repr(float(c.sort)))}"'
            cls = ' class="beats"' if " beats " in c.text else ""
            cells.append(f"<td{v}{cls}>{esc(c.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in t.notes)
    return (f'<section id="{esc(dom_id(t.id))}"><h3>{esc(t.title)}</h3>{notes}<div class="wrap">'
            f'<table class="sortable" data-table="{esc(t.id)}" data-sort-col="{sort_col}" data-sort-dir="{sort_dir}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>")


def figure_html(title: str, path: Path | None, caption: str) -> str:
    if path is None:
        return f'<p class="note"><b>{esc(title)}</b>: {esc(caption)}</p>'
    return (f'<figure><img alt="{esc(title)}" src="{png_data_uri(path)}">'
            f"<figcaption><b>{esc(title)}</b>. {esc(caption)}</figcaption></figure>")


def _kv(items: Iterable[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def _compact(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(", ", ": ")) if obj else "–"


def provenance_html(r: RunResult, style: str) -> str:
    """One run's provenance as a collapsible block; every value read from its results.json."""
    from fmeval.report.leaderboard import weights_kind

    d, m, prov = r.dataset, r.model, r.provenance
    git = prov.get("git") or {}
    proto = r.protocol or {}
    auc = r.test.metrics.get("auc")
    head = " · ".join([r.model_name, r.mode, *([style] if style else []), f"{r.dataset_flag} @ {d.get('size', '?')} px",
                       f"seed {r.seed}", *([f"AUC {auc.value:.4f}"] if auc and auc.value == auc.value else [])])
    items = [
        ("model", r.model_name), ("weights id", m.get("weights_id", "")), ("weights kind", weights_kind(m)),
        ("input size", (r.transform or {}).get("input_size", "")),
        ("dataset", f"{r.dataset_flag} @ {d.get('size', '?')} px ({d.get('task', '')})"),
        ("data file", d.get("path", "")), ("MD5", d.get("md5", "")),
        ("official file", {True: "yes", False: "NO (differs from the official MD5)", None: "not checked"}.get(
            d.get("md5_verified"), str(d.get("md5_verified")))),
        ("samples", f"train {d.get('n_train', '?')} · val {d.get('n_val', '?')} · test {d.get('n_test', '?')}"
                    + (f" (--limit {d['limit']})" if d.get("limit") else "")),
        ("protocol", (f"{proto.get('name')} v{proto.get('version', '?')}" if proto else "none")),
        ("deviations", "; ".join(r.deviations) or "none"), ("transform", _compact(r.transform)),
        ("precision", r.precision), ("seed", r.seed), ("selection", _compact(r.selection)),
        ("prompt style", style or "–"), ("prompt-bank hash", r.extras.get("prompt_bank_hash", "–")),
        ("packages", _compact(prov.get("packages"))), ("fmeval", prov.get("fmeval_version", "")),
        ("git commit", (git.get("commit") or "?") + (" (dirty)" if git.get("dirty") else "")),
        ("config hash", r.config_hash), ("run folder", r.report_dir or ""), ("created", r.created),
        ("wall time", f"{r.wall_time_s:.1f} s"), ("warnings", " | ".join(r.all_warnings()) or "none"),
    ]
    return f"<details><summary>{esc(head)}</summary>{_kv(items)}</details>"


def render_page(name: str, *, overview: list[tuple[str, Any]], summary_tables: list[Table],
                group_tables: list[Table], plots: list[tuple[str, Path | None, str]], paired: Table | None,
                paired_notes: list[str], misclassified: list[tuple[str, str, Path | None, str]],
                runs: list[tuple[RunResult, str]], notes: list[str]) -> str:
    """The page as one string. ``misclassified``: (title, text, sheet PNG or None, CSV file name)."""
    nonce = secrets.token_urlsafe(16)
    csp = (f"default-src 'none'; img-src data:; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
           "base-uri 'none'; form-action 'none'")
    sections = [
        ("summary", "Summary", "".join(table_html(t) for t in summary_tables) or '<p class="note">No runs.</p>'),
        ("tables", "Per dataset × size", "".join(table_html(t) for t in group_tables)),
        ("plots", "Plots", "".join(figure_html(*p) for p in plots)),
        ("paired", "Paired comparisons",
         (table_html(paired) if paired is not None and paired.rows else '<p class="note">No pairs of models share a '
          "dataset, size, mode, seed and test set.</p>")
         + "".join(f'<p class="note">{esc(n)}</p>' for n in paired_notes)),
        ("misclassified", "Misclassified by every run", "".join(
            f"<h3>{esc(title)}</h3><p class=\"note\">{esc(text)} Indices: <a href=\"{esc(csv_name)}\">"
            f"{esc(csv_name)}</a>.</p>" + (figure_html(title, sheet, "Test images, captioned with index and true "
                                                       "class.") if sheet else "")
            for title, text, sheet, csv_name in misclassified) or '<p class="note">Nothing to show.</p>'),
        ("provenance", f"Provenance ({len(runs)} runs)", "".join(provenance_html(r, s) for r, s in runs)),
    ]
    if notes:
        sections.append(("notes", "Notes", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"))
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<h2 id="{sid}">{esc(title)}</h2>{html}' for sid, title, html in sections)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'  # no user data in it'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Study {esc(name)}</title><style nonce=\"{nonce}\">{CSS}</style>"
        f'<script nonce="{nonce}">{ERROR_HOOK}</script></head>'
        f'<body data-ready="0" data-js-errors="0"><h1>Study {esc(name)}</h1>'
        f'<p class="meta">Generated {esc(stamp)} from the runs\' results.json files.</p>'
        f"{_kv(overview)}<nav>{nav}</nav>"
        '<ul id="js-errors" hidden></ul>'
        f"{body}"
        f'<script nonce="{nonce}">(window.__pendingErrors||[]).forEach(function(m){{'
        "var b=document.getElementById('js-errors');var li=document.createElement('li');li.textContent=m;"
        "b.appendChild(li);b.hidden=false;document.body.setAttribute('data-js-errors',String(b.children.length));});"
        f"{JS}</script></body></html>\n"
    )
