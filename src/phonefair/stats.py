"""Statistics shared by the probes and the typology: speaker-clustered resampling and multiple-comparison control.

Phone tokens are nested in speakers, so tokens of one speaker are not independent. Every resampling here works on
*speakers*: a bootstrap replicate draws speakers with replacement (within each group, so group sizes are fixed) and
takes all of each drawn speaker's tokens; a permutation shuffles group labels between speakers, never between tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def cluster_bootstrap_weights(
    clusters: Sequence[object] | np.ndarray,
    n_boot: int,
    *,
    seed: int,
    strata: Sequence[object] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Speaker-clustered bootstrap as a weight matrix.

    Returns ``(unique_clusters, weights)`` where ``weights[b, k]`` is how many times cluster ``k`` was drawn in
    replicate ``b``. Resampling is done within each stratum (e.g. speaker group) so every replicate keeps the
    stratum sizes. A statistic that is a sum over clusters is then a matrix product: replicates of
    ``sum_k w_bk * s_k`` are ``weights @ s``.

    ``clusters`` and ``strata`` are aligned per *cluster* or per *token*: only the unique cluster ids matter, and
    a cluster's stratum is the stratum of its first occurrence.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    cl = pd.Series(np.asarray(clusters))
    st = pd.Series(np.zeros(len(cl), dtype=int) if strata is None else np.asarray(strata))
    first = ~cl.duplicated()
    uniq = cl[first].to_numpy()
    ustrata = st[first].to_numpy()
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_boot, len(uniq)), dtype=np.float64)
    for s in pd.unique(ustrata):
        idx = np.flatnonzero(ustrata == s)
        draws = rng.integers(0, len(idx), size=(n_boot, len(idx)))
        for b in range(n_boot):
            weights[b, idx] = np.bincount(draws[b], minlength=len(idx))
    return uniq, weights


def percentile_ci(replicates: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored)."""
    alpha = (1 - level) / 2
    lo = np.nanquantile(replicates, alpha, axis=axis)
    hi = np.nanquantile(replicates, 1 - alpha, axis=axis)
    return lo, hi


def bootstrap_pvalue(replicates: np.ndarray, null: float = 0.0, axis: int = 0) -> np.ndarray:
    """Two-sided bootstrap p-value for ``H0: theta = null`` from percentile replicates.

    ``p = 2 * min(P*(theta* <= null), P*(theta* >= null))`` with the ``(count + 1) / (B + 1)`` correction so a
    p-value is never exactly 0; clipped to 1.
    """
    r = np.asarray(replicates, dtype=float)
    b = np.sum(~np.isnan(r), axis=axis)
    le = (np.sum(r <= null, axis=axis) + 1) / (b + 1)
    ge = (np.sum(r >= null, axis=axis) + 1) / (b + 1)
    return np.minimum(1.0, 2 * np.minimum(le, ge))


def permutation_pvalue(observed: float | np.ndarray, null_stats: np.ndarray, axis: int = 0) -> np.ndarray:
    """One-sided (greater) permutation p-value ``(1 + #{null >= observed}) / (1 + n_perm)``."""
    null = np.asarray(null_stats, dtype=float)
    n = np.sum(~np.isnan(null), axis=axis)
    return (1 + np.sum(null >= np.asarray(observed), axis=axis)) / (1 + n)


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini–Hochberg false-discovery-rate control.

    Returns ``(q_values, rejected)``. NaN p-values stay NaN and are never rejected (they do not count as tests).
    """
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m:
        pv = p[ok]
        order = np.argsort(pv, kind="stable")
        ranked = pv[order] * m / np.arange(1, m + 1)
        # step-up: q_(i) = min_{j >= i} p_(j) m / j
        qs = np.minimum.accumulate(ranked[::-1])[::-1]
        out = np.empty(m)
        out[order] = np.minimum(qs, 1.0)
        q[ok] = out
    return q, np.where(ok, q <= alpha, False)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    rx = pd.Series(x).rank().to_numpy()
    ry = pd.Series(y).rank().to_numpy()
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval of the mean of ``x`` (NaN ignored); NaN bounds with < 2 values.

    Used where the speaker is the unit and groups may have few speakers: a t interval keeps its coverage with 3–10
    speakers, where a percentile bootstrap over so few clusters is too narrow.
    """
    from scipy.stats import t as student_t

    v = np.asarray(x, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    se = float(v.std(ddof=1)) / np.sqrt(v.size)
    q = float(student_t.ppf(0.5 + level / 2, v.size - 1))
    return m, m - q * se, m + q * se


def welch_se_df(vars_: np.ndarray, ns: np.ndarray, coefs: np.ndarray) -> tuple[float, float]:
    """Standard error and Welch–Satterthwaite degrees of freedom of ``Σ_i c_i · mean_i`` for independent group
    means with sample variances ``vars_`` and sizes ``ns``."""
    terms = coefs**2 * vars_ / ns
    se2 = float(terms.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        df = se2**2 / float(np.sum(terms**2 / np.maximum(ns - 1, 1)))
    return float(np.sqrt(se2)), float(df) if np.isfinite(df) else float("nan")


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (family-wise error control under any dependence); NaN stay NaN and do not count."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m:
        pv = p[ok]
        order = np.argsort(pv, kind="stable")
        adj = np.maximum.accumulate((m - np.arange(m)) * pv[order])
        res = np.empty(m)
        res[order] = np.minimum(adj, 1.0)
        out[ok] = res
    return out
