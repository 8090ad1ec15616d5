"""plan.html: the plan as one self-contained page, read before pressing go.

Everything is in the file: inline CSS, inline JavaScript, an inline SVG chart, no fonts,
images or scripts from elsewhere (a Content-Security-Policy forbids any fetch). The header,
chart, schema, lossy-value and coverage sections are rendered here, escaped with
`html.escape`. The records (up to hundreds of thousands) travel as JSON in a
`<script type="application/json">` block and are drawn by a small script 200 rows a page,
with `textContent` only, so a name like `<script>` stays text.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any, TextIO

from migrate.report.plan import ACTIONS, PlanRecords, plan_entities

# Table order: what needs a decision first (then any other action).
DISPLAY_ORDER = ("conflict", "update", "create", "skip", "unchanged")
COLOURS = {"create": "#2e7d32", "update": "#1565c0", "unchanged": "#8a9099", "skip": "#b26a00", "conflict": "#c62828"}
EXTRA_COLOUR = "#6a1b9a"
MAX_VALUE_CHARS = 1000
PAGE_SIZE = 200
# Nothing may be fetched: no network, no other file. Inline style and script only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def write_plan_html(out: TextIO, plan: dict[str, Any], records: PlanRecords, *, page_size: int = PAGE_SIZE) -> None:
    """The whole page, written as the records are read (a million-record plan is not held)."""
    entities = plan_entities(plan, records)
    actions = [*ACTIONS, *(a for a in records.actions() if a not in ACTIONS)]
    summary = {e: {a: int((plan.get("summary", {}).get(e) or {}).get(a, 0)) for a in actions} for e in entities}
    colours = {a: COLOURS.get(a, EXTRA_COLOUR) for a in actions}
    totals = {a: sum(summary[e][a] for e in entities) for a in actions}
    badge_css = "\n".join(f".b-{_css_ident(a)}{{background:{c}}}" for a, c in colours.items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        "<title>Migration plan</title>",
        f"<style>{_CSS}\n{badge_css}</style>",
        "</head><body>",
        _nav(plan),
        "<main>",
        _header(plan, actions, totals, colours),
        _chart(entities, actions, summary, colours),
        _records_section(entities, actions),
        _schema(plan.get("schema") or {}),
        _lossy(plan.get("lossy") or {}),
        _coverage(plan["coverage"]) if "coverage" in plan else "",
        "</main>",
    ]
    out.write("\n".join(p for p in parts if p) + "\n")
    out.write('<script type="application/json" id="plan-data">')
    head = _json_for_script({"actions": actions, "entities": entities, "page_size": page_size})
    out.write(head[:-1] + ',"records":{')
    index = {a: n for n, a in enumerate(actions)}
    others = [a for a in actions if a not in DISPLAY_ORDER]
    groups = [[a] for a in DISPLAY_ORDER] + ([others] if others else [])  # what needs a decision first
    for n, entity in enumerate(entities):
        out.write(("," if n else "") + _json_for_script(entity) + ":[")
        first = True
        for group in groups:
            for record in records.of(entity, group):
                out.write(("" if first else ",") + _json_for_script(_row(record, index)))
                first = False
        out.write("]")
    out.write("}}</script>\n")
    out.write(f"<script>{_JS}</script>\n</body></html>\n")


# -- data ----------------------------------------------------------------------------------


def _row(record: dict[str, Any], index: dict[str, int]) -> list[Any]:
    """A record as [action index, name, Pipedrive id, reason, changes, target edits, warning],
    changes as [field, before, after] display strings."""
    return [
        index[str(record.get("action"))],
        _text(record.get("name")),
        _text(record.get("source_id")),
        _text(record.get("reason")),
        _diffs(record.get("changes")),
        _diffs(record.get("target_edits")),
        _text(record.get("warning")),
    ]


def _diffs(changes: list[dict[str, Any]] | None) -> list[list[str]]:
    if not changes:
        return []
    return [[_text(c.get("field")), _text(c.get("before")), _text(c.get("after"))] for c in changes]


def _text(value: Any) -> str:
    """A value as shown: '' for nothing, lists comma-joined, long text cut (plan.json has it whole)."""
    if type(value) is str:
        text = value
    elif value is None:
        return ""
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, list):
        text = ", ".join(_text(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    else:
        text = str(value)
    if len(text) > MAX_VALUE_CHARS:
        text = f"{text[:MAX_VALUE_CHARS]}… ({len(text) - MAX_VALUE_CHARS:,} more characters in plan.json)"
    return text


def _json_for_script(data: Any) -> str:
    """JSON that cannot end its <script> element or open a comment: <, > and & as \\u escapes."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _css_ident(action: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in action)


