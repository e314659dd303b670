"""One owner for randomness: every random stream is derived from the run seed and a tuple of keys.

``derive(seed, "probes", layer, fold)`` gives an independent, reproducible generator for that purpose, through
``numpy.random.SeedSequence`` (no hand-made arithmetic such as ``seed * 1009 + i``, whose streams can collide).
Keys may be strings or integers; strings are hashed stably (not with Python's salted ``hash``).
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["derive", "derive_seed", "Key"]

Key = str | int


def _entropy(keys: tuple[Key, ...]) -> list[int]:
    out = []
    for k in keys:
        if isinstance(k, (bool, np.bool_)):
            raise TypeError("rng keys must be str or int, not bool")
        if isinstance(k, (int, np.integer)):
            out.append(int(k) & 0xFFFFFFFF)
            out.append(int(k) >> 32 & 0xFFFFFFFF)
        elif isinstance(k, str):
            out.append(int.from_bytes(hashlib.blake2b(k.encode(), digest_size=4).digest(), "little"))
        else:
            raise TypeError(f"rng keys must be str or int, got {type(k).__name__}")
    return out


def derive(seed: int, *keys: Key) -> np.random.Generator:
    """An independent generator for ``(seed, *keys)``; the same arguments always give the same stream."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *_entropy(keys)]))


def derive_seed(seed: int, *keys: Key) -> int:
    """An integer seed (for torch generators and APIs that take an int) derived like :func:`derive`."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *_entropy(keys)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])
