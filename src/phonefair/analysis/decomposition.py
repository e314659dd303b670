"""Estimators of the token model ``x = μ_p + δ_{g,p} + u_{s,p} + e_t`` from per-(speaker, phone) statistics.

All estimators take *speaker weights* ``w[b, g, s]`` (how many times speaker ``s`` counts in group ``g`` in
replicate ``b``): the observed data is one replicate of 0/1 group indicators, a permutation is a replicate of
shuffled indicators, a cluster bootstrap is a replicate of draw counts. So the observed value, the permutation null
and the bootstrap CI of every quantity come from the same vectorised code on small arrays, never from tokens.

Definitions (``x_i`` = mean of speaker ``i``'s tokens of phone ``p``; ``n_g`` speakers of group ``g`` have ``p``):

* **Squared shift between groups** (cross-validated / U-statistic distance)::

      D_gh = U_g + U_h − 2 x̄_g·x̄_h,   U_g = Σ_{i≠i'} x_i·x_i' / (n_g (n_g − 1))

  ``U_g`` is the average inner product of *distinct* speakers' means, so the noise of a speaker never multiplies
  itself and ``E[D_gh] = ||μ_g − μ_h||²`` exactly, whatever the token and speaker counts. It is the average of the
  half-split estimator ``(x̄_g^A − x̄_h^A)·(x̄_g^B − x̄_h^B)`` over *all* speaker-disjoint half splits, in closed form
  (so no split seed is needed; :func:`split_half_distance` computes the random-split version for comparison).
* **Within-speaker variance** (per dim): pooled ``Σ_s SS_sp / (D Σ_s (n_sp − 1))``.
* **Between-speaker variance** (per dim): ``Σ_i ||x_i − x̄||² / (D (n − 1)) − σ²_w · mean_i(1/n_i)`` — the
  spread of speaker means minus the part token noise contributes to it, unbiased for unequal token counts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from phonefair.analysis.sufficient import SpaceStats


@dataclass
class Moments:
    """Weighted group sums of speaker-level statistics, arrays ``[b, G, P]``.

    ``C[b, g, h, p] = S_g · S_h`` are the inner products of the weighted group sums of speaker means
    ``S_g = Σ_i w_gi x_i``; ``XS[b, g, p, s] = x_s · S_g`` (only when asked for).
    """

    N: np.ndarray  # Σ w · has          (speakers with the phone)
    N2: np.ndarray  # Σ w² · has        (for excluding same-speaker pairs under bootstrap duplicates)
    C: np.ndarray  # [b, G, G, P]
    Q1: np.ndarray  # Σ w · ||x_i||²
    Q2: np.ndarray  # Σ w² · ||x_i||²
    SSW: np.ndarray  # Σ w · SS_i       (within-speaker sum of squares)
    DOF: np.ndarray  # Σ w · (n_i − 1)
    INV: np.ndarray  # Σ w · 1/n_i
    TOK: np.ndarray  # Σ w · n_i
    dim: int
    XS: np.ndarray | None = None


def group_moments(st: SpaceStats, w: np.ndarray, *, speaker_dots: bool = False,
                  members: list[np.ndarray] | None = None) -> Moments:
    """Group sums for speaker weights ``w [b, G, S]``, by direct sums (cost linear in speakers: ``b·S·P·D``).

    ``members[g]``, when given, lists the only speakers that ever have weight in group ``g`` (a within-group
    bootstrap), so each group's sums touch its own speakers only instead of all ``S``. ``speaker_dots`` adds
    ``XS[b, g, p, s] = x_s · S_g`` (needed by the speaker-dispersion statistic).
    """
    b, G, S = w.shape
    P, D = st.mean.shape[1], st.mean.shape[2]
    wf = w.reshape(b * G, S)
    w2 = wf * wf
    has, sq = st.has, st.sq
    flat = st.mean.reshape(S, P * D)
    if members is None:
        Ssum = (wf @ flat).reshape(b, G, P, D)
    else:
        Ssum = np.empty((b, G, P * D))
        for g in range(G):
            idx = members[g]
            Ssum[:, g] = w[:, g][:, idx] @ flat[idx]
        Ssum = Ssum.reshape(b, G, P, D)
    Sp = Ssum.transpose(0, 2, 1, 3)  # [b, P, G, D]
    C = np.matmul(Sp, Sp.transpose(0, 1, 3, 2)).transpose(0, 2, 3, 1)  # [b, G, G, P]
    XS = np.einsum("bgpd,spd->bgps", Ssum, st.mean, optimize=True) if speaker_dots else None

    def r(a: np.ndarray) -> np.ndarray:
        return a.reshape(b, G, P)

    return Moments(N=r(wf @ has), N2=r(w2 @ has), C=C, Q1=r(wf @ sq), Q2=r(w2 @ sq), SSW=r(wf @ st.ss),
                   DOF=r(wf @ st.dof), INV=r(wf @ st.inv_n), TOK=r(wf @ st.count.astype(np.float64)), dim=D, XS=XS)


@dataclass
class Components:
    """Estimates for one batch of replicates."""

    D: np.ndarray  # [b, G, G, P] squared distances between group means (0 on the diagonal)
    T: np.ndarray  # [b, G, G, P] studentised distances D / scale
    scale: np.ndarray  # [b, G, G, P] v_g/n_g + v_h/n_h: the noise scale of the difference of two group means
    between: np.ndarray  # [b, G, P] per-dim between-speaker variance
    within: np.ndarray  # [b, G, P] per-dim within-speaker variance
    N: np.ndarray  # [b, G, P]
    tokens: np.ndarray  # [b, G, P]


def components(m: Moments) -> Components:
    """Pairwise squared distances, studentised distances and variance components from group moments."""
    with np.errstate(divide="ignore", invalid="ignore"):
        norm2 = np.einsum("bggp->bgp", m.C)
        pairs = m.N**2 - m.N2
        U = np.where(pairs > 0, (norm2 - m.Q2) / pairs, np.nan)
        cross = m.C / (m.N[:, :, None] * m.N[:, None, :])
        Dm = U[:, :, None] + U[:, None, :] - 2 * cross
        G = m.N.shape[1]
        eye = np.eye(G, dtype=bool)[None, :, :, None]
        Dm = np.where(eye, np.where(np.isnan(U)[:, :, None, :], np.nan, 0.0), Dm)
        # total (summed over dims) variance of speaker means; its ratio to n is the noise scale of a group mean
        spread = np.where(m.N > 1, (m.Q1 - norm2 / m.N) / (m.N - 1), np.nan)
        se = spread / m.N
        scale = se[:, :, None] + se[:, None, :]
        T = np.where(eye, Dm, Dm / scale)
        within = np.where(m.DOF > 0, m.SSW / (m.dim * m.DOF), np.nan)
        between = spread / m.dim - within * m.INV / m.N
    return Components(D=Dm, T=T, scale=scale, between=between, within=within, N=m.N, tokens=m.TOK)


def consensus(pair: np.ndarray) -> np.ndarray:
    """Robust consensus: per group, the median over all groups ``h`` (itself included, at 0) of ``pair[.., g, h, ..]``.

    With one shifted group out of three, an unshifted group sees ``{0, 0, δ²}`` → 0 and the shifted one sees
    ``{0, δ², δ²}`` → δ²; in one dimension it equals the squared distance to the median group mean.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(pair, axis=2)


