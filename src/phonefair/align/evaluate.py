"""Boundary accuracy of an alignment against a reference alignment of the same utterance.

The two phone sequences (speech phones only, ARPABET-39 classes) are paired by a minimum-edit-distance alignment
(substitution, insertion, deletion cost 1; ties prefer a substitution, then a deletion). For every pair — equal
labels or a substitution — the **onset error** is ``|start_hyp - start_ref|`` and the **offset error** is
``|end_hyp - end_ref|``; the boundary errors of an utterance are both, pooled. **Label agreement** is the number of
pairs with equal labels divided by the number of reference phones (insertions and deletions count against it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["boundary_errors", "pair_phones", "summarize_errors"]


def pair_phones(ref: list[str], hyp: list[str]) -> list[tuple[int | None, int | None]]:
    """Minimum-edit-distance alignment of two label sequences as ``(ref index, hyp index)`` pairs (``None`` for an
    insertion or deletion)."""
    n, m = len(ref), len(hyp)
    cost = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]), cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    pairs: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i, j] == cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and cost[i, j] == cost[i - 1, j] + 1:
            pairs.append((i - 1, None))
            i -= 1
        else:
            pairs.append((None, j - 1))
            j -= 1
    return pairs[::-1]


def boundary_errors(ref: pd.DataFrame, hyp: pd.DataFrame) -> pd.DataFrame:
    """One row per reference/hypothesis phone pair of one utterance: ``ref_phone, hyp_phone, same, onset_error,
    offset_error`` (seconds; NaN for an insertion or deletion). Both tables need ``start, end, phone`` in time
    order."""
    r = ref.sort_values("start").reset_index(drop=True)
    h = hyp.sort_values("start").reset_index(drop=True)
    rows = []
    for i, j in pair_phones(r["phone"].astype(str).tolist(), h["phone"].astype(str).tolist()):
        row = {"ref_phone": None if i is None else r.at[i, "phone"], "hyp_phone": None if j is None else h.at[j, "phone"],
               "onset_error": np.nan, "offset_error": np.nan}
        if i is not None and j is not None:
            row["onset_error"] = abs(float(h.at[j, "start"]) - float(r.at[i, "start"]))
            row["offset_error"] = abs(float(h.at[j, "end"]) - float(r.at[i, "end"]))
        row["same"] = i is not None and j is not None and row["ref_phone"] == row["hyp_phone"]
        rows.append(row)
    return pd.DataFrame(rows, columns=["ref_phone", "hyp_phone", "same", "onset_error", "offset_error"])


def summarize_errors(pairs: pd.DataFrame) -> dict[str, float]:
    """Median and 90th percentile of the pooled onset + offset errors (milliseconds), the share of boundaries
    within 20 ms, and the label agreement, over the pairs of any number of utterances."""
    err = np.concatenate([pairs["onset_error"].dropna().to_numpy(), pairs["offset_error"].dropna().to_numpy()])
    n_ref = int(pairs["ref_phone"].notna().sum())
    return {"n_ref_phones": n_ref, "n_boundaries": int(err.size),
            "median_ms": float(np.median(err) * 1000) if err.size else float("nan"),
            "p90_ms": float(np.percentile(err, 90) * 1000) if err.size else float("nan"),
            "within_20ms": float(np.mean(err <= 0.020)) if err.size else float("nan"),
            "label_agreement": float(pairs["same"].sum() / n_ref) if n_ref else float("nan")}
