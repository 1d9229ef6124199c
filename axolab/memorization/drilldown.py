"""One canary up close: its prompt, the true continuation and the model's greedy one, token by
token, as data and as an HTML snippet with the reproduced tokens highlighted."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from axolab.data import load_canaries

from .decode import greedy_generate
from .evaluate import EvalConfig, _model_from_run, _separated, _split


@dataclass
class Continuation:
    """What the model does with one canary's prompt."""

    canary_id: str
    kind: str
    repetitions: int
    member: bool
    prompt: list[str]
    """The prompt's tokens, decoded one by one."""
    truth: list[str]
    """The canary's next tokens."""
    generated: list[str]
    """The model's greedy continuation, as many tokens as ``truth``."""
    matches: list[bool]
    """Per position: the generated token equals the true one."""

    @property
    def exact(self) -> bool:
        return all(self.matches)

    @property
    def matched_prefix(self) -> int:
        return next((i for i, m in enumerate(self.matches) if not m), len(self.matches))


def continuations(model, data_dir: str | Path, canary_ids: list[str] | None = None,
                  config: EvalConfig | None = None) -> list[Continuation]:
    """Greedy continuations of the given canaries (default: all), split into prompt and
    suffix exactly as ``evaluate`` splits them. ``model``: a model or a run directory."""
    from transformers import AutoTokenizer

    data_dir = Path(data_dir)
    if isinstance(model, (str, Path)):
        run_dir = Path(model)
        if config is None and (run_dir / "eval.json").is_file():
            # Split the canaries as the run's own evaluation did.
            config = EvalConfig(**json.loads((run_dir / "eval.json").read_text())["config"])
        model = _model_from_run(run_dir, None)
    cfg = config or EvalConfig()
    tok = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    sep = [tok.eos_token_id] if _separated(data_dir) else []
    canaries = load_canaries(data_dir)
    if canary_ids is not None:
        by_id = {c.id: c for c in canaries}
        unknown = [i for i in canary_ids if i not in by_id]
        if unknown:
            raise ValueError(f"no canary {unknown[0]!r} in {data_dir} "
                             f"({len(canaries)} canaries, e.g. {canaries[0].id!r})")
        canaries = [by_id[i] for i in canary_ids]
    out = []
    for c in canaries:
        prefix, suffix = _split(len(c.token_ids), cfg)
        prompt = torch.tensor([sep + c.token_ids[:prefix]])
        generated = greedy_generate(model, prompt, suffix)[0].tolist()
        truth = c.token_ids[prefix:prefix + suffix]
        pieces = lambda ids: [tok.decode([i]) for i in ids]  # noqa: E731
        out.append(Continuation(c.id, c.kind, c.repetitions, c.member,
                                pieces(c.token_ids[:prefix]), pieces(truth), pieces(generated),
                                [g == t for g, t in zip(generated, truth)]))
    return out


def _span(token: str, style: str) -> str:
    # Whitespace-only tokens would vanish in HTML; show them as visible marks.
    # Random canaries contain control bytes; show them as escapes rather than raw.
    token = "".join(ch if ch.isprintable() or ch in " \n" else f"\\x{ord(ch):02x}" for ch in token)
    shown = html.escape(token).replace(" ", "&#183;").replace("\n", "&#8629;") or "&#8709;"
    return f'<span style="{style}">{shown}</span>'


def continuation_html(c: Continuation) -> str:
    """The canary as a small HTML block: prompt in grey, then truth and generation aligned,
    reproduced tokens green and the rest red. Every token is escaped."""
    ok, bad, grey = ("background:#c8f7c5;", "background:#f7c5c5;", "color:#777;")
    head = (f"<b>{html.escape(c.canary_id)}</b> ({html.escape(c.kind)}, seen "
            f"{c.repetitions} time{'s' if c.repetitions != 1 else ''}"
            f"{'' if c.member else ', control'}): "
            f"{sum(c.matches)}/{len(c.matches)} tokens reproduced, "
            f"{'exact' if c.exact else f'first miss at {c.matched_prefix}'}")
    prompt = "".join(_span(t, grey) for t in c.prompt)
    truth = "".join(_span(t, "") for t in c.truth)
    gen = "".join(_span(t, ok if m else bad) for t, m in zip(c.generated, c.matches))
    return (f'<div style="font-family:monospace;margin:6px 0">{head}<br>'
            f"prompt&nbsp;&nbsp;&nbsp;{prompt}<br>truth&nbsp;&nbsp;&nbsp;&nbsp;{truth}<br>"
            f"model&nbsp;&nbsp;&nbsp;&nbsp;{gen}</div>")
