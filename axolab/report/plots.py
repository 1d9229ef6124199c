"""The report's seaborn figures, rendered to PNG bytes.

Figures are built on matplotlib's Agg canvas directly rather than through pyplot: nothing is
registered in pyplot's figure list (no figures left open) and the process's backend and rc
settings, a notebook's inline backend say, stay as they were.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .tables import MIA_SCORES, has_values

DPI = 100


@dataclass(frozen=True)
class Plot:
    """One figure of the report: ``png`` is None when no run has the data it needs, and
    ``skipped`` then says which data."""

    name: str
    title: str
    caption: str
    png: bytes | None = field(default=None, repr=False)
    skipped: str | None = None

    def _repr_png_(self) -> bytes | None:
        # A notebook cell whose value is a Plot shows the figure.
        return self.png

    def _repr_markdown_(self) -> str | None:
        return f"*{self.title}: not drawn ({self.skipped})*" if self.png is None else None


@contextlib.contextmanager
def _style():
    # Context managers restore the rc settings afterwards; sns.set_theme would not.
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        yield


def _figure(n: int = 1, ncols: int = 1, width: float = 6.4, height: float = 4.0):
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _palette(names) -> dict:
    names = sorted(set(names))
    colors = sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, colors))


def _run_legend(fig: Figure, palette: dict) -> None:
    """One legend of runs for the whole figure, outside the panels."""
    handles = [Line2D([], [], color=color, label=run) for run, color in palette.items()]
    fig.legend(handles=handles, title="run", loc="outside right upper", fontsize="small")


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """Model and loss as labels: a run without a config.json still gets a point."""
    return frame.assign(model=frame["model"].fillna("?").astype(str),
                        loss=frame["loss"].fillna("?").astype(str))


def _numbers(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    out = frame.copy()
    for c in columns:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out.dropna(subset=list(columns))


def _log2_axis(ax, values) -> None:
    ticks = sorted(set(int(v) for v in values))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def loss_curves(metrics: pd.DataFrame) -> Plot:
    """Training loss against step, a line per run; validation loss as points."""
    plot = Plot("loss_curves", "Loss curves",
                "Training loss at each logged step, one line per run; filled circles are "
                "validation loss where the run evaluated one.")
    if not has_values(metrics, "step", "loss"):
        return _skip(plot, "no run logged a training loss (metrics.jsonl)")
    data = _numbers(metrics, "step", "loss")
    palette = _palette(data["run"])
    with _style():
        fig, (ax,) = _figure(width=8)
        sns.lineplot(data=data, x="step", y="loss", hue="run", palette=palette, estimator=None,
                     errorbar=None, legend=False, ax=ax)
        if has_values(metrics, "step", "val_loss"):
            sns.scatterplot(data=_numbers(metrics, "step", "val_loss"), x="step", y="val_loss",
                            hue="run", palette=palette, edgecolor="black", legend=False, ax=ax)
        ax.set(xlabel="step", ylabel="loss")
        _run_legend(fig, palette)
        return _done(plot, fig)


def throughput(runs: pd.DataFrame) -> Plot:
    """Median tokens/s and % of peak FLOP/s against the number of ranks, a point per run."""
    plot = Plot("throughput", "Throughput",
                "Median training throughput after warm-up (the first step and the first 10% "
                "of steps are left out) against the number of ranks, one point per run: "
                "tokens per second, and model FLOP/s as a percentage of the devices' peak "
                "(MFU).")
    if not has_values(runs, "ranks", "median_tokens_per_s"):
        return _skip(plot, "no run has both a grid in config.json and throughput in "
                           "metrics.jsonl")
    data = _labelled(_numbers(runs, "ranks", "median_tokens_per_s"))
    data["mfu_percent"] = pd.to_numeric(data["median_mfu"], errors="coerce") * 100
    panels = [("median_tokens_per_s", "tokens / s")]
    if data["mfu_percent"].notna().any():
        panels.append(("mfu_percent", "% of peak FLOP/s (MFU)"))
    with _style():
        fig, axes = _figure(len(panels), ncols=len(panels), width=5)
        for i, (ax, (column, label)) in enumerate(zip(axes, panels)):
            sns.scatterplot(data=data, x="ranks", y=column, hue="model", style="loss", s=80,
                            legend=i == len(panels) - 1, ax=ax)
            _log2_axis(ax, data["ranks"])
            ax.set(xlabel="ranks", ylabel=label, ylim=(0, None))
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1))
        return _done(plot, fig)


def _exact_by_count(table: pd.DataFrame, count: str) -> pd.DataFrame | None:
    """The rows with a positive ``count`` (a log2 axis has no 0) and an exact-match rate,
    labelled; None when there are none."""
    data = table[pd.to_numeric(table[count], errors="coerce") > 0]
    return _labelled(_numbers(data, count, "exact")) if has_values(data, count, "exact") \
        else None


def exact_by_repetitions(table: pd.DataFrame) -> Plot:
    """Exact-match rate against how often a canary was repeated in training, a panel per
    canary kind."""
    plot = Plot("exact_by_repetitions", "Exact match by repetitions",
                "Share of canaries whose suffix greedy decoding reproduced exactly, against "
                "how many times each was repeated in the training data (log2 axis), a line per "
                "run: colour is the model, line style the loss. One panel for all canaries, "
                "then one per canary kind. Controls (never in the training data) cannot sit on "
                "a log axis; their rate is exact_controls in the runs table.")
    data = _exact_by_count(table, "repetitions")
    if data is None:
        return _skip(plot, "no run has exact_match_by_repetitions for injected canaries "
                           "(eval.json)")
    if "kind" not in data:
        data = data.assign(kind="all")
    kinds = sorted(data["kind"].astype(str).unique(), key=lambda k: (k != "all", k))
    if len(kinds) == 2:
        kinds = [k for k in kinds if k != "all"]  # one kind: its panel is the "all" panel
    with _style():
        fig, axes = _figure(len(kinds), ncols=min(4, len(kinds)), width=4.6, height=3.8)
        for i, (ax, kind) in enumerate(zip(axes, kinds)):
            sns.lineplot(data=data[data["kind"] == kind], x="repetitions", y="exact",
                         hue="model", style="loss", units="run", estimator=None, markers=True,
                         legend=i == len(kinds) - 1, ax=ax)
            _log2_axis(ax, data["repetitions"])
            ax.set(title="all canaries" if kind == "all" else f"{kind} canaries",
                   xlabel="repetitions per pass over the training data", ylabel="exact-match rate",
                   ylim=(-0.02, 1.02))
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1))
        return _done(plot, fig)


def exact_by_trained_occurrences(table: pd.DataFrame) -> Plot:
    """Exact-match rate against how many times the evaluated model actually trained on each
    canary, a line per run."""
    plot = Plot("exact_by_trained_occurrences", "Exact match by occurrences trained on",
                "Share of injected canaries whose suffix greedy decoding reproduced exactly, "
                "against how many of their occurrences the evaluated checkpoint was trained on "
                "(log2 axis; repetitions x passes, fewer for a run stopped mid-epoch), a line "
                "per run: colour is the model, line style the loss. Canaries not yet trained "
                "on are in the exact_by_trained_occurrences table.")
    data = _exact_by_count(table, "trained_occurrences")
    if data is None:
        return _skip(plot, "no run has trained_occurrences in memorization.jsonl (written by "
                           "`axolab eval` of the run's own checkpoints)")
    with _style():
        fig, (ax,) = _figure(width=7)
        sns.lineplot(data=data, x="trained_occurrences", y="exact", hue="model", style="loss",
                     units="run", estimator=None, markers=True, ax=ax)
        _log2_axis(ax, data["trained_occurrences"])
        ax.set(xlabel="occurrences trained on", ylabel="exact-match rate", ylim=(-0.02, 1.02))
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1))
        return _done(plot, fig)


def extraction_curves(table: pd.DataFrame) -> Plot:
    """Exact-match rate of member canaries against the prefix length given to the model."""
    plot = Plot("extraction_curves", "Extraction curves",
                "Share of injected canaries extracted exactly when the model is given a prefix "
                "of this many tokens, a line per run: longer prefixes usually extract more.")
    if not has_values(table, "prefix_len", "exact"):
        return _skip(plot, "no run has an extraction_curve (eval.json)")
    data = _numbers(table, "prefix_len", "exact")
    palette = _palette(data["run"])
    with _style():
        fig, (ax,) = _figure(width=7)
        sns.lineplot(data=data, x="prefix_len", y="exact", hue="run", palette=palette,
                     marker="o", estimator=None, errorbar=None, legend=False, ax=ax)
        ax.set(xlabel="prefix length (tokens)", ylabel="exact-match rate", ylim=(-0.02, 1.02))
        _run_legend(fig, palette)
        return _done(plot, fig)


def mia_roc(table: pd.DataFrame) -> Plot:
    """ROC curves of each membership score, a panel per score and a line per run."""
    plot = Plot("mia_roc", "Membership inference ROC",
                "ROC curves of membership inference, injected canaries (members) against "
                "controls (non-members), one panel per score and a line per run; the dashed "
                "diagonal is chance. AUCs are in the runs table (mia_<score>_auc).")
    if not has_values(table, "fpr", "tpr"):
        return _skip(plot, "no run has memorization.jsonl with both members and non-members")
    data = _numbers(table, "fpr", "tpr")
    present = list(data["score"].unique())
    scores = [s for s in MIA_SCORES if s in present] + [s for s in present if s not in MIA_SCORES]
    palette = _palette(data["run"])
    ncols = min(4, len(scores))
    with _style():
        fig, axes = _figure(len(scores), ncols=ncols, width=3.6, height=3.6)
        for ax, score in zip(axes, scores):
            # Unsorted and unaggregated: a ROC curve has vertical steps that share one fpr.
            sns.lineplot(data=data[data["score"] == score], x="fpr", y="tpr", hue="run",
                         palette=palette, estimator=None, sort=False, errorbar=None,
                         legend=False, ax=ax)
            ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
            ax.set(title=score, xlabel="false positive rate", ylabel="true positive rate",
                   xlim=(0, 1), ylim=(0, 1), aspect="equal")
        _run_legend(fig, palette)
        return _done(plot, fig)


def _skip(plot: Plot, why: str) -> Plot:
    return Plot(plot.name, plot.title, plot.caption, png=None, skipped=why)


def _done(plot: Plot, fig: Figure) -> Plot:
    return Plot(plot.name, plot.title, plot.caption, png=_png(fig))
