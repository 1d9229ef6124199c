"""The report as one self-contained HTML page: PNGs as base64 data URIs, CSS and script
inline, nothing fetched from anywhere, so the file can be mailed or archived on its own.

Every string that reaches the page (run names, model paths, canary ids, notebook parameters)
comes from result files and is escaped; none of it is trusted markup.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime
from typing import Iterable

import numpy as np
import pandas as pd

from .plots import Plot

# The page needs nothing but itself; the policy makes a browser refuse anything else, should
# a future edit (or a string that slipped through unescaped) try to load it.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
.meta { color: #666; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.text { text-align: left; }
figure { margin: 2em 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #444; max-width: 60em; }
.skipped { color: #a60; }
"""

# Lets a headless browser check that every embedded image decoded: it reads these attributes
# from the dumped DOM.
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) {
    return img.complete && img.naturalWidth > 0;
  }).length;
  document.body.setAttribute("data-images-loaded", loaded);
  document.body.setAttribute("data-images-total", images.length);
});
"""


def render_page(plots: list[Plot], runs: pd.DataFrame, extracted: pd.DataFrame,
                extracted_total: int, sources: Iterable[str], generated: datetime) -> str:
    """The whole page as a string. ``extracted`` is the (possibly truncated) table of
    canaries reproduced exactly, ``extracted_total`` how many there were in all."""
    e = html.escape
    where = ", ".join(f"<code>{e(str(s))}</code>" for s in sources)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Memorization report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Memorization report</h1>",
        f'<p class="meta">Generated {e(generated.isoformat(timespec="seconds"))} from '
        f"{len(runs)} run(s) found under {where}. Every table is also in <code>tables/"
        "</code> as CSV, every figure in <code>plots/</code> as PNG.</p>",
        "<h2>Runs</h2>",
        "<p>One row per run. Throughput medians leave out warm-up (the first step and the first 10% of steps); "
        "<code>*_at_max_repetitions</code> are for the most repeated canaries; "
        "<code>mia_&lt;score&gt;_auc</code> is the membership-inference ROC AUC.</p>",
        table_html(runs),
        "<h2>Figures</h2>",
    ]
    parts += [_figure(p) for p in plots]
    parts.append("<h2>Extracted canaries</h2>")
    if extracted_total:
        shown = (f"the {len(extracted)} with the fewest repetitions" if
                 len(extracted) < extracted_total else "all of them")
        parts.append(f"<p>{extracted_total} canary record(s) had their suffix reproduced "
                     f"exactly; showing {shown}. All canaries are in "
                     "<code>tables/memorization.csv</code>.</p>")
        parts.append(table_html(extracted))
    else:
        parts.append("<p>No canary was reproduced exactly (or no run has "
                     "memorization.jsonl).</p>")
    parts.append(f"<script>{SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _figure(plot: Plot) -> str:
    e = html.escape
    if plot.png is None:
        return (f'<section class="skipped" id="{e(plot.name)}"><h3>{e(plot.title)}</h3>'
                f"<p>Not drawn: {e(plot.skipped or 'no data')}.</p></section>")
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure id="{e(plot.name)}"><h3>{e(plot.title)}</h3>'
            f'<img alt="{e(plot.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(plot.caption)}</figcaption></figure>")


def table_html(frame: pd.DataFrame) -> str:
    """A DataFrame as an HTML table, every header and cell escaped."""
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for value in record:
            text = _cell(value)
            cls = ' class="text"' if isinstance(value, str) else ""
            cells.append(f"<td{cls}>{e(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _cell(value) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        # Whole numbers (steps, batch sizes in a column with gaps) read best without
        # exponents; so do large rates such as tokens/s.
        if value.is_integer() or abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.4g}"
    return str(value)