def _e(value: Any) -> str:
    return escape(_text(value), quote=True)


def _n(value: int) -> str:
    return f"{value:,}"


# -- sections ------------------------------------------------------------------------------


def _nav(plan: dict[str, Any]) -> str:
    links = [("summary", "Summary"), ("records", "Records"), ("schema", "Schema"), ("lossy", "Values not carried exactly")]
    if "coverage" in plan:
        links.append(("coverage", "Coverage"))
    return "<nav>" + "".join(f'<a href="#{k}">{escape(label)}</a>' for k, label in links) + "</nav>"


def _header(plan: dict[str, Any], actions: list[str], totals: dict[str, int], colours: dict[str, str]) -> str:
    fingerprints = plan.get("fingerprints") or {}
    meta = [("Generated", plan.get("generated_at")), ("Plan version", plan.get("version"))]
    meta += [(f"{side.capitalize()} fingerprint", value) for side, value in fingerprints.items()]
    rows = "".join(f"<dt>{escape(k)}</dt><dd><code>{_e(v)}</code></dd>" for k, v in meta if v not in (None, ""))
    cards = "".join(
        f'<div class="card" data-action="{escape(a)}"><span class="card-n" style="color:{colours[a]}">{_n(totals[a])}</span>'
        f'<span class="badge b-{_css_ident(a)}">{escape(a)}</span></div>'
        for a in actions
    )
    total = sum(totals.values())
    return (
        '<header id="summary"><h1>Migration plan</h1>'
        f'<p class="lead">What <code>migrate run</code> would do to {_n(total)} records. Nothing has been written yet.</p>'
        f'<dl class="meta">{rows}</dl><div class="cards" id="totals">{cards}</div></header>'
    )


def _chart(entities: list[str], actions: list[str], summary: dict[str, dict[str, int]], colours: dict[str, str]) -> str:
    label_w, bar_w, count_w, row_h, gap = 120, 460, 90, 22, 8
    width = label_w + bar_w + count_w
    height = len(entities) * (row_h + gap) + gap
    biggest = max([sum(summary[e].values()) for e in entities] + [1])
    rows = []
    for n, entity in enumerate(entities):
        y = gap + n * (row_h + gap)
        total = sum(summary[entity].values())
        x = float(label_w)
        segments = []
        for action in actions:
            count = summary[entity][action]
            if not count:
                continue
            w = max(bar_w * count / biggest, 2.0)
            segments.append(
                f'<rect class="seg" data-action="{escape(action)}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h}" '
                f'fill="{colours[action]}"><title>{escape(entity)}: {_n(count)} {escape(action)}</title></rect>'
            )
            x += w
        rows.append(
            f'<g class="chart-row" data-entity="{escape(entity)}">'
            f'<text x="{label_w - 8}" y="{y + row_h * 0.7:.1f}" text-anchor="end">{escape(entity)}</text>'
            + "".join(segments)
            + f'<text x="{x + 6:.1f}" y="{y + row_h * 0.7:.1f}" class="chart-total">{_n(total)}</text></g>'
        )
    legend = "".join(
        f'<li><span class="swatch" style="background:{colours[a]}"></span>{escape(a)}</li>' for a in actions
    )
    table_head = "".join(f"<th>{escape(a)}</th>" for a in actions)
    table_rows = "".join(
        f"<tr><th>{escape(e)}</th>" + "".join(f"<td>{_n(summary[e][a])}</td>" for a in actions) + "</tr>" for e in entities
    )
    return (
        '<section id="chart-section"><h2>Actions per entity</h2>'
        f'<svg id="chart" role="img" aria-label="Actions per entity" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        + "".join(rows)
        + f'</svg><ul class="legend" id="legend">{legend}</ul>'
        f'<table class="summary"><thead><tr><th>entity</th>{table_head}</tr></thead><tbody>{table_rows}</tbody></table></section>'
    )


