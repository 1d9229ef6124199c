"""One canary up close: its prompt, the true continuation and the model's greedy one, token by
token, as data and as an HTML snippet with the reproduced tokens highlighted.

Read from the continuations.jsonl an evaluation job wrote, so the drill-down of a 405B run
works from a login node; torch-free unless a model object is passed in."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from axolab.config import EvalConfig
from axolab.data import load_canaries
from axolab.files import read_jsonl


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


def continuations(source, data_dir: str | Path, canary_ids: list[str] | None = None,
                  config: EvalConfig | None = None) -> list[Continuation]:
    """The greedy continuations of the given canaries (default: all), in manifest order of the
    ids given. ``source``: a run directory or an ``evals/step-N`` directory, read from the
    continuations.jsonl its evaluation job wrote (no model is loaded: this works for any model
    size from a login node); or a model object, generated in this process (a model that fits
    here), split into prompt and suffix as ``config`` says."""
    data_dir = Path(data_dir)
    if isinstance(source, (str, Path)):
        found = _read_continuations(Path(source))
    else:
        found = _generate(source, data_dir, config or EvalConfig())
    by_id = {c["id"]: c for c in found}
    if canary_ids is None:
        canary_ids = [c["id"] for c in found]
    unknown = [i for i in canary_ids if i not in by_id]
    if unknown:
        raise ValueError(f"no canary {unknown[0]!r} in {data_dir} "
                         f"({len(found)} canaries, e.g. {found[0]['id']!r})")
    decode = _token_decoder(data_dir)
    out = []
    for record in (by_id[i] for i in canary_ids):
        truth, generated = record["truth_ids"], record["generated_ids"]
        out.append(Continuation(record["id"], record["kind"], record["repetitions"],
                                record["member"], decode(record["prompt_ids"]), decode(truth),
                                decode(generated), [g == t for g, t in zip(generated, truth)]))
    return out


def _read_continuations(directory: Path) -> list[dict]:
    path = directory / "continuations.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: evaluate the run first (`axolab eval {directory} --data "
            "DATA`, or axolab.launch.evaluate), which writes each canary's continuation")
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"{path} holds no continuations")
    return records


def _token_decoder(data_dir: Path):
    """Token ids to their text one by one, with the dataset's tokenizer file read by
    ``tokenizers`` (transformers would import torch into the kernel)."""
    from tokenizers import Tokenizer

    path = data_dir / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a dataset built by "
                                "`axolab data build`?")
    tok = Tokenizer.from_file(str(path))
    return lambda ids: [tok.decode([i], skip_special_tokens=False) for i in ids]


def _generate(model, data_dir: Path, cfg: EvalConfig) -> list[dict]:
    """Continuation records computed by ``model`` here, one canary at a time, with real
    greedy decoding (independent of the batched fast path the evaluation job takes)."""
    import torch

    from .canary_eval import _split
    from .context import canary_context
    from .decode import greedy_generate

    canaries = load_canaries(data_dir)
    sep = canary_context(data_dir, canaries)  # what preceded each canary in training
    out = []
    for c in canaries:
        prefix, suffix = _split(len(c.token_ids), cfg)
        prompt = torch.tensor([sep + c.token_ids[:prefix]])
        out.append({"id": c.id, "kind": c.kind, "repetitions": c.repetitions, "member": c.member,
                    "prefix_len": prefix, "suffix_len": suffix, "separator": sep,
                    "prompt_ids": c.token_ids[:prefix],
                    "truth_ids": c.token_ids[prefix:prefix + suffix],
                    "generated_ids": greedy_generate(model, prompt, suffix)[0].tolist()})
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
