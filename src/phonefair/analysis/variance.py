"""Random error at the speaker level: normalised phoneme variance per speaker, and its relation to accuracy.

Per speaker ``s`` and phone ``p`` (``D`` dims, ``n_sp`` tokens, ``m_gp^(−s)`` the mean of the *other* speakers of
``s``'s group)::

    r_sp = SS_sp / (n_sp D) + ||x̄_sp − m_gp^(−s)||² / D

is the mean squared distance per dim of ``s``'s tokens to its group's phone mean (group mean, so a group shift is
*not* counted as random error; leave-speaker-out, so the speaker does not pull the mean towards itself). Its
expectation is ``σ²_w + σ²_b`` (+ the small variance of the leave-out mean) whatever ``n_sp``. The speaker's
**normalised phoneme variance** is ``variance_s = Σ_p n_sp r_sp / r̄_p / Σ_p n_sp`` where ``r̄_p`` is a label-free
per-phone scale (mean over all speakers of the same quantity around the all-speaker phone mean): 1 is typical,
and phones with intrinsically larger spread do not make a speaker look noisy because he says them more often.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, rankdata

from phonefair.analysis.decomposition import Moments, group_moments
from phonefair.analysis.sufficient import SpaceStats
from phonefair.stats import cluster_bootstrap_weights, percentile_ci, spearman


def phone_scale(st: SpaceStats) -> np.ndarray:
    """Label-free per-phone scale ``r̄_p`` (``[P]``): the mean ``r_sp`` with all speakers as one group."""
    w = np.ones((1, 1, st.mean.shape[0]))
    r = _r_sp(st, w)[0]  # [S, P]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(np.where(st.count > 0, r, np.nan), axis=0)
    return out


def _r_sp(st: SpaceStats, w: np.ndarray, m: Moments | None = None) -> np.ndarray:
    """``r_sp`` for 0/1 group indicators ``w [b, G, S]`` → ``[b, S, P]`` (NaN where undefined)."""
    b, G, S = w.shape
    D = st.mean.shape[2]
    if m is None or m.XS is None:
        m = group_moments(st, w, speaker_dots=True)
    N = m.N
    norm2 = np.einsum("bggp->bgp", m.C)
    k = w.argmax(1)  # [b, S] group of each speaker in each replicate
    member = w.sum(1) > 0  # [b, S]
    bi = np.arange(b)[:, None]
    Nk = N[bi, k]  # [b, S, P]
    XS = m.XS
    assert XS is not None
    dk = XS[bi, k, :, np.arange(S)[None, :]]  # x_s · S_{group of s}: [b, S, P]
    n2k = norm2[bi, k]
    sq = st.sq[None]
    Q1 = m.Q1
    with np.errstate(divide="ignore", invalid="ignore"):
        # ||x − (S − x)/(N − 1)||² = (N² ||x||² − 2N x·S + ||S||²) / (N − 1)²
        dev = (Nk**2 * sq - 2 * Nk * dk + n2k) / (Nk - 1) ** 2
        # minus the noise of the leave-out mean itself (≈ spread of the group's speaker means / (N − 1)), so that
        # groups whose speakers have fewer tokens (noisier leave-out means) are not made to look more variable
        spread = (Q1 - norm2 / N) / (N - 1)
        dev = dev - spread[bi, k] / (Nk - 1)
        within = st.ss / np.where(st.count > 0, st.count, np.nan) / D
        r = within[None] + dev / D
    ok = (st.count[None] > 0) & (Nk >= 2) & member[:, :, None]
    return np.where(ok, r, np.nan)


def speaker_dispersion(st: SpaceStats, w: np.ndarray, scale: np.ndarray, m: Moments | None = None) -> np.ndarray:
    """Normalised phoneme variance per speaker for 0/1 group indicators ``w [b, G, S]`` → ``[b, S]``.

    Computed for every replicate at once without materialising ``r_sp`` per replicate: ``r_sp`` is affine in
    ``x_s · S_g`` and in per-(group, phone) constants, so the phone sums are small matrix products. ``m`` (moments
    of the same ``w`` with ``speaker_dots=True``) avoids recomputing them. NaN for speakers in no group.
    """
    b, G, S = w.shape
    D = st.mean.shape[2]
    if m is None or m.XS is None:
        m = group_moments(st, w, speaker_dots=True)
    N = m.N
    norm2 = np.einsum("bggp->bgp", m.C)
    cnt = st.count.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        valid = N >= 2
        nm1 = N - 1
        spread = (m.Q1 - norm2 / N) / nm1
        alpha = np.where(valid, N**2 / nm1**2, 0.0)
        beta = np.where(valid, N / nm1**2, 0.0)
        gamma = np.where(valid, norm2 / nm1**2 - spread / nm1, 0.0)
        within = np.where(cnt > 0, st.ss / (cnt * D), 0.0)
        e = np.where(cnt > 0, cnt / scale[None, :], 0.0)  # [S, P] token weight / phone scale
    e = np.nan_to_num(e)
    c = e / D
    vf = valid.astype(np.float64)
    num = (np.einsum("sp,bgp->bgs", e * within, vf) + np.einsum("sp,bgp->bgs", c * st.sq, alpha)
           + np.einsum("sp,bgp->bgs", c, gamma))
    XS = m.XS
    assert XS is not None
    num -= 2 * np.matmul(beta[:, :, None, :], XS * c.T[None, None])[:, :, 0, :]
    den = np.einsum("sp,bgp->bgs", cnt, vf)
    k = w.argmax(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.take_along_axis(num / den, k[:, None, :], axis=1)[:, 0]
    return np.where(w.sum(1) > 0, out, np.nan)


def welch_t(d: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Welch t of ``mean(d[a]) − mean(d[b])`` per replicate; ``d [r, S]``, masks ``a, b [r, S]`` (bool)."""
    def ms(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.where(mask & ~np.isnan(d), d, np.nan)
        n = np.sum(~np.isnan(x), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.nanmean(x, axis=1)
            v = np.nanvar(x, axis=1, ddof=1)
        return m, v, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ma, va, na = ms(a)
        mb, vb, nb = ms(b)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (ma - mb) / np.sqrt(va / na + vb / nb)


def variance_accuracy(spk_var: pd.DataFrame, spk_acc: pd.DataFrame, *, n_boot: int, seed: int,
                      level: float) -> dict[str, float]:
    """Spearman ρ between per-speaker normalised variance and accuracy, with a speaker-bootstrap CI (within
    groups), and Kendall τ between the group ranking by mean variance and by mean *error* (1 − accuracy):
    ``+1`` means the noisiest group is also the least accurate."""
    m = spk_var.merge(spk_acc[["speaker", "accuracy"]], on="speaker", how="inner").dropna(
        subset=["variance", "accuracy"])
    out = {"rho": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_speakers": len(m), "rank_agreement": np.nan}
    if len(m) < 4:
        return out
    x, y = m["variance"].to_numpy(), m["accuracy"].to_numpy()
    out["rho"] = spearman(x, y)
    _, W = cluster_bootstrap_weights(m["speaker"].to_numpy(), n_boot, seed=seed, strata=m["group"].to_numpy())
    # every replicate as draw indices (same number of speakers each), ranked and correlated in one pass
    idx = np.stack([np.repeat(np.arange(len(m)), w.astype(int)) for w in W])
    rx, ry = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    lo, hi = percentile_ci(reps, level)
    out["ci_low"], out["ci_high"] = float(lo), float(hi)
    gm = m.groupby("group").agg(v=("variance", "mean"), a=("accuracy", "mean"))
    if len(gm) >= 2:
        tau = kendalltau(gm["v"], 1 - gm["a"]).statistic
        out["rank_agreement"] = float(tau)
    return out


__all__ = ["phone_scale", "speaker_dispersion", "variance_accuracy", "welch_t"]