def _records_section(entities: list[str], actions: list[str]) -> str:
    tabs = "".join(
        f'<button type="button" role="tab" class="tab" id="tab-{escape(e)}" data-entity="{escape(e)}" aria-selected="false">'
        f'{escape(e)} <span class="count"></span></button>'
        for e in entities
    )
    checks = "".join(
        f'<label class="check"><input type="checkbox" name="action" value="{escape(a)}" checked>'
        f'<span class="badge b-{_css_ident(a)}">{escape(a)}</span> <span class="action-count" data-action="{escape(a)}"></span></label>'
        for a in actions
    )
    return (
        '<section id="records"><h2>Records</h2>'
        f'<div role="tablist" class="tabs" id="tabs">{tabs}</div>'
        '<div class="filters">'
        '<input type="search" id="search" placeholder="Search name, Pipedrive id or field text  ( / )" '
        'aria-label="Search records" autocomplete="off" spellcheck="false">'
        f'<fieldset id="action-filter"><legend>Show</legend>{checks}'
        '<button type="button" id="all-actions">all</button><button type="button" id="no-actions">none</button></fieldset>'
        "</div>"
        '<p id="status" aria-live="polite"></p>'
        '<table class="records" id="records-table"><thead><tr><th>action</th><th>name</th><th>Pipedrive id</th>'
        '<th>details</th></tr></thead><tbody id="rows"></tbody></table>'
        '<div class="pager"><button type="button" id="prev">‹ previous</button><span id="page"></span>'
        '<button type="button" id="next">next ›</button></div>'
        '<noscript><p class="warn">The record tables need JavaScript; plan.json holds every record.</p></noscript>'
        "</section>"
    )


def _schema(schema: dict[str, Any]) -> str:
    columns = list(schema.get("columns_to_create") or [])
    column_renames = list(schema.get("columns_to_rename") or [])
    options = list(schema.get("options_to_add") or [])
    renames = list(schema.get("options_to_rename") or [])
    out = ['<section id="schema"><h2>Schema changes</h2>']
    out.append(f'<h3>Custom columns to create <span class="muted">({_n(len(columns))})</span></h3>')
    out.append(_grouped_list(columns, "schema-columns") if columns else '<p class="muted">None.</p>')
    out.append(f'<h3>Columns to rename <span class="muted">({_n(len(column_renames))})</span></h3>')
    out.append(_grouped_list(column_renames, "schema-column-renames") if column_renames else '<p class="muted">None.</p>')
    out.append(f'<h3>Options to add <span class="muted">({_n(len(options))})</span></h3>')
    out.append(_grouped_list(options, "schema-options") if options else '<p class="muted">None.</p>')
    out.append(f'<h3>Options to rename <span class="muted">({_n(len(renames))})</span></h3>')
    out.append(_grouped_list(renames, "schema-renames") if renames else '<p class="muted">None.</p>')
    out.append("</section>")
    return "".join(out)


def _grouped_list(items: list[Any], element_id: str) -> str:
    """Items written 'entity: rest' grouped under their entity; others listed as they are."""
    groups: dict[str, list[str]] = {}
    for item in items:
        text = _text(item)
        head, sep, rest = text.partition(": ")
        key, shown = (head, rest) if sep and head.isidentifier() else ("", text)
        groups.setdefault(key, []).append(shown)
    blocks = []
    for key, shown in groups.items():
        title = f"<h4>{escape(key)} <span class=\"muted\">({_n(len(shown))})</span></h4>" if key else ""
        blocks.append(f'<div class="group">{title}<ul>' + "".join(f"<li>{escape(s)}</li>" for s in shown) + "</ul></div>")
    return f'<div class="groups" id="{element_id}">' + "".join(blocks) + "</div>"


def _lossy(lossy: dict[str, Any]) -> str:
    out = ['<section id="lossy"><h2>Values not carried exactly</h2>']
    if not lossy:
        out.append('<p class="muted">None: every value is carried exactly.</p></section>')
        return "".join(out)
    out.append('<table class="lossy"><thead><tr><th>rule</th><th>count</th><th>examples</th></tr></thead><tbody>')
    for rule, info in lossy.items():
        info = info if isinstance(info, dict) else {"count": info, "examples": []}
        examples = []
        for ex in info.get("examples") or []:
            if isinstance(ex, dict):
                where = " ".join(_text(ex.get(k)) for k in ("entity", "source_id", "field") if ex.get(k) not in (None, ""))
                examples.append(f"<li><span class=\"where\">{escape(where)}</span>: <bdi>{_e(ex.get('detail'))}</bdi></li>")
            else:
                examples.append(f"<li><bdi>{_e(ex)}</bdi></li>")
        count = info.get("count")
        out.append(
            f'<tr><td><code>{_e(rule)}</code></td><td class="num">{_n(count) if isinstance(count, int) else _e(count)}</td>'
            f"<td><ul>{''.join(examples)}</ul></td></tr>"
        )
    out.append("</tbody></table></section>")
    return "".join(out)


