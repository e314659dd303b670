"""Phone error rate: greedy CTC decoding, edit distance, per-speaker counts and per-group speaker-clustered CIs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from phonefair.stats import cluster_bootstrap_weights, percentile_ci

__all__ = ["greedy_decode", "edit_distance", "per_by_group"]


def greedy_decode(ids: Sequence[int] | np.ndarray, blank: int = 0) -> list[int]:
    """Best-path CTC decoding: collapse repeats, then drop blanks."""
    out: list[int] = []
    prev = -1
    for i in np.asarray(ids).tolist():
        if i != prev and i != blank:
            out.append(int(i))
        prev = i
    return out


def edit_distance(ref: Sequence[int], hyp: Sequence[int]) -> int:
    """Levenshtein distance (substitutions + deletions + insertions, unit costs)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def per_by_group(per_speaker: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> pd.DataFrame:
    """Per-group phone error rate = total edits / total reference phones, with a speaker-clustered bootstrap CI.

    ``per_speaker`` has columns speaker, group, edits, ref_phones. Speakers are resampled within their group, so the
    CI reflects between-speaker variation, not only token counts. Columns: group, per, ci_low, ci_high,
    n_speakers, n_phones.
    """
    need = {"speaker", "group", "edits", "ref_phones"}
    if missing := need - set(per_speaker.columns):
        raise ValueError(f"per_speaker table lacks column(s) {sorted(missing)}")
    # one row per speaker (the input may list utterances): the bootstrap resamples speakers
    per_spk = per_speaker.groupby(["group", "speaker"], sort=True, observed=True)[["edits", "ref_phones"]].sum()
    rows = []
    for g, d in per_spk.reset_index().groupby("group", sort=True):
        _, w = cluster_bootstrap_weights(d["speaker"].to_numpy(), n_boot, seed=seed)
        e = d["edits"].to_numpy(float)
        n = d["ref_phones"].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = (w @ e) / (w @ n)
        lo, hi = percentile_ci(reps, level)
        rows.append({"group": str(g), "per": float(e.sum() / n.sum()), "ci_low": float(lo), "ci_high": float(hi),
                     "n_speakers": int(d["speaker"].nunique()), "n_phones": int(n.sum())})
    out = pd.DataFrame(rows, columns=["group", "per", "ci_low", "ci_high", "n_speakers", "n_phones"])
    out.attrs["provenance"] = {"statistic": "total edits / total reference phones", "n_boot": n_boot,
                               "seed": seed, "level": level, "ci": "speaker-clustered percentile bootstrap"}
    return out
