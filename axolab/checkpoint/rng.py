"""Random-number generator state as plain JSON, so resuming a run never unpickles anything.

A checkpoint restores Python's ``random``, NumPy's global generator and torch's generators (CPU
and, where present, every CUDA device), so a resumed run draws the same numbers as one that
never stopped. Each state is written as what it is: Python's Mersenne Twister as 625 integers,
NumPy's MT19937 as its key and position, torch's as the base64 of its raw bytes. Reading
checks every type and length before anything is set: a crafted checkpoint gets a
CheckpointError, never code execution.
"""

from __future__ import annotations

import base64
import binascii
import random

import numpy as np
import torch

from .files import CheckpointError

FORMAT = "axolab-rng-1"
_MT_WORDS = 624  # Mersenne Twister state words (Python and NumPy alike)
_PY_VERSION = random.getstate()[0]  # random.setstate accepts only its own version (3)


def _torch_bytes(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def rng_state() -> dict:
    """This process's generator states, JSON-serializable."""
    version, words, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "format": FORMAT,
        "python": {"version": version, "words": list(words), "gauss_next": gauss},
        "numpy": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": _torch_bytes(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_torch_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def _fail(what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint RNG state: {what} (expected the {FORMAT} JSON layout; "
                           "a checkpoint from an older axolab or a tampered manifest?)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _words(value, n: int, bits: int, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) != n or \
            not all(_is_int(w) and 0 <= w < 2**bits for w in value):
        raise _fail(f"{what} must be {n} integers in [0, 2**{bits})")
    return value


def _raw_bytes(value, what: str, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, str):
        raise _fail(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _fail(f"{what} is not valid base64") from None
    if len(raw) != like.numel():
        raise _fail(f"{what} has {len(raw)} bytes, this torch needs {like.numel()}")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def _checked(state) -> dict:
    """Every part of ``state`` parsed and checked; nothing set yet."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _fail(f"format {state.get('format') if isinstance(state, dict) else state!r:.60}")
    py, npy = state.get("python"), state.get("numpy")
    if not isinstance(py, dict) or not isinstance(npy, dict):
        raise _fail("python and numpy states must be objects")
    if py.get("version") != _PY_VERSION or not _is_int(py.get("version")):
        raise _fail(f"python version must be {_PY_VERSION} (what random.getstate() writes)")
    words = _words(py.get("words"), _MT_WORDS + 1, 32, "python words")
    if words[-1] > _MT_WORDS:  # the last word is the position in the other 624
        raise _fail(f"python position {words[-1]} is past the {_MT_WORDS} state words")
    gauss = py.get("gauss_next")
    if gauss is not None and not isinstance(gauss, float):
        raise _fail("python gauss_next must be a number or null")
    key = _words(npy.get("key"), _MT_WORDS, 32, "numpy key")
    pos, has_gauss, np_gauss = npy.get("pos"), npy.get("has_gauss"), npy.get("gauss")
    if not (_is_int(pos) and 0 <= pos <= _MT_WORDS and has_gauss in (0, 1)
            and isinstance(np_gauss, (int, float)) and not isinstance(np_gauss, bool)):
        raise _fail("numpy pos, has_gauss and gauss are out of range")
    out = {"python": (py["version"], tuple(words), gauss),
           "numpy": {"bit_generator": "MT19937",
                     "state": {"key": np.array(key, dtype=np.uint32), "pos": pos},
                     "has_gauss": has_gauss, "gauss": float(np_gauss)},
           "torch": _raw_bytes(state.get("torch"), "torch", torch.get_rng_state())}
    if torch.cuda.is_available() and "cuda" in state:
        cuda = state["cuda"]
        current = torch.cuda.get_rng_state_all()
        if not isinstance(cuda, list):
            raise _fail("cuda must be a list of device states")
        # A run may resume on a node with another number of GPUs (another grid): the devices
        # both have are restored; a device this node has and the saved one lacked keeps its own.
        out["cuda"] = [_raw_bytes(v, f"cuda[{i}]", c) for i, (v, c) in enumerate(zip(cuda, current))]
    return out


def set_rng_state(state) -> None:
    """Restore what :func:`rng_state` wrote; raises CheckpointError (and changes nothing) if
    ``state`` is not exactly that layout."""
    parsed = _checked(state)
    try:
        torch.set_rng_state(parsed["torch"])
    except RuntimeError as e:
        raise _fail(f"torch refused the generator state ({e})") from None
    random.setstate(parsed["python"])
    np.random.set_state(parsed["numpy"])
    for i, s in enumerate(parsed.get("cuda", [])):
        torch.cuda.set_rng_state(s, i)
