"""`evaluate(model or run_dir, data_dir, config)`: every canary of a dataset, scored.

Writes ``memorization.jsonl`` (one record per canary: extraction, RougeL, membership scores,
exposure for secrets) and ``eval.json`` (rates by repetition count, extraction curve, ROC
summaries, exposure by repetition count). Canaries are scored as they were injected: preceded
by the separator token when the dataset separated them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from axolab.config import write_json_atomic
from axolab.data import load_canaries

from .exposure import exposure
from .extraction import exact_match
from .mia import mia_scores, roc_report
from .scoring import token_scores


@dataclass
class EvalConfig:
    """How canaries are probed."""

    prefix_len: int = 32
    """Prompt tokens (canary tokens; shorter canaries use their first half)."""
    suffix_len: int = 32
    """Tokens to reproduce after the prompt (capped by the canary's length)."""
    curve_prefix_lens: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    """Prefix lengths of the extraction curve (fast path, on canaries long enough)."""
    mia_k: float = 0.2
    """Fraction of lowest-scoring tokens for Min-K% and Min-K%++."""
    batch_size: int = 32
    """Sequences per forward pass."""


def _split(n: int, cfg: EvalConfig) -> tuple[int, int]:
    if n >= cfg.prefix_len + cfg.suffix_len:
        return cfg.prefix_len, cfg.suffix_len
    prefix = max(1, min(cfg.prefix_len, n // 2))
    return prefix, min(cfg.suffix_len, n - prefix)


def _rouge_l(generated: torch.Tensor, truth: torch.Tensor) -> list[float]:
    """RougeL F-measure over token ids (rouge-score with a whitespace tokenizer on the ids, so
    the result does not depend on how a tokenizer decodes)."""
    from rouge_score import rouge_scorer

    class Ids:
        @staticmethod
        def tokenize(text):
            return text.split()

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Ids())
    return [scorer.score(" ".join(map(str, t.tolist())), " ".join(map(str, g.tolist())))
            ["rougeL"].fmeasure for g, t in zip(generated, truth)]


def _model_from_run(run_dir: Path, grid):
    """The run's newest checkpoint whose files match their hashes (a damaged newer one is
    skipped with a warning), loaded onto ``grid``."""
    from axolab.checkpoint import load_pretrained, resume_checkpoint
    from axolab.parallel import Grid

    grid = grid or Grid.init()
    found = resume_checkpoint(run_dir / "checkpoints", grid)
    if found is None:
        raise ValueError(f"{run_dir} has no complete, intact checkpoint to evaluate")
    return load_pretrained(found[0], grid).eval()


def evaluate(model, data_dir: str | Path, config: EvalConfig | None = None,
             out_dir: str | Path | None = None) -> dict:
    """Score every canary of ``data_dir``; ``model`` is a (parallelized) model or a run
    directory (its newest checkpoint is loaded). Files go to ``out_dir`` (default: the run
    directory) from the grid's first rank; every rank returns the summary."""
    from transformers import AutoTokenizer

    cfg = config or EvalConfig()
    data_dir = Path(data_dir)
    if isinstance(model, (str, Path)):
        out_dir = out_dir or model
        model = _model_from_run(Path(model), None)
    grid = getattr(model, "axolab_grid", None)
    tok = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    sep = [tok.eos_token_id] if _separated(data_dir) else []
    canaries = load_canaries(data_dir)
    records = [{"id": c.id, "group": c.group, "kind": c.kind, "repetitions": c.repetitions,
                "member": c.member, "tokens": len(c.token_ids)} for c in canaries]
    _extraction(model, canaries, sep, cfg, records)
    scores = token_scores(model, [sep + c.token_ids for c in canaries], cfg.batch_size)
    mia = mia_scores(scores, [c.text for c in canaries], cfg.mia_k)
    for i, r in enumerate(records):
        r.update({name: float(v[i]) for name, v in mia.items()})
    logppl = (-scores.sequence_logprob()).tolist()
    _exposures(model, canaries, sep, tok, cfg, records, logppl)
    summary = _summary(model, canaries, sep, cfg, records, mia)
    if out_dir is not None and (grid is None or grid.rank == grid.ranks[0]):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".memorization.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        tmp.replace(out / "memorization.jsonl")
        write_json_atomic(out / "eval.json", summary)
    return summary


def _separated(data_dir: Path) -> bool:
    import yaml

    recipe = yaml.safe_load((data_dir / "recipe.yaml").read_text())
    return bool(recipe.get("packing", {}).get("separate_canaries", True))


def _extraction(model, canaries, sep, cfg, records) -> None:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(canaries):
        groups.setdefault(_split(len(c.token_ids), cfg), []).append(i)
    for (prefix, suffix), idx in sorted(groups.items()):
        seqs = torch.tensor([sep + canaries[i].token_ids[:prefix + suffix] for i in idx])
        res = exact_match(model, seqs, prefix + len(sep), suffix, cfg.batch_size)
        rouge = _rouge_l(res.generated, seqs[:, prefix + len(sep):])
        for j, i in enumerate(idx):
            records[i].update(prefix_len=prefix, suffix_len=suffix,
                              exact=bool(res.exact[j]), matched_prefix=int(res.matched_prefix[j]),
                              token_match_rate=float(res.token_match_rate[j]),
                              rouge_l=rouge[j])


def _exposures(model, canaries, sep, tok, cfg, records, logppl) -> None:
    secrets = [i for i, c in enumerate(canaries) if c.kind == "secret" and c.candidates]
    if not secrets:
        return
    # Every secret's candidates in one scoring pass: they are many and short, so batches hold
    # as many tokens as cfg.batch_size rows of 128 would, which saves most forward passes.
    ids = [sep + tok(t, add_special_tokens=False)["input_ids"]
           for i in secrets for t in canaries[i].candidates]
    batch = min(1024, max(cfg.batch_size, cfg.batch_size * 128 // max(len(x) for x in ids)))
    scores = (-token_scores(model, ids, batch).sequence_logprob()).numpy()
    offset = 0
    for i in secrets:
        n = len(canaries[i].candidates)
        cand, offset = scores[offset:offset + n], offset + n
        e = exposure(logppl[i], cand)
        records[i].update(exposure=e["exposure"], exposure_extrapolated=e["exposure_extrapolated"],
                          exposure_rank=e["rank"], exposure_candidates=e["candidates"])


def _rate_by(records, key, field_name):
    out: dict[str, float] = {}
    for n in sorted({r[key] for r in records}):
        vals = [r[field_name] for r in records if r[key] == n and r.get(field_name) is not None]
        if vals:
            out[str(n)] = float(np.mean(vals))
    return out


def _summary(model, canaries, sep, cfg, records, mia) -> dict:
    members = np.array([r["member"] for r in records])
    summary = {"config": dataclasses.asdict(cfg), "canaries": len(records),
               "exact_match_by_repetitions": _rate_by(records, "repetitions", "exact"),
               "token_match_by_repetitions": _rate_by(records, "repetitions", "token_match_rate"),
               "rouge_l_by_repetitions": _rate_by(records, "repetitions", "rouge_l"),
               "exposure_by_repetitions": _rate_by(
                   [r for r in records if r["kind"] == "secret"], "repetitions", "exposure"),
               "mia": {}, "extraction_curve": {}}
    # Kinds answer different questions (a secret's template prefix is shared by all its
    # candidates, so prompting with it cannot single one out): rates per kind, too.
    summary["by_kind"] = {
        kind: {"exact_match_by_repetitions": _rate_by(sub, "repetitions", "exact"),
               "token_match_by_repetitions": _rate_by(sub, "repetitions", "token_match_rate")}
        for kind in sorted({r["kind"] for r in records})
        for sub in [[r for r in records if r["kind"] == kind]]}
    for name, score in mia.items():
        if members.any() and (~members).any():
            summary["mia"][name] = roc_report(score[members], score[~members])
    for k in cfg.curve_prefix_lens:
        idx = [i for i, c in enumerate(canaries) if c.member and len(c.token_ids) >= k + 1]
        if not idx:
            continue
        by_len: dict[int, list[int]] = {}
        for i in idx:
            by_len.setdefault(min(cfg.suffix_len, len(canaries[i].token_ids) - k), []).append(i)
        hits = 0
        for suffix, group in by_len.items():
            seqs = torch.tensor([sep + canaries[i].token_ids[:k + suffix] for i in group])
            hits += int(exact_match(model, seqs, k + len(sep), suffix, cfg.batch_size,
                                    generate=False).exact.sum())
        summary["extraction_curve"][str(k)] = hits / len(idx)
    return summary
