"""Figures of memorization over training, from the ``memorization_curve`` and ``mia_curve``
tables (the curve files of docs/memorization-files.md): one figure per metric, a panel per
(model, loss), in-training probes as lines and evaluated checkpoints as markers."""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, MaxNLocator

from .plots import Plot, _done, _figure, _labelled, _numbers, _skip, _style
from .tables import CURVE_POSITION, MIA_SCORES, has_values

X_LABELS = {"step": "optimizer step", "epoch": "epoch", "tokens_seen": "tokens seen"}
NO_CURVES = ("no run has a memorization curve (memorization_curve.jsonl or "
             "checkpoint_curve.jsonl)")
HOW_TO_READ = ("One panel per model (rows) and loss (columns); lines are in-training probes "
               "(memorization_curve.jsonl), markers evaluations of kept checkpoints "
               "(checkpoint_curve.jsonl), joined by lines where a run has no probes.")


def memorization_curves(table: pd.DataFrame, x: str = "step") -> Plot:
    """Exact-match rate against training progress ``x`` ("step", "epoch" or "tokens_seen"),
    a line per repetition count (0: controls), a panel per (model, loss)."""
    plot = Plot("memorization_curve", "Memorization over training",
                "Share of canaries whose suffix greedy decoding reproduced exactly, against "
                f"training progress, a line per repetition count in the training data (darker: "
                f"more repetitions; 0: controls, never trained on, the floor). {HOW_TO_READ}")
    return _by_repetitions(plot, table, x, "exact", "exact-match rate", (-0.02, 1.02))


def memorization_curve_panels(table: pd.DataFrame, mia_table: pd.DataFrame,
                              x: str = "step") -> list[Plot]:
    """The other metrics of the curve files, one figure each, laid out like
    memorization_curves: token match, exposure (secret canaries only) and MIA AUC."""
    return [
        _by_repetitions(Plot("token_match_curve", "Token match over training",
                             "Mean share of suffix tokens greedy decoding reproduced at their "
                             "position, against training progress, a line per repetition "
                             "count (darker: more repetitions; 0: controls). It rises before "
                             f"exact match does. {HOW_TO_READ}"),
                        table, x, "token_match", "token-match rate", (-0.02, 1.02)),
        _by_repetitions(Plot("exposure_curve", "Exposure over training",
                             "Exposure of secret canaries (bits: log2 of the candidate count "
                             "minus log2 of the secret's rank among them; higher means the "
                             "model singles the secret out), against training progress, a "
                             f"line per repetition count. {HOW_TO_READ}"),
                        table, x, "exposure", "exposure (bits)", (0, None)),
        mia_auc_curves(mia_table, x),
    ]


def mia_auc_curves(table: pd.DataFrame, x: str = "step") -> Plot:
    """Membership-inference ROC AUC against training progress, a line per score."""
    plot = Plot("mia_auc_curve", "Membership inference over training",
                "ROC AUC of each membership score (injected canaries against controls) "
                "against training progress, a line per score; the dashed line at 0.5 is "
                f"chance. {HOW_TO_READ}")
    _check_x(x)
    if not has_values(table, x, "auc"):
        return _skip(plot, _why(table, x, "mia_auc with both members and controls"))
    data = _labelled(_numbers(table, x, "auc"))
    present = list(data["score"].astype(str).unique())
    scores = [s for s in MIA_SCORES if s in present] + sorted(set(present) - set(MIA_SCORES))
    palette = dict(zip(scores, sns.color_palette("tab10", len(scores))))
    return _draw(plot, data.assign(score=data["score"].astype(str)), x, "auc", "score",
                 palette, "ROC AUC", (-0.02, 1.02), chance=0.5)


