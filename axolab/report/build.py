"""``build_report``: runs found, tables, figures and page written, all at once or not at all."""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from ..files import replace_directory
from .collect import find_runs
from .errors import ReportError
from .curve_plots import memorization_curve_panels, memorization_curves
from .page import render_page
from .plots import (Plot, exact_by_repetitions, exact_by_trained_occurrences, extraction_curves,
                    loss_curves, mia_roc, throughput)
from .tables import build_tables, extracted_canaries


def make_plots(tables: dict) -> list[Plot]:
    """Every figure of the report, in page order, drawn or skipped."""
    curve = tables["memorization_curve"]
    return [loss_curves(tables["metrics"]), throughput(tables["runs"]),
            exact_by_repetitions(tables["exact_by_repetitions"]),
            exact_by_trained_occurrences(tables["exact_by_trained_occurrences"]),
            memorization_curves(curve),
            *memorization_curve_panels(curve, tables["mia_curve"]),
            extraction_curves(tables["extraction_curves"]), mia_roc(tables["mia_roc"])]


def report_plots(dirs: Iterable[str | Path] | str | Path = ("results",)) -> dict[str, Plot]:
    """The report's figures for the runs under ``dirs``, by name (loss_curves, throughput,
    exact_by_repetitions, exact_by_trained_occurrences, memorization_curve,
    token_match_curve, exposure_curve, mia_auc_curve, extraction_curves, mia_roc), for
    showing in a notebook. The *_curve
    figures are against optimizer step; axolab.report.curve_plots draws them against epoch
    or tokens_seen."""
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    return {p.name: p for p in make_plots(build_tables(find_runs([Path(d) for d in dirs])))}


def build_report(dirs: Iterable[str | Path] | str | Path = ("results",),
                 out: str | Path = "results/report") -> Path:
    """Aggregate every run under ``dirs`` into ``out``; returns ``out``.

    ``out`` receives ``tables/*.csv``, ``plots/*.png`` and ``index.html``. Everything is
    written into a hidden sibling directory that is renamed to ``out`` at the end, so a report
    that fails leaves nothing behind and one that succeeds replaces an earlier report whole.
    Raises ReportError for bad input (no runs, a missing directory, an unreadable file) and
    when ``out`` exists but is not an earlier report, which it will not replace.
    """
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]  # a lone path, not an iterable of its characters
    dirs = [Path(d) for d in dirs]
    out = Path(out)
    runs = find_runs(dirs)
    _check_replaceable(out)
    tables = build_tables(runs)
    plots = make_plots(tables)
    extracted, extracted_total = extracted_canaries(tables["memorization"])
    page = render_page(plots, tables["runs"], extracted, extracted_total, [str(d) for d in dirs],
                       datetime.now(timezone.utc))

    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside out, so the final rename stays on one file system; hidden, so a report of the
    # same results directory running meanwhile does not search it. Not mkdtemp: its 0700
    # mode would make the report unreadable to others where the umask says otherwise.
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        (tmp / "tables").mkdir()
        for name, frame in tables.items():
            frame.to_csv(tmp / "tables" / f"{name}.csv", index=False)
        (tmp / "plots").mkdir()
        for plot in plots:
            if plot.png is not None:
                (tmp / "plots" / f"{plot.name}.png").write_bytes(plot.png)
        (tmp / "index.html").write_text(page, encoding="utf-8")
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_report(path: Path) -> bool:
    """Whether ``path`` looks like a directory this module wrote."""
    return (path / "index.html").is_file() and (path / "tables").is_dir()


def _check_replaceable(out: Path) -> None:
    # An earlier report is replaced; anything else at that path is someone's work.
    if out.exists() and not (out.is_dir() and (is_report(out) or not any(out.iterdir()))):
        raise ReportError(f"{out}: exists and is not an earlier report (no index.html and "
                          "tables/); refusing to replace it, choose another --out")


