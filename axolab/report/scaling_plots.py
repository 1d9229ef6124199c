"""Figures of a scaling sweep (:func:`axolab.scaling.scaling_sweep`): measured against
predicted throughput, per grid and rank count."""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from .plots import Plot, _done, _figure, _skip, _style

NEEDED = ("model", "grid", "ranks", "measured_tokens_per_s", "predicted_tokens_per_s",
          "measured_step_s", "predicted_step_s", "measured_mfu")


def scaling_plot(table: pd.DataFrame) -> Plot:
    """Tokens/s of every grid, measured (bars) and predicted (black markers), a panel per
    model; then predicted against measured step time on log axes, with the diagonal."""
    plot = Plot("scaling", "Scaling sweep: measured vs predicted",
                "Left panels, one per model: tokens per second of each (data, z, y, x) grid, "
                "grouped by rank count; bars are measured (median after warm-up), black "
                "diamonds what the performance model predicts, labels the measured % of peak "
                "FLOP/s. Right: predicted against measured step time, one point per grid; on "
                "the dashed diagonal the model is exact, and a good model keeps the grids in "
                "the same order.")
    missing = [c for c in NEEDED if c not in table]
    if not len(table) or missing:
        return _skip(plot, f"no scaling sweep rows (missing columns: {', '.join(missing)})"
                     if missing else "no scaling sweep rows")
    data = table.sort_values(["model", "ranks", "grid"]).assign(
        label=lambda t: t["ranks"].astype(str) + " | " + t["grid"])
    models = list(dict.fromkeys(data["model"]))
    with _style():
        width = max(4.0, 0.55 * data.groupby("model").size().max() + 1.5)
        fig, axes = _figure(len(models) + 1, ncols=len(models) + 1, width=width, height=4.2)
        for ax, model in zip(axes, models):
            rows = data[data["model"] == model]
            sns.barplot(data=rows, x="label", y="measured_tokens_per_s", hue="ranks",
                        palette="crest", dodge=False, legend=False, ax=ax)
            ax.scatter(range(len(rows)), rows["predicted_tokens_per_s"], marker="D",
                       color="black", zorder=3, label="predicted")
            for i, (tps, mfu) in enumerate(zip(rows["measured_tokens_per_s"],
                                               rows["measured_mfu"])):
                ax.annotate(f"{100 * mfu:.0f}%", (i, tps), ha="center", va="bottom",
                            fontsize="x-small", xytext=(0, 2), textcoords="offset points")
            ax.tick_params(axis="x", rotation=60, labelsize="small")
            top = max(rows["measured_tokens_per_s"].max(), rows["predicted_tokens_per_s"].max())
            ax.set(title=model, xlabel="ranks | grid (data x z x y x x)", ylabel="tokens / s",
                   ylim=(0, 1.25 * top))  # headroom so the legend hides no marker
            ax.legend(loc="upper left", fontsize="small")
        ax = axes[-1]
        sns.scatterplot(data=data, x="measured_step_s", y="predicted_step_s", hue="ranks",
                        style="model", palette="crest", s=60, ax=ax)
        low = min(data["measured_step_s"].min(), data["predicted_step_s"].min()) * 0.8
        high = max(data["measured_step_s"].max(), data["predicted_step_s"].max()) * 1.25
        ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
        ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high),
               xlabel="measured step time (s)", ylabel="predicted step time (s)",
               title="prediction vs measurement", aspect="equal")
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
        return _done(plot, fig)
