"""Every canary of a dataset, scored by a (parallelized) model.

``score_canaries`` is the measurement itself, shared by the launched evaluation job
(axolab.memorization.job), the in-training probes (axolab.memorization.probe) and the
in-process ``evaluate``. It yields one record per canary (extraction, RougeL, membership
scores, exposure for secrets), the summary (rates by repetition count, extraction curve, ROC
summaries, exposure by repetition count) and each canary's greedy continuation; ``write_eval_files``
puts them in ``memorization.jsonl``, ``eval.json`` and ``continuations.jsonl``
(docs/memorization-files.md). Canaries are scored as they were trained on: after exactly the
tokens that preceded them in the training rows (axolab.memorization.context), a separator in a
separated packed stream and nothing at the start of a padded row.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from axolab.config import EvalConfig, write_json_atomic
from axolab.data import Canary, load_canaries
from axolab.files import write_text_atomic
from axolab.parallel import find_parallel_state

from .adversaries import beam_search, sample
from .domain_perplexity import heldout_perplexity
from .eval_files import records_digest
from .extraction import exact_match, extraction_curve
from .secret_exposure import exposure
from .mia import mia_scores, roc_report
from .scoring import token_scores


def _split(n: int, cfg: EvalConfig) -> tuple[int, int]:
    if n >= cfg.prefix_len + cfg.suffix_len:
        return cfg.prefix_len, cfg.suffix_len
    prefix = max(1, min(cfg.prefix_len, n // 2))
    return prefix, min(cfg.suffix_len, n - prefix)


def _groups(canaries, cfg: EvalConfig) -> dict[tuple[int, int], list[int]]:
    """Canary indices by their (prompt, suffix) lengths: each group is one batch shape."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(canaries):
        groups.setdefault(_split(len(c.token_ids), cfg), []).append(i)
    return groups


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


@dataclass
class CanarySet:
    """A dataset's canaries with what scoring them needs, loaded once (a probe reuses it)."""

    canaries: list[Canary]
    separator: list[int]
    """Token ids that preceded each canary in training (the separator, or none), read from the
    built rows (``canary_context``)."""
    tokenizer: object

    @classmethod
    def load(cls, data_dir: str | Path) -> "CanarySet":
        from transformers import AutoTokenizer

        from .context import canary_context

        data_dir = Path(data_dir)
        tok = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
        canaries = load_canaries(data_dir)
        return cls(canaries, canary_context(data_dir, canaries, tok), tok)


@dataclass
class Scored:
    """What one evaluation of the canaries found."""

    records: list[dict]
    """One per canary, in manifest order (memorization.jsonl)."""
    summary: dict
    """eval.json."""
    continuations: list[dict]
    """One per canary (continuations.jsonl); empty when the config asks for none."""
    rows: list[dict] = dataclasses.field(default_factory=list)
    """One per sampled row of row extraction (row_extraction.jsonl); empty without it."""


def add_trained_occurrences(records: list[dict], canaries: list[Canary],
                            visits: np.ndarray) -> None:
    """Each record's ``trained_occurrences``: how many of its canary's occurrences the model
    had trained on, each occurrence counted as often as its row was (``visits``, from
    :func:`axolab.data.loader.row_visits`). The manifest's ``repetitions`` is what was
    scheduled; a run of a fraction of an epoch, or of several, trains on fewer or more."""
    for record, canary in zip(records, canaries):
        record["trained_occurrences"] = int(sum(visits[row] for row, _ in canary.occurrences))


def canary_sequences(canary_set: CanarySet) -> list[list[int]]:
    """Each canary's tokens as training saw them (after the separator): what is scored."""
    return [canary_set.separator + c.token_ids for c in canary_set.canaries]


