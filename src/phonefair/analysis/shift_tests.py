"""Two-group statistics of one (layer, space), their speaker-permutation nulls and speaker-bootstrap intervals.

Every test compares two sets of speakers, ``a`` and ``b`` (two groups, or a group and the pooled groups it is
compared with), and shuffles the labels *between speakers of those two sets only*: a speaker's tokens always move
together (the unit of every statistic is the speaker-phone mean), and a third group never enters the null — with
one shifted group, a shuffle over all groups would make every other group look different from the mixtures.

Statistics (``a`` against ``b``):

* per phone, the *studentised* squared distance ``T_p = D_ab / (v_a/n_a + v_b/n_b)`` (``D`` the unbiased
  U-statistic distance of :mod:`~phonefair.analysis.decomposition`, ``v`` the total variance of a group's speaker
  means): a group whose speakers are merely noisier is then not mistaken for a shifted one (Janssen 1997; Chung &
  Romano 2013); and ``T_*``, its mean over the phones both sets have (≥ 2 speakers each);
* the Welch t of the speakers' normalised phoneme variance (:func:`~phonefair.analysis.variance.speaker_dispersion`),
  positive when ``a`` is more variable.

**Adaptive permutation counts.** Permutations are drawn in batches; a statistic stops once ``h`` permutations have
reached it (Besag & Clifford 1991: then ``p = h / n``, exact), so clearly null statistics cost a few dozen
permutations and small p-values get up to ``n_max`` (``p ≥ 1 / (n_max + 1)``). Costs are linear in the number of
speakers: group sums are ``weights @ speaker means`` (no speaker × speaker Gram matrix).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from phonefair.analysis.decomposition import components, group_moments, nanmean_last
from phonefair.analysis.sufficient import SpaceStats
from phonefair.analysis.variance import speaker_dispersion, welch_t

__all__ = ["PairStats", "pair_statistics", "permutation_test", "subset", "label_permutations",
           "AdaptiveResult", "H_STOP", "null_statistics", "percentile"]

#: exceedances after which a statistic's permutation p-value is resolved (Besag & Clifford's h)
H_STOP = 20
_MAX_FLOATS = 20_000_000


def subset(st: SpaceStats, idx: np.ndarray) -> SpaceStats:
    """The statistics of speakers ``idx`` only."""
    return SpaceStats(mean=st.mean[idx], count=st.count[idx], ss=st.ss[idx])


@dataclass
class PairStats:
    """Statistics of ``a`` vs ``b`` for a batch of label vectors: arrays with a leading replicate axis."""

    t_phone: np.ndarray  # [b, P] studentised squared distance per phone
    t_star: np.ndarray  # [b] mean over common phones
    var_t: np.ndarray  # [b] Welch t of speaker dispersion, a minus b


def pair_statistics(st: SpaceStats, labels: np.ndarray, common: np.ndarray, scale: np.ndarray) -> PairStats:
    """:class:`PairStats` for label vectors ``labels [b, S]`` (True = speaker in ``a``) over the speakers of ``st``."""
    lab = np.atleast_2d(labels).astype(bool)
    w = np.stack([lab, ~lab], axis=1).astype(np.float64)  # [b, 2, S]
    m = group_moments(st, w, speaker_dots=True)
    c = components(m)
    t = c.T[:, 0, 1, :]
    disp = speaker_dispersion(st, w, scale, m=m)
    return PairStats(t_phone=t, t_star=nanmean_last(t, common), var_t=welch_t(disp, lab, ~lab))


def label_permutations(labels: np.ndarray, n: int, gen: np.random.Generator) -> np.ndarray:
    """``[n, S]``: each row a random permutation of the per-speaker labels (group sizes kept)."""
    if n == 0:
        return np.zeros((0, len(labels)), dtype=labels.dtype)
    keys = gen.random((n, len(labels)))
    return labels[np.argsort(keys, axis=1)]


def _batch(n_speakers: int, n_phones: int, dim: int) -> int:
    return max(8, min(512, _MAX_FLOATS // max(1, 3 * n_phones * max(dim, n_speakers))))


@dataclass
class AdaptiveResult:
    """Observed statistics, their permutation p-values, and how many permutations each needed."""

    observed: PairStats
    p_phone: np.ndarray  # [P] one-sided (larger shift)
    p_star: np.ndarray  # scalar array
    p_var_a: np.ndarray  # a more variable than b
    p_var_b: np.ndarray  # b more variable than a
    n_perm: np.ndarray  # permutations used per statistic [P + 3]


def permutation_test(st: SpaceStats, labels: np.ndarray, common: np.ndarray, scale: np.ndarray, *,
                     n_max: int, gen: np.random.Generator, h: int = H_STOP, first: int = 99) -> AdaptiveResult:
    """Adaptive permutation p-values of every statistic of ``a`` (``labels`` True) vs ``b`` (module docstring)."""
    obs = pair_statistics(st, labels[None], common, scale)
    o = np.concatenate([obs.t_phone[0], obs.t_star, obs.var_t, -obs.var_t])  # larger = more evidence
    M = len(o)
    ge = np.zeros(M, dtype=np.int64)
    used = np.zeros(M, dtype=np.int64)
    stopped = np.isnan(o)  # undefined statistics (a phone lacking speakers) need no permutations
    n_done = 0
    P, D = st.mean.shape[1], st.mean.shape[2]
    bs = _batch(len(labels), P, D)
    while n_done < n_max and not stopped.all():
        b = min(min(first, bs) if n_done == 0 else bs, n_max - n_done)
        perms = label_permutations(labels, b, gen)
        ps = pair_statistics(st, perms, common, scale)
        null = np.concatenate([ps.t_phone, ps.t_star[:, None], ps.var_t[:, None], -ps.var_t[:, None]], axis=1)
        hit = np.where(np.isnan(null), False, null >= o[None] - 1e-12)  # [b, M]
        cum = ge[None] + np.cumsum(hit, axis=0)
        live = ~stopped
        reach = live & (cum[-1] >= h)
        if reach.any():  # the exact permutation at which the h-th exceedance occurred
            first_idx = np.argmax(cum[:, reach] >= h, axis=0)
            used[reach] = n_done + first_idx + 1
            ge[reach] = h
            stopped |= reach
        still = live & ~reach
        ge[still] = cum[-1, still]
        n_done += b
        used[still] = n_done
    with np.errstate(invalid="ignore", divide="ignore"):
        # Besag–Clifford: h / n when stopped at the h-th exceedance, (1 + ge) / (1 + n) otherwise
        p = np.where(ge >= h, ge / np.maximum(used, 1), (1 + ge) / (1 + used))
    p = np.where(np.isnan(o), np.nan, np.minimum(p, 1.0))
    return AdaptiveResult(observed=obs, p_phone=p[:P], p_star=p[P:P + 1], p_var_a=p[P + 1:P + 2],
                          p_var_b=p[P + 2:P + 3], n_perm=used)


def null_statistics(st: SpaceStats, perms: np.ndarray, common: np.ndarray, scale: np.ndarray) -> PairStats:
    """:func:`pair_statistics` for a fixed set of permutations, in memory-bounded batches (mechanism tests reuse the
    same permutations at every layer and space, so their evidence can be combined)."""
    P, D = st.mean.shape[1], st.mean.shape[2]
    bs = _batch(perms.shape[1], P, D)
    parts = [pair_statistics(st, perms[a:a + bs], common, scale) for a in range(0, len(perms), bs)]
    return PairStats(t_phone=np.concatenate([p.t_phone for p in parts]),
                     t_star=np.concatenate([p.t_star for p in parts]),
                     var_t=np.concatenate([p.var_t for p in parts]))


def percentile(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, quietly NaN where every replicate is NaN."""
    a = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(reps, a, axis=0), np.nanquantile(reps, 1 - a, axis=0)
