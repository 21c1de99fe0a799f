"""HTML building blocks of the report: escaping, tables, embedded images, the page.

The page is one self-contained file: inline CSS, images as base64 data URIs, no scripts and
no external assets, so it can be mailed, attached to an issue or opened offline years later.
Everything that comes from a run (prompts, responses, metric names) goes through `esc`:
model output is untrusted text.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["esc", "fmt", "table_html", "image_html", "section_html", "page_html",
           "comparison_html", "eval_html", "CSS"]

MAX_CELL_CHARS = 600   # a table cell longer than this is cut: a report is read, not searched

CSS = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2328;
 max-width:1250px;margin:0 auto;padding:1.5em 2em 4em;background:#fff}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;
 margin-top:2.2em} h3{margin-top:1.6em} .sub{color:#59636e;margin-top:0}
nav{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.5em 1em;margin:1em 0}
nav a{margin-right:1.2em;white-space:nowrap}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#f6f8fa} tr:nth-child(even) td{background:#fbfcfd}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.text{white-space:pre-wrap;max-width:38em;word-break:break-word}
img{max-width:100%;border:1px solid #eaeef2;border-radius:4px;margin:.4em 0}
ul.signals{font-size:.9em;color:#3d444d} ul.signals code{color:#0550ae}
.note{color:#59636e;font-size:.9em} details{margin:1em 0} pre{background:#f6f8fa;padding:.8em;
 overflow-x:auto;font-size:.85em}
.tokview{border:1px solid #d0d7de;border-radius:6px;padding:.6em .8em;margin:1em 0}
.tv-head{font-weight:600;margin-bottom:.3em} .tv-prompt{font-size:.9em;color:#3d444d;
 margin-bottom:.5em;white-space:pre-wrap} .tv-facts{float:right;color:#59636e}
.tv-grid{display:grid;grid-template-columns:6.5em 4.5em 1fr;gap:.35em .4em;align-items:start}
.tv-label{font-weight:600;font-size:.9em;padding-top:.15em;cursor:help}
.tv-scale{font-size:.75em;color:#59636e;padding-top:.35em;font-variant-numeric:tabular-nums}
.tv-row{display:flex;flex-wrap:wrap;gap:2px} .tv-none{color:#59636e;font-style:italic;font-size:.9em}
.chip{font:13px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;padding:0 3px;
 border:1px solid #e1e4e8;border-radius:3px;white-space:pre}
.chip .sp{opacity:.45}
.tv-legend{font-size:.8em;color:#59636e;margin-top:.5em}
.tv-bar{display:inline-block;width:9em;height:.8em;vertical-align:middle;margin:0 .3em;
 border:1px solid #d0d7de}
"""


def esc(value) -> str:
    """HTML-escaped text of any value (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    """Display text of a value: 4 significant digits for floats, JSON for containers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _cell(value) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = fmt(value)
    if len(text) > MAX_CELL_CHARS:
        text = text[:MAX_CELL_CHARS] + " …"
    return f'<td class="{"num" if numeric else "text"}">{esc(text)}</td>'


def table_html(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
               labels: Mapping[str, str] | None = None) -> str:
    """A table of dict rows. `columns` defaults to every key seen, in first-seen order;
    `labels` renames headers. Missing cells are empty; every cell is escaped."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update((k, None) for k in row)
        columns = list(seen)
    labels = labels or {}
    head = "".join(f"<th>{esc(labels.get(c, c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image_html(path: str | Path, alt: str) -> str:
    """An <img> holding the PNG itself as a base64 data URI (no file needed next to the page)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def section_html(title: str, body: str, anchor: str, level: int = 2) -> str:
    return f'<section id="{esc(anchor)}"><h{level}>{esc(title)}</h{level}>\n{body}\n</section>'


def page_html(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole page; `sections` are (anchor, title, body html), listed in a top nav bar."""
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(name)}</a>' for anchor, name, _ in sections)
    body = "\n".join(section_html(name, html_body, anchor) for anchor, name, html_body in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p><nav>{nav}</nav>\n"
            f"{body}\n</body></html>\n")


def comparison_html(before: Mapping, after: Mapping) -> str:
    """metric | before | after | change, over the union of keys (change for numbers only)."""
    rows = []
    for key in dict.fromkeys([*before, *after]):
        b, a = before.get(key), after.get(key)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        rows.append({"metric": key, "before": b, "after": a, "change": a - b if numbers else None})
    return table_html(rows, ["metric", "before", "after", "change"])


def eval_html(data: Mapping) -> str:
    """An `eval.json`: its before/after summary, its sample rows as a table (any columns),
    then any other top-level entry (numbers in a table, the rest as JSON)."""
    parts = []
    if isinstance(data.get("before"), Mapping) and isinstance(data.get("after"), Mapping):
        parts.append(comparison_html(data["before"], data["after"]))
    samples = data.get("samples")
    if isinstance(samples, list) and samples and all(isinstance(r, Mapping) for r in samples):
        parts.append(f"<h3>Samples before and after</h3>{table_html(samples)}")
    rest = {k: v for k, v in data.items() if k not in ("before", "after", "samples")}
    scalars = [{"entry": k, "value": v} for k, v in rest.items() if not isinstance(v, (dict, list))]
    if scalars:
        parts.append(table_html(scalars))
    for key, value in rest.items():
        if isinstance(value, (dict, list)):
            text = json.dumps(value, indent=2, ensure_ascii=False)
            parts.append(f"<h3>{esc(key)}</h3><pre>{esc(text)}</pre>")
    return "\n".join(parts) or '<p class="note">eval.json is empty.</p>'