def score_canaries(model, canary_set: CanarySet, cfg: EvalConfig,
                   reference_nll: np.ndarray | None = None) -> Scored:
    """Score every canary. Collective on a parallelized model: every rank calls it with the
    same arguments and gets the same result. ``reference_nll``: a reference model's
    ``mean_token_nll`` of ``canary_sequences`` (adds the "reference" membership score)."""
    canaries, sep = canary_set.canaries, canary_set.separator
    records = [{"id": c.id, "group": c.group, "kind": c.kind, "repetitions": c.repetitions,
                "member": c.member, "tokens": len(c.token_ids)} for c in canaries]
    continued = _extraction(model, canaries, sep, cfg, records)
    _adversaries(model, canaries, sep, cfg, records)
    scores = token_scores(model, canary_sequences(canary_set), cfg.batch_size)
    mia = mia_scores(scores, [c.text for c in canaries], cfg.mia_k, reference_nll)
    for i, r in enumerate(records):
        r.update({name: float(v[i]) for name, v in mia.items()})
    logppl = (-scores.sequence_logprob()).tolist()
    if cfg.exposure:
        _exposures(model, canaries, sep, canary_set.tokenizer, cfg, records, logppl)
    summary = _summary(model, canaries, sep, cfg, records, mia)
    summary["perplexity_by_domain"] = {"document_groups": heldout_perplexity(canaries, scores)}
    return Scored(records, summary, continued if cfg.continuations else [])


def add_row_extraction(model, data_dir: str | Path, cfg: EvalConfig, scored: Scored) -> None:
    """Row extraction (EvalConfig.rows) into ``scored``: its records and eval.json's
    row_extraction."""
    if cfg.rows:
        from .row_extraction import score_rows

        scored.rows, scored.summary["row_extraction"] = score_rows(model, data_dir, cfg)


