"""Where each canary occurrence goes in the packed training stream.

The stream is ``n_sequences * seq_len`` tokens. Each occurrence is a slot of ``length`` tokens
(the canary, plus separators); slots never overlap. Without ``allow_split`` a slot lies inside
one sequence: a canary's occurrences are assigned to distinct sequences (uniformly at random, or
consecutive ones for "clustered"), then each sequence's slots are put in random order with
random gaps. With ``allow_split`` slots are spread over the whole stream by a random composition
of the free tokens, and may straddle a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .recipe import RecipeError


@dataclass(frozen=True)
class Request:
    canary: int        # index into the canary list
    repetitions: int
    length: int        # slot length in tokens
    clustered: bool
    window: tuple[int, int] | None = None  # [first, end) sequence the occurrences may go in

    def span(self, n: int) -> tuple[int, int]:
        return self.window if self.window is not None else (0, n)


def _gaps(free: int, k: int, rng) -> np.ndarray:
    """A uniformly random composition of ``free`` into ``k + 1`` non-negative gaps."""
    cuts = np.sort(rng.integers(0, free + 1, size=k))
    return np.diff(np.concatenate([[0], cuts, [free]]))


def _assign_sequences(requests: list[Request], n: int, seq_len: int, rng) -> dict[int, list]:
    used = np.zeros(n, dtype=np.int64)
    per_seq: dict[int, list] = {}
    for r in requests:
        if r.length > seq_len:
            raise RecipeError(f"canary {r.canary} needs {r.length} tokens (with separators) but "
                              f"sequences hold {seq_len}; raise packing.seq_len or set "
                              "packing.allow_split")
        lo, hi = r.span(n)
        if r.repetitions > hi - lo:
            where = f"its window holds {hi - lo} of the {n}" if r.window is not None else \
                f"the corpus packs into only {n}"
            raise RecipeError(f"a canary repeated {r.repetitions} times needs as many sequences "
                              f"but {where}")
        if r.clustered:
            start = int(rng.integers(lo, hi - r.repetitions + 1))
            wanted = list(range(start, start + r.repetitions))
        else:
            wanted = (lo + rng.choice(hi - lo, size=r.repetitions, replace=False)).tolist()
        taken: set[int] = set()
        for s in wanted:
            if used[s] + r.length > seq_len or s in taken:
                room = np.flatnonzero(used[lo:hi] + r.length <= seq_len) + lo
                room = [int(x) for x in room if int(x) not in taken]
                if not room:
                    raise RecipeError(
                        f"more canary tokens than the corpus can hold: no sequence has room for "
                        f"{r.length} more tokens ({int(used.sum())} canary tokens placed in {n} "
                        f"sequences of {seq_len})")
                # nearest free sequence keeps clusters together; a random one keeps spread uniform
                s = min(room, key=lambda x: abs(x - s)) if r.clustered else \
                    room[int(rng.integers(0, len(room)))]
            taken.add(s)
            used[s] += r.length
            per_seq.setdefault(s, []).append(r)
    return per_seq


def place(requests: list[Request], n_sequences: int, seq_len: int, allow_split: bool,
          rng) -> list[tuple[int, int]]:
    """(global start, request index) of every occurrence, sorted by start."""
    total = sum(r.repetitions * r.length for r in requests)
    capacity = n_sequences * seq_len
    if total > capacity:
        raise RecipeError(f"more canary tokens than the corpus can hold: {total} canary tokens "
                          f"but the stream has {capacity}")
    index = {id(r): i for i, r in enumerate(requests)}
    starts: list[tuple[int, int]] = []
    if not allow_split:
        per_seq = _assign_sequences(requests, n_sequences, seq_len, rng)
        for s in sorted(per_seq):
            slots = [per_seq[s][i] for i in rng.permutation(len(per_seq[s]))]
            gaps = _gaps(seq_len - sum(r.length for r in slots), len(slots), rng)
            pos = s * seq_len
            for gap, r in zip(gaps, slots):
                pos += int(gap)
                starts.append((pos, index[id(r)]))
                pos += r.length
        return sorted(starts)
    # Split allowed: clusters are runs of one canary's slots, placed as one unit.
    units: list[list[int]] = []
    for i, r in enumerate(requests):
        if r.clustered:
            units.append([i] * r.repetitions)
        else:
            units.extend([i] for _ in range(r.repetitions))
    units = [units[j] for j in rng.permutation(len(units))]
    gaps = _gaps(capacity - total, len(units), rng)
    pos = 0
    for gap, unit in zip(gaps, units):
        pos += int(gap)
        for i in unit:
            starts.append((pos, i))
            pos += requests[i].length
    return starts
