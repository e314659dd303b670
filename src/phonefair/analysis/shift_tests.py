"""Observed estimates, speaker-permutation tests and speaker-bootstrap CIs for one (layer, space).

Permutation scheme: group labels are shuffled *between speakers* (a speaker's tokens always stay together, because
the unit of every statistic is the speaker-phone mean). Every test is a *pairwise* test ``g`` vs ``h`` that shuffles
labels among the speakers of ``g`` and ``h`` only. With a user reference group ``r`` the pairs are ``(g, r)``; with
the default median-group consensus all pairs are tested and combined per group by an intersection–union rule
(:func:`consensus_pvalue`). A single shuffle over all groups would be wrong: with one shifted group, the mixtures
built by the shuffle differ from *every* real group, and the unshifted groups would be flagged too. p-values are
``(1 + #{T* ≥ T}) / (1 + n_perm)`` (one-sided: larger shift / larger spread).

The shift test statistic is *studentised* (``D_gh / (v_g/n_g + v_h/n_h)``, ``v`` the total variance of a group's
speaker means): a group whose speakers are merely noisier (fewer tokens, larger spread) is not exchangeable with the
others under the raw distance, and its unstudentised distance has a heavier right tail; studentising makes the
permutation null approximately right for it too (Janssen 1997; Chung & Romano 2013).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from phonefair.analysis.decomposition import components, consensus, gram, group_moments, nanmean_last, use_gram
from phonefair.analysis.sufficient import SpaceStats
from phonefair.analysis.variance import phone_scale, speaker_dispersion, welch_t
from phonefair.stats import cluster_bootstrap_weights, percentile_ci

_MAX_FLOATS = 15_000_000  # per batch of replicates: b × G × P × D floats of group sums


@dataclass
class SpaceResult:
    """Everything the tables need for one (layer, space); arrays indexed ``[group, phone]`` or ``[group]``."""

    dim: int
    D: np.ndarray  # [G, G, P] pairwise squared distances
    shift: np.ndarray  # [G, P]
    shift_ci: tuple[np.ndarray, np.ndarray]
    shift_star: np.ndarray  # [G]  mean over common phones
    shift_star_ci: tuple[np.ndarray, np.ndarray]
    p: np.ndarray  # [G, P]
    p_star: np.ndarray  # [G]
    between: np.ndarray  # [G, P]
    within: np.ndarray  # [G, P]
    N: np.ndarray  # [G, P] speakers with the phone
    tokens: np.ndarray  # [G, P]
    ratio: np.ndarray  # [G] random-variance ratio to the reference
    ratio_ci: tuple[np.ndarray, np.ndarray]
    ratio_p: np.ndarray  # [G]
    common: np.ndarray  # [P] bool, phones with >= 2 speakers in every group
    D_star: np.ndarray  # [G, G] pairwise distance averaged over common phones


def _ci(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI, quietly NaN where every replicate is NaN (e.g. the reference group's own shift)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return percentile_ci(reps, level)


def _batches(n: int, per: int) -> list[slice]:
    step = max(1, _MAX_FLOATS // max(per, 1))
    return [slice(a, min(a + step, n)) for a in range(0, n, step)]


def _onehot(labels: np.ndarray, G: int) -> np.ndarray:
    return (labels[None, :] == np.arange(G)[:, None]).astype(np.float64)


def _summaries(st: SpaceStats, w: np.ndarray, ref: int | None, common: np.ndarray,
               K: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Shift and spread summaries for a batch of weight replicates ``w [b, G, S]``."""
    c = components(group_moments(st, w, K=K))
    d_star = nanmean_last(c.D, common)  # [b, G, G]
    V = c.between + c.within
    vbar = nanmean_last(V, common)
    if ref is None:
        shift, shift_star = consensus(c.D), consensus(d_star[..., None])[..., 0]
    else:
        shift, shift_star = c.D[:, :, ref, :].copy(), d_star[:, :, ref].copy()
        shift[:, ref], shift_star[:, ref] = np.nan, np.nan
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        denom = np.nanmedian(vbar, axis=1, keepdims=True) if ref is None else vbar[:, ref:ref + 1]
        logratio = np.log(vbar / denom)
    return {"shift": shift, "shift_star": shift_star, "logratio": logratio, "D": c.D, "d_star": d_star}