def _coverage(coverage: Any) -> str:
    out = ['<section id="coverage"><h2>Coverage</h2>']
    if isinstance(coverage, dict):
        for name, value in coverage.items():
            out.append(f"<h3>{_e(name)}</h3>")
            out.append(_dict_table(value) if _is_rows(value) else f"<p>{_e(value)}</p>")
    elif _is_rows(coverage):
        out.append(_dict_table(coverage) if coverage else '<p class="muted">No fields listed.</p>')
    else:
        out.append(f"<p>{_e(coverage)}</p>")
    out.append("</section>")
    return "".join(out)


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(r, dict) for r in value)


def _dict_table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(_cell(row.get(k)) for k in keys) + "</tr>" for row in rows)
    return f'<table class="coverage"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        shown = _n(value) if isinstance(value, int) else f"{value:,.4f}".rstrip("0").rstrip(".")
        return f'<td class="num">{escape(shown)}</td>'
    return f"<td>{_e(value)}</td>"


_CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#dfe3ea;--bg:#fff;--soft:#f5f7fa;--accent:#1565c0}
*{box-sizing:border-box}
header,section{scroll-margin-top:44px}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif;color:var(--fg);background:var(--bg)}
nav{position:sticky;top:0;z-index:2;background:#1d2330;padding:8px 24px;display:flex;gap:18px}
nav a{color:#e8edf5;text-decoration:none;font-weight:600}nav a:hover{text-decoration:underline}
main{max-width:1200px;margin:0 auto;padding:8px 24px 48px}
h1{margin:16px 0 4px;font-size:26px}h2{margin:32px 0 10px;font-size:20px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px}h4{margin:6px 0 2px;font-size:14px}
.lead{color:var(--muted);margin:0 0 10px}.muted{color:var(--muted);font-weight:normal}
code{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--soft);padding:1px 4px;border-radius:3px;word-break:break-all}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0 14px}dl.meta dt{color:var(--muted)}dl.meta dd{margin:0}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:110px;display:flex;flex-direction:column;align-items:flex-start;gap:4px}
.card-n{font-size:24px;font-weight:700}
.badge{display:inline-block;color:#fff;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600;letter-spacing:.2px;white-space:nowrap}
#chart{max-width:100%;height:auto;display:block}#chart text{font-size:13px;fill:var(--fg)}#chart .chart-total{fill:var(--muted)}
#chart .chart-row{cursor:pointer}#chart .chart-row:hover text{font-weight:700}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:16px;padding:0;margin:6px 0 12px}
.legend li{display:flex;align-items:center;gap:6px}.swatch{width:14px;height:14px;border-radius:3px;display:inline-block}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
thead th{background:var(--soft);font-weight:600;position:sticky;top:36px}
table.summary{width:auto}table.summary td,td.num{text-align:right;font-variant-numeric:tabular-nums}
.tabs{display:flex;flex-wrap:wrap;gap:4px;border-bottom:2px solid var(--line)}
.tab{border:1px solid var(--line);border-bottom:none;background:var(--soft);padding:7px 14px;border-radius:6px 6px 0 0;font:inherit;cursor:pointer;color:var(--fg)}
.tab[aria-selected=true]{background:var(--bg);border-color:var(--accent);border-width:2px 2px 0;font-weight:700;margin-bottom:-2px}
.tab .count{background:#e3e8ef;border-radius:9px;padding:0 7px;margin-left:4px;font-size:12px;font-weight:600}
.filters{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin:12px 0 4px}
#search{flex:1 1 320px;padding:7px 10px;font:inherit;border:1px solid #b8c1cc;border-radius:6px}
fieldset{border:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:10px;align-items:center}
fieldset legend{float:left;color:var(--muted);margin-right:4px}
.check{display:flex;align-items:center;gap:4px;cursor:pointer}.action-count{color:var(--muted);font-size:12px}
fieldset button,.pager button{font:inherit;font-size:12px;padding:3px 10px;border:1px solid #b8c1cc;background:var(--bg);border-radius:5px;cursor:pointer}
#status{color:var(--muted);margin:6px 0}
table.records td.pid{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:nowrap}
table.records td.name{max-width:320px;overflow-wrap:anywhere}.noname{color:var(--muted);font-style:italic}
table.records tr.a-conflict{background:#fff5f5}table.records tr.a-update{background:#f6f9ff}
details summary{cursor:pointer;color:var(--accent)}
ul.diff{margin:4px 0 4px;padding-left:18px}ul.diff li{margin:2px 0;overflow-wrap:anywhere}
.field{font-weight:600}.before{color:#8b1a1a;background:#fdecea;padding:0 3px;border-radius:3px}
.after{color:#1b5e20;background:#e8f5e9;padding:0 3px;border-radius:3px}.empty{color:var(--muted)}
.edits{border-left:3px solid #c62828;padding-left:8px;margin-top:6px}.edits-title{font-weight:600;color:#c62828}
.reason{color:#7a4a00}.warn{color:#b26a00}
.pager{display:flex;gap:12px;align-items:center;justify-content:center;margin:10px 0}
.groups{columns:2 360px;column-gap:32px}.group{break-inside:avoid;margin-bottom:10px}.group ul{margin:2px 0;padding-left:18px}
table.lossy ul{margin:0;padding-left:18px}.where{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:var(--muted)}
"""

_JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("plan-data").textContent);
  var ACTIONS = DATA.actions, PAGE = DATA.page_size || 200;
  var state = { entity: DATA.entities[0], page: 0, query: "", actions: {} };
  var hay = {}, view = [], perAction = [];
  var tabCount = {};
  ACTIONS.forEach(function (a) { state.actions[a] = true; });
  document.querySelectorAll(".tab").forEach(function (t) { tabCount[t.getAttribute("data-entity")] = t.querySelector(".count"); });

  function $(id) { return document.getElementById(id); }
  function num(n) { return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function haystack(entity) {
    if (!hay[entity]) {
      hay[entity] = (DATA.records[entity] || []).map(function (r) {
        var parts = [r[1], r[2], r[3], r[6]];
        [r[4], r[5]].forEach(function (list) { list.forEach(function (c) { parts.push(c[0], c[1], c[2]); }); });
        return parts.join("\u0001").toLowerCase();
      });
    }
    return hay[entity];
  }
  function matches(entity, query) {
    var rows = DATA.records[entity] || [], h = query ? haystack(entity) : null, out = [];
    for (var i = 0; i < rows.length; i++) if (!h || h[i].indexOf(query) !== -1) out.push(i);
    return out;
  }

  function refresh(resetPage) {
    var q = state.query, rows = DATA.records[state.entity] || [];
    if (resetPage) state.page = 0;
    perAction = ACTIONS.map(function () { return 0; });
    view = [];
    matches(state.entity, q).forEach(function (i) {
      var a = rows[i][0];
      perAction[a]++;
      if (state.actions[ACTIONS[a]]) view.push(i);
    });
    DATA.entities.forEach(function (entity) {
      var total = (DATA.records[entity] || []).length;
      var count = tabCount[entity];
      var filtered = !!q || ACTIONS.some(function (a) { return !state.actions[a]; });
      if (!filtered) { count.textContent = num(total); return; }
      var shown = 0, rs = DATA.records[entity] || [];
      matches(entity, q).forEach(function (i) { if (state.actions[ACTIONS[rs[i][0]]]) shown++; });
      count.textContent = num(shown) + " / " + num(total);
    });
    document.querySelectorAll(".action-count").forEach(function (node) {
      node.textContent = "(" + num(perAction[ACTIONS.indexOf(node.getAttribute("data-action"))]) + ")";
    });
    draw();
  }

  function diffList(changes, createOnly) {
    var ul = el("ul", "diff");
    changes.forEach(function (c) {
      var li = el("li");
      li.appendChild(el("span", "field", c[0]));
      li.appendChild(document.createTextNode(": "));
      if (!createOnly) {
        li.appendChild(value(c[1], "before"));
        li.appendChild(document.createTextNode(" \u2192 "));
      }
      li.appendChild(value(c[2], "after"));
      ul.appendChild(li);
    });
    return ul;
  }
  function value(text, cls) {
    var node = el("bdi", text === "" ? "empty" : cls, text === "" ? "\u2205" : text);
    return node;
  }
  function details(r) {
    var action = ACTIONS[r[0]], td = el("td", "detail");
    if (r[3]) td.appendChild(el("span", "reason", r[3]));
    if (r[4].length || r[5].length) {
      var d = el("details"), label;
      if (action === "create") label = r[4].length + " field" + (r[4].length === 1 ? "" : "s") + " to write";
      else if (r[4].length) label = r[4].length + (r[4].length === 1 ? " field would change" : " fields would change");
      else label = "edited in Customermates (kept)";
      d.appendChild(el("summary", null, label));
      if (r[4].length) d.appendChild(diffList(r[4], action === "create"));
      if (r[5].length) {
        var box = el("div", "edits");
        box.appendChild(el("div", "edits-title", "Edited in Customermates since the last run:"));
        box.appendChild(diffList(r[5], false));
        d.appendChild(box);
      }
      td.appendChild(d);
    } else if (!r[3]) {
      td.appendChild(el("span", "empty", "\u2014"));
    }
    return td;
  }
  function draw() {
    var rows = DATA.records[state.entity] || [], body = $("rows"), frag = document.createDocumentFragment();
    var pages = Math.max(1, Math.ceil(view.length / PAGE));
    if (state.page >= pages) state.page = pages - 1;
    var start = state.page * PAGE, end = Math.min(view.length, start + PAGE);
    for (var k = start; k < end; k++) {
      var r = rows[view[k]], action = ACTIONS[r[0]];
      var tr = el("tr", "a-" + action);
      tr.setAttribute("data-action", action);
      tr.setAttribute("data-id", r[2]);
      var badge = el("td");
      badge.appendChild(el("span", "badge b-" + action.replace(/[^A-Za-z0-9]/g, "_"), action));
      tr.appendChild(badge);
      var name = el("td", "name");
      var bdi = el("bdi", r[1] ? "" : "noname", r[1] || "(no name)");
      name.appendChild(bdi);
      if (r[6]) { var w = el("span", "warn", " \u26a0"); w.title = r[6]; name.appendChild(w); }
      tr.appendChild(name);
      tr.appendChild(el("td", "pid", r[2]));
      tr.appendChild(details(r));
      frag.appendChild(tr);
    }
    body.textContent = "";
    body.appendChild(frag);
    var total = rows.length;
    $("status").textContent = view.length
      ? "Showing " + num(start + 1) + "\u2013" + num(end) + " of " + num(view.length) + " " + state.entity +
        (view.length !== total ? " (filtered from " + num(total) + ")" : "")
      : "No " + state.entity + " match" + (total ? " (of " + num(total) + ")" : "") + ".";
    $("page").textContent = "page " + num(state.page + 1) + " of " + num(pages);
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }
  function selectTab(entity) {
    state.entity = entity;
    document.querySelectorAll(".tab").forEach(function (t) {
      t.setAttribute("aria-selected", t.getAttribute("data-entity") === entity ? "true" : "false");
    });
    refresh(true);
  }

  document.querySelectorAll(".tab").forEach(function (t) {
    t.addEventListener("click", function () { selectTab(t.getAttribute("data-entity")); });
  });
  document.querySelectorAll("#chart .chart-row").forEach(function (g) {
    g.addEventListener("click", function () {
      selectTab(g.getAttribute("data-entity"));
      $("records").scrollIntoView();
    });
  });
  var timer = null;
  $("search").addEventListener("input", function (ev) {
    clearTimeout(timer);
    var big = (DATA.records[state.entity] || []).length > 20000;
    timer = setTimeout(function () { state.query = ev.target.value.trim().toLowerCase(); refresh(true); }, big ? 200 : 0);
  });
  document.querySelectorAll('#action-filter input[name="action"]').forEach(function (box) {
    box.addEventListener("change", function () { state.actions[box.value] = box.checked; refresh(true); });
  });
  function setAll(on) {
    document.querySelectorAll('#action-filter input[name="action"]').forEach(function (box) {
      box.checked = on; state.actions[box.value] = on;
    });
    refresh(true);
  }
  $("all-actions").addEventListener("click", function () { setAll(true); });
  $("no-actions").addEventListener("click", function () { setAll(false); });
  $("prev").addEventListener("click", function () { state.page--; draw(); });
  $("next").addEventListener("click", function () { state.page++; draw(); });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "/" && document.activeElement !== $("search")) { ev.preventDefault(); $("search").focus(); }
  });
  selectTab(state.entity);
})();
"""