def nanmean_last(a: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean over the last axis ignoring NaN (restricted to ``mask`` when given); NaN when nothing is left."""
    if mask is not None:
        a = a[..., mask]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=-1) if a.shape[-1] else np.full(a.shape[:-1], np.nan)


def naive_distance(st: SpaceStats, labels: np.ndarray, g: int, h: int) -> np.ndarray:
    """Plug-in ``||x̄_g − x̄_h||²`` per phone (biased upwards by the noise of both means; for comparison only)."""
    has = st.has
    out = []
    for grp in (g, h):
        sel = labels == grp
        n = has[sel].sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(st.mean[sel].sum(0) / n[:, None])
    return ((out[0] - out[1]) ** 2).sum(-1)


def split_half_distance(st: SpaceStats, labels: np.ndarray, g: int, h: int, *, n_splits: int,
                        seed: int) -> np.ndarray:
    """Average over ``n_splits`` random speaker-disjoint half splits of ``(x̄_g^A − x̄_h^A)·(x̄_g^B − x̄_h^B)``.

    Converges to the closed-form :func:`components` distance as ``n_splits`` grows (tests check this).
    """
    rng = np.random.default_rng(seed)
    S = len(labels)
    acc = np.zeros(st.mean.shape[1])
    for _ in range(n_splits):
        half = np.zeros(S, dtype=int)
        for grp in (g, h):
            idx = rng.permutation(np.flatnonzero(labels == grp))
            half[idx[len(idx) // 2:]] = 1
        d = []
        for hv in (0, 1):
            w = np.zeros((1, 2, S))
            w[0, 0] = (labels == g) & (half == hv)
            w[0, 1] = (labels == h) & (half == hv)
            n = w[0] @ st.has  # [2, P]
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = np.einsum("gs,spd->gpd", w[0], st.mean) / n[:, :, None]
            d.append(mean[0] - mean[1])
        acc += np.einsum("pd,pd->p", d[0], d[1])
    return acc / n_splits


__all__ = ["Components", "Moments", "components", "consensus", "group_moments", "naive_distance",
           "nanmean_last", "split_half_distance"]
