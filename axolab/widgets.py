"""ipywidgets for notebooks on a login node: controls that map onto run parameters, and a
per-canary drill-down. Under papermill nothing here is needed: the notebooks read their
``parameters`` cell; interactively, ``controls.values()`` overrides those same names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .grid_shape import GridShape

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Controls:
    """A box of widgets and the parameter names they set."""

    widget: Any
    fields: dict[str, Any]

    def values(self) -> dict[str, Any]:
        """Current values, typed like the parameters (grid as a list of 4 ints)."""
        out = {name: w.value for name, w in self.fields.items()}
        if "grid" in out:
            out["grid"] = list(GridShape.parse(out["grid"]).dims)
        return out


def run_controls(model: str = "tiny-llama", recipe: str = "data_recipes/tiny.yaml",
                 loss: str = "standard", goldfish_k: int = 4, grid=(1, 1, 1, 1),
                 steps: int = 50) -> Controls:
    """Model preset, recipe, loss, goldfish k, grid and steps, starting at the given values."""
    import ipywidgets as w

    from .presets import PRESETS

    recipes = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "data_recipes").glob("*.yaml"))
    if recipe not in recipes:
        recipes.insert(0, recipe)
    fields = {
        "model": w.Dropdown(options=list(PRESETS), value=model, description="model"),
        "recipe": w.Dropdown(options=recipes, value=recipe, description="recipe"),
        "loss": w.ToggleButtons(options=["standard", "goldfish"], value=loss,
                                description="loss"),
        "goldfish_k": w.IntSlider(value=goldfish_k, min=2, max=16, description="goldfish k"),
        "grid": w.Text(value=",".join(map(str, grid)), description="grid d,z,y,x"),
        "steps": w.IntText(value=steps, description="steps"),
    }
    return Controls(w.VBox(list(fields.values())), fields)


def canary_browser(run_dir: str | Path, data_dir: str | Path):
    """Pick a canary (most repeated first) and see the prompt, the truth and the model's
    continuation with reproduced tokens highlighted. Reads the continuations the run's
    evaluation job wrote (RUN_DIR/continuations.jsonl, or an evals/step-N directory), so it
    works for a model of any size from a login node; nothing here loads a model."""
    import ipywidgets as w

    from .data import load_canaries
    from .memorization.drilldown import continuation_html, continuations

    shown = {c.canary_id: c for c in continuations(run_dir, data_dir)}
    canaries = sorted((c for c in load_canaries(data_dir) if c.id in shown),
                      key=lambda c: (-c.repetitions, c.id))
    picker = w.Dropdown(options=[(f"{c.id} ({c.kind}, seen {c.repetitions}x)", c.id)
                                 for c in canaries], description="canary")
    view = w.HTML()

    def show(change=None) -> None:
        view.value = continuation_html(shown[picker.value])

    picker.observe(show, names="value")
    show()
    return w.VBox([picker, view])