def _by_repetitions(plot: Plot, table: pd.DataFrame, x: str, y: str, ylabel: str,
                    ylim: tuple) -> Plot:
    _check_x(x)
    if not has_values(table, x, y, "repetitions"):
        return _skip(plot, _why(table, x, f"{y} by repetitions"))
    data = _labelled(_numbers(table, x, y, "repetitions"))
    # Every count of the table, not only those with a value of y (exposure has few): a count
    # keeps its colour from one figure to the next. Categories, not numbers: seaborn would
    # otherwise spread a colour map over 0..max, so 1, 2 and 4 repetitions would all but
    # share the colour of the controls. Sequential, so the legend still reads as an order.
    counts = sorted(set(pd.to_numeric(table["repetitions"], errors="coerce").dropna()
                        .astype(int)))
    palette = dict(zip(map(str, counts), sns.color_palette("crest", len(counts))))
    data = data.assign(repetitions=data["repetitions"].astype(int).astype(str))
    return _draw(plot, data, x, y, "repetitions", palette, ylabel, ylim)


def _draw(plot: Plot, data: pd.DataFrame, x: str, y: str, hue: str, palette: dict,
          ylabel: str, ylim: tuple, chance: float | None = None) -> Plot:
    models, losses = sorted(data["model"].unique()), sorted(data["loss"].unique())
    order = list(palette)
    with _style():
        fig, axes = _figure(len(models) * len(losses), ncols=len(losses), width=4.6,
                            height=3.4)
        for i, ax in enumerate(axes):
            model, loss = models[i // len(losses)], losses[i % len(losses)]
            facet = data[(data["model"] == model) & (data["loss"] == loss)]
            if not len(facet):
                ax.set_visible(False)  # this model was not trained with this loss
                continue
            probes, checkpoints = (facet[facet["source"] == s] for s in ("probe", "checkpoint"))
            common = dict(x=x, y=y, hue=hue, hue_order=order, palette=palette, legend=False,
                          ax=ax)
            # Lines per run (units): two runs of one model and loss are two curves, not
            # one averaged with a confidence band.
            if len(probes):
                sns.lineplot(data=probes, units="run", estimator=None, **common)
            # A run evaluated only at its checkpoints: thin lines join its markers, else a
            # few scattered points would hide which way memorization went.
            alone = checkpoints[~checkpoints["run"].isin(probes["run"])]
            if len(alone):
                sns.lineplot(data=alone, units="run", estimator=None, linewidth=1, **common)
            if len(checkpoints):
                sns.scatterplot(data=checkpoints, s=40, edgecolor="black", zorder=3, **common)
            if chance is not None:
                ax.axhline(chance, linestyle="--", color="grey", linewidth=1)
            ax.set(title=f"{model} | {loss}", xlabel=X_LABELS[x], ylabel=ylabel, ylim=ylim)
            if x != "epoch":
                ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # no step 7.5
            if x == "tokens_seen":
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 80k, 1.2M: no overlap
        shown = {level: color for level, color in palette.items() if level in set(data[hue])}
        _legend(fig, shown, hue, sources=set(data["source"]))
        return _done(plot, fig)


def _legend(fig, palette: dict, title: str, sources: set) -> None:
    """One legend for the whole figure: the hue levels, then what lines and markers mean."""
    handles = [Line2D([], [], color=color, label=label) for label, color in palette.items()]
    if "probe" in sources:
        handles.append(Line2D([], [], color="black", label="probe (line)"))
    if "checkpoint" in sources:
        handles.append(Line2D([], [], color="black", marker="o", linestyle="",
                              markerfacecolor="white", label="checkpoint (marker)"))
    fig.legend(handles=handles, title=title, loc="outside right upper", fontsize="small")


def _check_x(x: str) -> None:
    if x not in CURVE_POSITION:
        raise ValueError(f"x={x!r}: expected one of {', '.join(CURVE_POSITION)}")


def _why(table: pd.DataFrame, x: str, what: str) -> str:
    if not len(table):
        return NO_CURVES
    if not has_values(table, x):
        return f"no curve record has {x!r}"
    return f"no curve record has {what}"
