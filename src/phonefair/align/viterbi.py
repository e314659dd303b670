"""CTC forced alignment: the single best path of a CTC model's frame posteriors that spells a given token sequence.

``torchaudio.functional.forced_align`` does this but torchaudio is not a phonefair dependency (and recent
torchaudio releases deprecate it), so this is a small numpy Viterbi over the usual CTC topology: the target
``y_1 … y_N`` is expanded to ``blank y_1 blank y_2 … y_N blank`` (``2N + 1`` states); a path may stay in a state,
move to the next one, or skip a blank between two *different* tokens. Two equal neighbours (``l l`` in "all
lamps") therefore need at least one blank frame between them, so an utterance needs ``N + #repeats`` frames.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CTCPath", "ctc_forced_align", "min_frames"]


@dataclass(frozen=True)
class CTCPath:
    """The best path: ``token[t]`` is the index (into the target sequence) of the token frame ``t`` emits, or -1 for
    a blank; ``log_prob`` is the path's total log-probability."""

    token: np.ndarray  # (T,) int
    log_prob: float

    def spans(self, n_tokens: int) -> list[tuple[int, int]]:
        """``(first_frame, last_frame)`` of every target token (inclusive; each token has at least one frame)."""
        out = []
        for i in range(n_tokens):
            frames = np.flatnonzero(self.token == i)
            out.append((int(frames[0]), int(frames[-1])))
        return out


def min_frames(targets: Sequence[int]) -> int:
    """Fewest frames a CTC path for ``targets`` needs: one per token plus one blank between equal neighbours."""
    t = list(targets)
    return len(t) + sum(a == b for a, b in itertools.pairwise(t))


def ctc_forced_align(log_probs: np.ndarray, targets: Sequence[int], blank: int = 0) -> CTCPath:
    """Viterbi alignment of ``targets`` (token ids, no blanks) to ``log_probs`` (``[T, V]`` frame log-posteriors).

    Raises ``ValueError`` when no path exists (fewer frames than :func:`min_frames`, an empty target, a target
    equal to ``blank`` or out of range, or every path has probability 0). Ties prefer staying in a state, then the
    shorter move, so the result is deterministic.
    """
    lp_all = np.asarray(log_probs, dtype=np.float64)
    if lp_all.ndim != 2:
        raise ValueError(f"log_probs must be [T, V], got shape {lp_all.shape}")
    n_frames, vocab = lp_all.shape
    tgt = np.asarray(list(targets), dtype=np.int64)
    if tgt.size == 0:
        raise ValueError("empty target sequence")
    if np.any(tgt == blank) or np.any(tgt < 0) or np.any(tgt >= vocab):
        raise ValueError(f"targets must be token ids in [0, {vocab}) other than the blank {blank}")
    need = min_frames(tgt.tolist())
    if n_frames < need:
        raise ValueError(f"{n_frames} frames cannot hold {len(tgt)} tokens (a CTC path needs {need})")

    n_states = 2 * len(tgt) + 1
    ext = np.full(n_states, blank, dtype=np.int64)
    ext[1::2] = tgt
    lp = lp_all[:, ext]  # [T, S]
    # a skip s-2 -> s is allowed into a token state whose token differs from the previous token
    skip_ok = np.zeros(n_states, dtype=bool)
    skip_ok[3::2] = ext[3::2] != ext[1:-2:2]

    neg = -np.inf
    alpha = np.full(n_states, neg)
    alpha[0] = lp[0, 0]
    alpha[1] = lp[0, 1]
    back = np.zeros((n_frames, n_states), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    cand = np.empty((3, n_states))
    for t in range(1, n_frames):
        cand[0] = alpha
        cand[1, 0] = neg
        cand[1, 1:] = alpha[:-1]
        cand[2, :2] = neg
        cand[2, 2:] = alpha[:-2]
        cand[2, ~skip_ok] = neg
        move = np.argmax(cand, axis=0)
        back[t] = move
        alpha = cand[move, np.arange(n_states)] + lp[t]

    last = n_states - 1 if alpha[n_states - 1] >= alpha[n_states - 2] else n_states - 2
    best = float(alpha[last])
    if not np.isfinite(best):
        raise ValueError("no CTC path has non-zero probability (a target token has log-probability -inf)")
    states = np.empty(n_frames, dtype=np.int64)
    s = last
    for t in range(n_frames - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    token = np.where(states % 2 == 1, (states - 1) // 2, -1)
    return CTCPath(token=token, log_prob=best)