def write_eval_files(out_dir: str | Path, scored: Scored) -> None:
    """memorization.jsonl, eval.json and (when scored with them) continuations.jsonl and
    row_extraction.jsonl, each replaced whole; eval.json last, with the SHA-256 of the
    memorization.jsonl it summarises (``memorization_sha256``). An optional file this
    evaluation did not produce is removed (one unlink, before the new eval.json), so no
    earlier evaluation's continuations or rows are left beside the new results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = "".join(json.dumps(r) + "\n" for r in scored.records)
    write_text_atomic(out / "memorization.jsonl", records)
    for name, lines in (("continuations.jsonl", scored.continuations),
                        ("row_extraction.jsonl", scored.rows)):
        if lines:
            write_text_atomic(out / name, "".join(json.dumps(x) + "\n" for x in lines))
        else:
            (out / name).unlink(missing_ok=True)
    # The hash ties the records to their summary: a kill between the two writes leaves new
    # records beside the previous summary, which readers then recognise and leave out.
    write_json_atomic(out / "eval.json", {**scored.summary, "memorization_sha256":
                                          records_digest(records.encode())})


def evaluate(model, data_dir: str | Path, config: EvalConfig | None = None,
             out_dir: str | Path | None = None) -> dict:
    """Score every canary of ``data_dir`` in this process; ``model`` is a (parallelized) model
    or a run directory (its newest intact checkpoint is loaded on one rank). Files go to
    ``out_dir`` (default: the run directory) from the grid's first rank; every rank returns
    the summary. For a model of any size use ``axolab.launch.evaluate``, which runs this
    measurement as a job on a grid of ranks."""
    cfg = config or EvalConfig()
    cfg.validate()
    if isinstance(model, (str, Path)):
        out_dir = out_dir or model
        model = _model_from_run(Path(model), None)
    state = find_parallel_state(model)
    grid = None if state is None else state.grid
    scored = score_canaries(model, CanarySet.load(data_dir), cfg)
    add_row_extraction(model, data_dir, cfg, scored)
    if out_dir is not None and (grid is None or grid.rank == grid.ranks[0]):
        write_eval_files(out_dir, scored)
    return scored.summary


def _extraction(model, canaries, sep, cfg, records) -> list[dict]:
    """Greedy extraction of every canary (records updated in place); returns each canary's
    continuation record, in manifest order."""
    groups = _groups(canaries, cfg)
    continued: list[dict | None] = [None] * len(canaries)
    for (prefix, suffix), idx in sorted(groups.items()):
        seqs = torch.tensor([sep + canaries[i].token_ids[:prefix + suffix] for i in idx])
        res = exact_match(model, seqs, prefix + len(sep), suffix, cfg.batch_size)
        rouge = _rouge_l(res.generated, seqs[:, prefix + len(sep):])
        for j, i in enumerate(idx):
            c = canaries[i]
            records[i].update(prefix_len=prefix, suffix_len=suffix,
                              exact=bool(res.exact[j]), matched_prefix=int(res.matched_prefix[j]),
                              token_match_rate=float(res.token_match_rate[j]),
                              rouge_l=rouge[j])
            continued[i] = {"id": c.id, "kind": c.kind, "repetitions": c.repetitions,
                            "member": c.member, "prefix_len": prefix, "suffix_len": suffix,
                            "separator": list(sep), "prompt_ids": c.token_ids[:prefix],
                            "truth_ids": c.token_ids[prefix:prefix + suffix],
                            "generated_ids": res.generated[j].tolist()}
    return continued


def _adversaries(model, canaries, sep, cfg, records) -> None:
    """Beam search and sampling (EvalConfig.beams, .samples) on the same prompts as the
    greedy extraction; records updated in place."""
    if cfg.beams == 1 and cfg.samples == 0:
        return
    groups = _groups(canaries, cfg)
    for (prefix, suffix), idx in sorted(groups.items()):
        seqs = torch.tensor([sep + canaries[i].token_ids[:prefix + suffix] for i in idx])
        prompts, truth = seqs[:, :prefix + len(sep)], seqs[:, prefix + len(sep):]
        if cfg.beams > 1:
            hit = (beam_search(model, prompts, suffix, cfg.beams, cfg.batch_size) == truth).all(1)
            for j, i in enumerate(idx):
                records[i]["beam_exact"] = bool(hit[j])
        if cfg.samples:
            # Draws follow the seed and the row within its (prefix, suffix) group, both fixed
            # by the manifest: the same on any grid and batch size.
            drawn = sample(model, prompts, suffix, cfg.samples, top_k=cfg.top_k,
                           temperature=cfg.temperature, batch_size=cfg.batch_size,
                           seed=cfg.sample_seed * 1_000_003 + prefix * 1009 + suffix)
            hits = (drawn == truth[:, None]).all(-1)
            for j, i in enumerate(idx):
                records[i].update(sample_exact_any=bool(hits[j].any()),
                                  sample_exact_rate=float(hits[j].float().mean()))


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


def _curve(model, canaries, sep, cfg) -> dict:
    """The extraction curve on the member canaries whose training context and tokens hold the
    longest prompt plus the suffix: one fixed set and one fixed suffix (each canary's last
    ``suffix_len`` tokens) for every prompt length (axolab.memorization.extraction_curve)."""
    ks = sorted(set(cfg.curve_prefix_lens))
    if not ks:
        return {"extraction_curve": {}, "extraction_curve_canaries": 0}
    need = ks[-1] + cfg.suffix_len
    rows = [(sep + c.token_ids)[-need:] for c in canaries
            if c.member and len(sep) + len(c.token_ids) >= need]
    out = {"extraction_curve": {}, "extraction_curve_canaries": len(rows),
           "extraction_curve_suffix_len": cfg.suffix_len}
    if not rows:
        longest = max((len(sep) + len(c.token_ids) for c in canaries if c.member), default=0)
        warnings.warn(f"extraction curve skipped: it needs member canaries of at least "
                      f"{ks[-1]} + {cfg.suffix_len} = {need} tokens with their context, the "
                      f"longest has {longest}; lower curve_prefix_lens or suffix_len")
        return out
    curve = extraction_curve(model, torch.tensor(rows), ks, cfg.suffix_len, cfg.batch_size)
    out["extraction_curve"] = {str(k): rate for k, rate in curve.items()}
    return out


def _summary(model, canaries, sep, cfg, records, mia) -> dict:
    members = np.array([r["member"] for r in records])
    summary = {"config": dataclasses.asdict(cfg), "canaries": len(records),
               "exact_match_by_repetitions": _rate_by(records, "repetitions", "exact"),
               "token_match_by_repetitions": _rate_by(records, "repetitions", "token_match_rate"),
               "matched_prefix_by_repetitions": _rate_by(records, "repetitions",
                                                         "matched_prefix"),
               "rouge_l_by_repetitions": _rate_by(records, "repetitions", "rouge_l"),
               "beam_exact_by_repetitions": _rate_by(records, "repetitions", "beam_exact"),
               "sample_exact_by_repetitions": _rate_by(records, "repetitions",
                                                       "sample_exact_any"),
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
    summary.update(_curve(model, canaries, sep, cfg))
    return summary
