"""Canary generation: secret (Secret Sharer), random-token and document canaries.

Every canary carries its repetition count (0 for controls, which are generated the same way but
never injected: the non-member set for membership inference and the reference for exposure).
"""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass, field

import numpy as np

from .recipe import CanarySpec, RecipeError
from .recipe import _FILLER as FILLER

ALPHABETS = {"d": string.digits, "a": string.ascii_lowercase, "x": "0123456789abcdef"}


@dataclass
class Canary:
    """One canary as written to canaries.jsonl."""

    id: str
    group: str
    kind: str
    text: str
    token_ids: list[int]
    repetitions: int
    member: bool
    occurrences: list[list[int]] = field(default_factory=list)
    """[sequence, offset] of the first canary token of every injected occurrence."""
    template: str | None = None
    filler: str | None = None
    candidates: list[str] | None = None
    """Secret canaries: fillings of the template that no canary of any group uses, for exposure
    ranking."""
    space_size: int | None = None
    """Secret canaries: how many fillers the template admits."""
    document: int | None = None
    """Document canaries: index of the document in the corpus stream (or in the group's own
    source, for a target set)."""

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def schedule(spec: CanarySpec) -> list[int]:
    """Repetition count of each canary of the group: members first, then controls (0)."""
    members = [n for n in spec.repetitions for _ in range(spec.per_count)]
    controls = len(members) if spec.controls is None else spec.controls
    return members + [0] * controls


def _space(template: str) -> tuple[list[tuple[str, int]], int]:
    parts = [(kind, int(n)) for kind, n in FILLER.findall(template)]
    size = 1
    for kind, n in parts:
        size *= len(ALPHABETS[kind]) ** n
    return parts, size


def _fill(template: str, parts, rng) -> str:
    values = iter("".join(rng.choice(list(ALPHABETS[k]), n)) for k, n in parts)
    return FILLER.sub(lambda _: next(values), template)


def _pattern(template: str) -> re.Pattern:
    """Matches every filling of ``template``; group n is the n-th filler."""
    pattern, last = [], 0
    for m in FILLER.finditer(template):
        chars = re.escape(ALPHABETS[m.group(1)])
        pattern.append(re.escape(template[last:m.start()]) + f"([{chars}]{{{m.group(2)}}})")
        last = m.end()
    pattern.append(re.escape(template[last:]))
    return re.compile("".join(pattern), flags=re.S)


def _filler_of(template: str, text: str) -> str:
    """The filler characters of ``text`` (the template's literal parts removed)."""
    return "".join(_pattern(template).fullmatch(text).groups())


def secret_canaries(spec: CanarySpec, group: str, tokenizer, rng,
                    taken: set[str] | None = None) -> list[Canary]:
    """The group's secrets (members, then controls) and their shared candidates, every text new
    to ``taken``, which is updated. The builder passes one set to every secret group: two groups
    with one template would otherwise draw the same fillers, one group's control or candidate
    being another's injected secret."""
    reps = schedule(spec)
    parts, size = _space(spec.template)
    taken = set() if taken is None else taken
    match = _pattern(spec.template)
    used = sum(1 for t in taken if match.fullmatch(t))  # fillings earlier groups drew
    need = len(reps) + spec.candidates
    if need > size - used:
        earlier = f" ({used} of them drawn by earlier secret groups)" if used else ""
        raise RecipeError(f"canary group {group}: template {spec.template!r} admits {size} fillers"
                          f"{earlier} but {len(reps)} canaries + {spec.candidates} candidates "
                          f"need {need}")
    texts: list[str] = []
    while len(texts) < need:  # rejection sampling; `need` unused fillings exist
        t = _fill(spec.template, parts, rng)
        if t not in taken:
            taken.add(t)
            texts.append(t)
    candidates = texts[len(reps):]
    out = []
    for i, n in enumerate(reps):
        ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        out.append(Canary(id=f"{group}-{i:04d}", group=group, kind="secret", text=texts[i],
                          token_ids=list(ids), repetitions=n, member=n > 0, template=spec.template,
                          filler=_filler_of(spec.template, texts[i]), candidates=candidates,
                          space_size=size))
    return out


def random_canaries(spec: CanarySpec, group: str, tokenizer, rng) -> list[Canary]:
    special = set(tokenizer.all_special_ids)
    allowed = np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
    out, seen = [], set()
    for i, n in enumerate(schedule(spec)):
        ids = tuple(int(t) for t in rng.choice(allowed, spec.length))
        if ids in seen:  # astronomically unlikely, but two identical canaries would be one
            raise RecipeError(f"canary group {group}: duplicate random canary; raise length")
        seen.add(ids)
        out.append(Canary(id=f"{group}-{i:04d}", group=group, kind="random",
                          text=tokenizer.decode(list(ids)), token_ids=list(ids), repetitions=n,
                          member=n > 0))
    return out


def document_canaries(spec: CanarySpec, group: str, docs: list[tuple[int, list[int]]],
                      tokenizer) -> list[Canary]:
    """``docs``: (document index, token ids) of the held-out documents, one per canary."""
    reps = schedule(spec)
    if len(docs) < len(reps):
        raise RecipeError(f"canary group {group}: needs {len(reps)} documents of "
                          f"{spec.min_tokens}..{spec.max_tokens} tokens but the corpus has only "
                          f"{len(docs)}")
    return [Canary(id=f"{group}-{i:04d}", group=group, kind="document",
                   text=tokenizer.decode(ids), token_ids=list(ids), repetitions=n, member=n > 0,
                   document=index) for i, (n, (index, ids)) in enumerate(zip(reps, docs))]
