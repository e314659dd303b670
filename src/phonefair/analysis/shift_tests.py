"""Two-group statistics of one (layer, space), their speaker-permutation nulls and speaker-bootstrap intervals.

Every test compares two sets of speakers, ``a`` and ``b`` (two groups, or a group and the pooled groups it is
compared with), and shuffles the labels *between speakers of those two sets only*: a speaker's tokens always move
together (the unit of every statistic is the speaker-phone mean), and a third group never enters the null — with
one shifted group, a shuffle over all groups would make every other group look different from the mixtures.

Statistics (``a`` against ``b``):

* per phone, the *studentised* squared distance ``T_p = D_ab / (v_a/n_a + v_b/n_b)`` (``D`` the unbiased
  U-statistic distance of :mod:`~phonefair.analysis.decomposition`, ``v`` the total variance of a group's speaker
  means): a group whose speakers are merely noisier is then not mistaken for a shifted one (Janssen 1997; Chung &
  Romano 2013); and the omnibus ``T_* = Σ_p D_ab,p / Σ_p (v_a/n_a + v_b/n_b)_p`` over the phones both sets have
  (≥ 2 speakers each; in a :class:`CrossFit` space the sums also run over both halves). The ratio of sums pools the
  variance estimates of every phone (and half) in one denominator: averaging per-phone ratios instead, each
  denominator estimated from a few speakers, makes the permutation test liberal when the noisier set is also the
  smaller one (Behrens–Fisher; measured in docs/typology.md §7);
* the Welch t of the speakers' normalised phoneme variance (:func:`~phonefair.analysis.variance.speaker_dispersion`),
  positive when ``a`` is more variable.

**Adaptive permutation counts.** Permutations are drawn in batches; a statistic stops once ``h`` permutations have
reached it (Besag & Clifford 1991: then ``p = h / n``, exact), so clearly null statistics cost a few dozen
permutations and small p-values get up to ``n_max`` (``p ≥ 1 / (n_max + 1)``). Costs are linear in the number of
speakers: group sums are ``weights @ speaker means`` (no speaker × speaker Gram matrix).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from phonefair.analysis.decomposition import components, group_moments
from phonefair.analysis.sufficient import SpaceStats
from phonefair.analysis.variance import phone_scale, speaker_dispersion, welch_t

__all__ = ["PairStats", "pair_statistics", "permutation_test", "subset", "label_permutations",
           "AdaptiveResult", "H_STOP", "null_statistics", "percentile", "CrossFit", "SplitPair", "adaptive_test"]

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
    d_sum: np.ndarray  # [b] Σ_p D_p over common phones: numerator of t_star
    se_sum: np.ndarray  # [b] Σ_p (v_a/n_a + v_b/n_b) over common phones: denominator of t_star


def pair_statistics(st: SpaceStats, labels: np.ndarray, common: np.ndarray, scale: np.ndarray) -> PairStats:
    """:class:`PairStats` for label vectors ``labels [b, S]`` (True = speaker in ``a``) over the speakers of ``st``."""
    lab = np.atleast_2d(labels).astype(bool)
    w = np.stack([lab, ~lab], axis=1).astype(np.float64)  # [b, 2, S]
    m = group_moments(st, w, speaker_dots=True)
    c = components(m)
    t = c.T[:, 0, 1, :]
    disp = speaker_dispersion(st, w, scale, m=m)
    d, se = c.D[:, 0, 1, :], c.scale[:, 0, 1, :]
    ok = common[None] & np.isfinite(d) & np.isfinite(se)
    d_sum, se_sum = np.where(ok, d, 0.0).sum(-1), np.where(ok, se, 0.0).sum(-1)
    return PairStats(t_phone=t, t_star=_ratio(d_sum, se_sum), var_t=welch_t(disp, lab, ~lab), d_sum=d_sum,
                     se_sum=se_sum)


def _ratio(d_sum: np.ndarray, se_sum: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se_sum > 0, d_sum / se_sum, np.nan)


def label_permutations(labels: np.ndarray, n: int, gen: np.random.Generator,
                       strata: np.ndarray | None = None) -> np.ndarray:
    """``[n, S]``: each row a random permutation of the per-speaker labels (group sizes kept), within each stratum
    when ``strata [S]`` is given (the labels' counts in every stratum are then kept too)."""
    if n == 0:
        return np.zeros((0, len(labels)), dtype=labels.dtype)
    keys = gen.random((n, len(labels)))
    if strata is not None:  # sort by stratum first: a permutation never leaves its stratum
        keys = keys + 2.0 * np.searchsorted(np.unique(strata), strata)[None, :]
        order = np.argsort(strata, kind="stable")
        out = np.empty((n, len(labels)), dtype=labels.dtype)
        out[:, order] = labels[np.argsort(keys, axis=1)]
        return out
    return labels[np.argsort(keys, axis=1)]


@dataclass
class CrossFit:
    """A projected space cross-fitted by speaker halves.

    A projection fitted on the analysed speakers (the LDA) keeps the directions of the phone means it was fitted on,
    sampling deviations included; a group whose speakers are noisier dominates those deviations, so its own
    deviation is kept more than chance would keep it and it looks *shifted* (a false "systematic" verdict on a
    purely noisier group). Fitted on the other half of the speakers, the projection is independent of the speakers
    it projects, and the studentised tests keep their level.
    """

    stats: list[SpaceStats]  # stats[h]: the speakers of half h, projected by the projection fitted on the other half
    members: list[np.ndarray]  # sorted speaker indices of each half
    half: np.ndarray  # [S] the half of every speaker


class SplitPair:
    """Pair statistics in a :class:`CrossFit` space for speakers ``idx`` (``labels`` True = ``a``): computed within
    each half (the speakers of a half share one projection) and averaged over the halves (Welch t: summed and
    divided by √halves). A half with fewer than 2 speakers of either set is left out."""

    def __init__(self, cf: CrossFit, idx: np.ndarray, labels: np.ndarray) -> None:
        self.n = len(idx)
        self.parts: list[tuple[np.ndarray, SpaceStats, np.ndarray, np.ndarray]] = []
        self.n_phones = cf.stats[0].mean.shape[1]
        for h in range(len(cf.stats)):
            pos = np.flatnonzero(cf.half[idx] == h)
            lab = labels[pos]
            if lab.sum() < 2 or (~lab).sum() < 2:
                continue
            st = subset(cf.stats[h], np.searchsorted(cf.members[h], idx[pos]))
            common = (st.has[lab].sum(0) >= 2) & (st.has[~lab].sum(0) >= 2)
            if common.any():
                self.parts.append((pos, st, common, phone_scale(st)))

    @property
    def common(self) -> np.ndarray:
        """Phones some half can test."""
        out = np.zeros(self.n_phones, dtype=bool)
        for _, _, c, _ in self.parts:
            out |= c
        return out

    def __call__(self, labels: np.ndarray) -> PairStats:
        lab = np.atleast_2d(labels)
        if not self.parts:
            nan = np.full(len(lab), np.nan)
            return PairStats(t_phone=np.full((len(lab), self.n_phones), np.nan), t_star=nan, var_t=nan.copy(),
                             d_sum=nan.copy(), se_sum=nan.copy())
        res = [pair_statistics(st, lab[:, pos], common, scale) for pos, st, common, scale in self.parts]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t_phone = np.nanmean(np.stack([r.t_phone for r in res]), axis=0)
            # one ratio over both halves: its denominator pools both halves' variance estimates
            d_sum, se_sum = np.sum([r.d_sum for r in res], axis=0), np.sum([r.se_sum for r in res], axis=0)
            v = np.stack([r.var_t for r in res])
            k = np.sum(~np.isnan(v), axis=0)
            var_t = np.where(k > 0, np.nansum(v, axis=0) / np.sqrt(np.maximum(k, 1)), np.nan)
        return PairStats(t_phone=t_phone, t_star=_ratio(d_sum, se_sum), var_t=var_t, d_sum=d_sum, se_sum=se_sum)

    def batch(self) -> int:
        """Permutations per batch that keep the memory bounded."""
        if not self.parts:
            return 512
        st = self.parts[0][1]
        return _batch(self.n, st.mean.shape[1], st.mean.shape[2])


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
    P, D = st.mean.shape[1], st.mean.shape[2]
    return adaptive_test(lambda lab: pair_statistics(st, lab, common, scale), labels, n_max=n_max, gen=gen, h=h,
                         first=first, batch=_batch(len(labels), P, D))


def adaptive_test(stat: Callable[[np.ndarray], PairStats], labels: np.ndarray, *, n_max: int,
                  gen: np.random.Generator, h: int = H_STOP, first: int = 99, batch: int = 512,
                  strata: np.ndarray | None = None) -> AdaptiveResult:
    """:func:`permutation_test` for any pair statistic ``stat(labels [b, S]) -> PairStats`` (permutations within
    ``strata`` when given)."""
    obs = stat(labels[None])
    P = obs.t_phone.shape[1]
    o = np.concatenate([obs.t_phone[0], obs.t_star, obs.var_t, -obs.var_t])  # larger = more evidence
    M = len(o)
    ge = np.zeros(M, dtype=np.int64)
    used = np.zeros(M, dtype=np.int64)
    stopped = np.isnan(o)  # undefined statistics (a phone lacking speakers) need no permutations
    n_done = 0
    while n_done < n_max and not stopped.all():
        b = min(min(first, batch) if n_done == 0 else batch, n_max - n_done)
        perms = label_permutations(labels, b, gen, strata)
        ps = stat(perms)
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


def null_statistics(st: SpaceStats | SplitPair, perms: np.ndarray, common: np.ndarray | None = None,
                    scale: np.ndarray | None = None) -> PairStats:
    """:func:`pair_statistics` (or a :class:`SplitPair`'s) for a fixed set of permutations, in memory-bounded
    batches (mechanism tests reuse the same permutations at every layer and space, so their evidence can be
    combined)."""
    if isinstance(st, SplitPair):
        fn, bs = st, st.batch()
    else:
        P, D = st.mean.shape[1], st.mean.shape[2]
        bs = _batch(perms.shape[1], P, D)
        fn = partial(pair_statistics, st, common=common, scale=scale)
    parts = [fn(perms[a:a + bs]) for a in range(0, len(perms), bs)]
    return PairStats(t_phone=np.concatenate([p.t_phone for p in parts]),
                     t_star=np.concatenate([p.t_star for p in parts]),
                     var_t=np.concatenate([p.var_t for p in parts]),
                     d_sum=np.concatenate([p.d_sum for p in parts]), se_sum=np.concatenate([p.se_sum for p in parts]))


def percentile(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, quietly NaN where every replicate is NaN."""
    a = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(reps, a, axis=0), np.nanquantile(reps, 1 - a, axis=0)
