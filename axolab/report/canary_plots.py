"""Figures of a dataset's canary schedule (before any training): how many canaries sit at
each repetition count, and whether each was injected as often as scheduled."""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from .plots import Plot, _figure, _png, _style


def schedule_plot(table: pd.DataFrame) -> Plot:
    """Two panels from ``axolab.data.canary_table``: canaries per repetition count by kind
    (controls at 0), and injected vs scheduled occurrences per canary (on the diagonal when
    the build placed every copy)."""
    plot = Plot("canary_schedule", "Canary schedule",
                "Left: canaries per repetition count and kind (0: controls, never injected). "
                "Right: occurrences placed in the training data against the schedule.")
    with _style():
        fig, (left, right) = _figure(2, ncols=2, width=5.0)
        counts = table.groupby(["repetitions", "kind"]).size().rename("canaries").reset_index()
        sns.barplot(counts, x="repetitions", y="canaries", hue="kind", ax=left)
        left.set_xlabel("scheduled repetitions")
        sns.scatterplot(table, x="repetitions", y="injected", hue="kind", ax=right, legend=False)
        top = max(1, int(table["repetitions"].max()))
        right.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
        right.set_xlabel("scheduled repetitions")
        right.set_ylabel("occurrences injected")
    return Plot(plot.name, plot.title, plot.caption, png=_png(fig))
