"""Write the shipped notebooks from their cell sources (run after editing them).

Keeping the sources as Python, one module per notebook in ``tools/notebook_cells/``, keeps
notebook diffs reviewable and the notebooks thin: every code cell calls axolab functions, and
the markdown cells say what each step does and why, how to read its output and what to change
on a cluster. A cell is a ``(kind, source)`` pair: ``MD`` for markdown, ``"parameters"`` for
the defaults papermill overrides, ``None`` for code.
"""

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from axolab.runs.notebook_file import write_notebook  # noqa: E402

NAMES = ("train", "canary_injection", "memorization", "goldfish_mitigation", "finetune_405b",
         "scaling_sweep", "finetune_memorization")
NOTEBOOKS = {f"{name}.ipynb": importlib.import_module(f"notebook_cells.{name}").CELLS
             for name in NAMES}

if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        write_notebook(ROOT / "notebooks" / name, cells)
