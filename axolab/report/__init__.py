"""`axolab report`: every run under some result directories, as CSV tables, seaborn plots and
one self-contained HTML page.

Modules, one concern each: ``collect`` finds run directories and reads their files,
``tables`` turns them into tidy DataFrames, ``plots`` draws the figures, ``html`` writes the
page and ``build`` puts it all in place.
"""

from __future__ import annotations

from .errors import ReportError

__all__ = ["ReportError", "build_report", "report_plots"]


def __getattr__(name: str):
    # The CLI imports ReportError for every subcommand; pandas, matplotlib and seaborn take
    # seconds to import, so build_report (which needs them) loads only when asked for.
    if name in ("build_report", "report_plots"):
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