def _pair_null(st: SpaceStats, labels: np.ndarray, g: int, h: int, common: np.ndarray, n_perm: int,
               rng: np.random.Generator, scale: np.ndarray, K: np.ndarray | None) -> dict[str, np.ndarray]:
    """Observed and permutation statistics of ``g`` vs ``h``, shuffling labels among their speakers only.

    Shift: studentised distance per phone and its mean over common phones. Spread: Welch t of the speakers'
    normalised phoneme variance (:func:`~phonefair.analysis.variance.speaker_dispersion`), studentised for the
    same reason as the shift (speakers with fewer tokens have noisier variance estimates).
    """
    idx = np.flatnonzero((labels == g) | (labels == h))
    sub = SpaceStats(mean=st.mean[idx], count=st.count[idx], ss=st.ss[idx])
    Ks = None if K is None else np.ascontiguousarray(K[idx][:, :, idx])
    lab = (labels[idx] == g).astype(np.int64)  # 1 = g, 0 = h
    P, D = st.mean.shape[1], st.mean.shape[2]

    def stats(lb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = np.stack([lb == 1, lb == 0], axis=1).astype(np.float64)  # [b, 2, S_pair]
        m = group_moments(sub, w, K=Ks, speaker_dots=True)
        c = components(m)
        t = c.T[:, 0, 1, :]  # [b, P]
        disp = speaker_dispersion(sub, w, scale, m=m)
        return t, nanmean_last(t, common), welch_t(disp, lb == 1, lb == 0)

    t0, ts0, v0 = stats(lab[None])
    t_null = np.full((n_perm, P), np.nan)
    ts_null = np.full(n_perm, np.nan)
    v_null = np.full(n_perm, np.nan)
    perms = speaker_permutations(lab, n_perm, rng)
    for sl in _batches(n_perm, 3 * P * (len(idx) if Ks is not None else D)):
        t_null[sl], ts_null[sl], v_null[sl] = stats(perms[sl])
    return {"p": _pval(t_null, t0[0]), "p_star": _pval(ts_null[:, None], ts0)[0],
            "p_var_g": _pval(v_null[:, None], v0)[0], "p_var_h": _pval(-v_null[:, None], -v0)[0]}


def speaker_permutations(labels: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_perm, S]``: each row a random permutation of the per-*speaker* labels (group sizes kept).

    Labels are attached to speakers, never to tokens: every statistic downstream is a function of speaker-phone
    means, so a speaker's tokens always move together.
    """
    if n_perm == 0:
        return np.zeros((0, len(labels)), dtype=labels.dtype)
    return np.stack([rng.permutation(labels) for _ in range(n_perm)])


def _pval(null: np.ndarray, o: np.ndarray) -> np.ndarray:
    """``(1 + #{null >= o}) / (1 + n)`` along axis 0, ignoring NaN replicates; NaN where ``o`` is NaN."""
    ok = ~np.isnan(null)
    n = ok.sum(0)
    ge = np.sum(np.where(ok, null >= o[None], False), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isnan(o) | (n == 0), np.nan, (1 + ge) / (1 + n))


def consensus_pvalue(pair_p: np.ndarray, n_groups: int) -> np.ndarray:
    """Combine pairwise p-values ``[G-1, ...]`` of one group into a p-value against the median-group consensus.

    The consensus shift of ``g`` is positive only if ``g`` differs from at least ``K = ceil(G/2)`` of the other
    groups (the median of ``{0, D_g1, …}`` is then positive). Intersection–union test: reject when the ``K``-th
    smallest pairwise p-value is small, Bonferroni-corrected over the ``G − K`` ways one true null can slip in:
    ``p = min(1, (G − K) · p_(K))`` — exact level α for three groups, conservative beyond.
    """
    K = min(int(np.ceil(n_groups / 2)), n_groups - 1)
    srt = np.sort(pair_p, axis=0)  # NaN sort last
    pk = srt[K - 1]
    return np.minimum(1.0, max(n_groups - K, 1) * pk)


def analyze_space(st: SpaceStats, labels: np.ndarray, n_groups: int, *, ref: int | None, n_perm: int,
                  n_boot: int, seed: int, level: float) -> SpaceResult:
    """Estimates, permutation p-values and bootstrap CIs for one space. ``labels[s]`` is speaker s's group index.

    Tests are pairwise (``g`` vs ``h``, labels shuffled among the speakers of the two groups): against a user
    reference only the pairs ``(g, ref)``; against the consensus all pairs, combined by :func:`consensus_pvalue`.
    A full shuffle of all labels would be wrong here: with one shifted group every *other* group would look
    different from the shuffled mixtures and be flagged too.
    """
    G, S = n_groups, len(labels)
    P, D = st.mean.shape[1], st.mean.shape[2]
    K = gram(st) if use_gram(st) else None
    per = G * P * (S if K is not None else D)
    onehot = _onehot(labels, G)
    N_obs = onehot @ st.has
    common = (N_obs >= 2).all(0)
    obs = _summaries(st, onehot[None], ref, common, K)
    c0 = components(group_moments(st, onehot[None], K=K))

    rng = np.random.default_rng(seed)
    pairs = [(g, ref) for g in range(G) if g != ref] if ref is not None else \
        [(g, h) for g in range(G) for h in range(g + 1, G)]
    pp = np.full((G, G, P), np.nan)
    pps = np.full((G, G), np.nan)
    pv = np.full((G, G), np.nan)
    scale = phone_scale(st, K)
    for g, h in pairs:
        r = _pair_null(st, labels, g, h, common, n_perm, rng, scale, K)
        pp[g, h] = pp[h, g] = r["p"]
        pps[g, h] = pps[h, g] = r["p_star"]
        pv[g, h], pv[h, g] = r["p_var_g"], r["p_var_h"]
    if ref is None:
        others = [[h for h in range(G) if h != g] for g in range(G)]
        p = np.stack([consensus_pvalue(pp[g, others[g]], G) for g in range(G)])
        p_star = np.array([consensus_pvalue(pps[g, others[g]], G) for g in range(G)])
        ratio_p = np.array([consensus_pvalue(pv[g, others[g]], G) for g in range(G)])
    else:
        p, p_star, ratio_p = pp[:, ref], pps[:, ref], pv[:, ref]

    # --- speaker bootstrap within groups (CIs) ---
    _, Wb = cluster_bootstrap_weights(np.arange(S), n_boot, seed=seed + 1, strata=labels)
    sh_b = np.empty((n_boot, G, P))
    ss_b = np.empty((n_boot, G))
    lr_b = np.empty((n_boot, G))
    for sl in _batches(n_boot, per):
        w = Wb[sl][:, None, :] * onehot[None]
        s = _summaries(st, w, ref, common, K)
        sh_b[sl], ss_b[sl], lr_b[sl] = s["shift"], s["shift_star"], s["logratio"]
    lo, hi = _ci(lr_b, level)
    return SpaceResult(
        dim=D, D=c0.D[0], shift=obs["shift"][0], shift_ci=_ci(sh_b, level),
        shift_star=obs["shift_star"][0], shift_star_ci=_ci(ss_b, level), p=p, p_star=p_star,
        between=c0.between[0], within=c0.within[0], N=c0.N[0], tokens=c0.tokens[0],
        ratio=np.exp(obs["logratio"][0]), ratio_ci=(np.exp(lo), np.exp(hi)), ratio_p=ratio_p, common=common,
        D_star=obs["d_star"][0],
    )


__all__ = ["SpaceResult", "analyze_space", "consensus_pvalue", "speaker_permutations"]
