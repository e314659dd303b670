"""Why is a group served worse? Shift (systematic) and spread (random) tests for the groups found served worse.

For a group ``g`` served worse, the comparison set ``C_g`` is the groups it is significantly less accurate than
(reference mode: the reference), leaving out those that are themselves served worse (unless none would remain):
a shifted group in the comparison set would make a merely noisier ``g`` look shifted against the pooled set. At the layers where it is served worse, in every analysed space (raw embedding
space and the discriminant space), ``g``'s speakers are compared with ``C_g``'s speakers pooled:

* **systematic**: the studentised squared distance between ``g``'s and ``C_g``'s phone means over all phones,
  ``T_*`` (a ratio of sums over phones: :mod:`~phonefair.analysis.shift_tests`);
* **random**: the Welch t of the speakers' normalised phoneme variance, one-sided (``g`` more variable).

**Combining spaces and layers** (a stated, calibrated rule): every (layer, space) statistic gets its permutation
p-value from one shared set of label permutations of ``g ∪ C_g`` speakers; the evidence is the smallest of those
p-values, and its own permutation distribution (the min-p over the same permutations; Westfall & Young 1993) gives
the combined p-value. So a shift that only the raw space sees (few phones, a direction the discriminant space
drops) and one only the discriminant space sees are both found, at the stated level. The (layer, space) with the
smallest p-value is reported as the one that carried the evidence. Every mechanism claim of a run (the groups
served worse × {systematic, random}) is one Holm family: the chance that *any* "why" of the verdict table names a
mechanism that is not there is at most α.

In the discriminant space every statistic is cross-fitted (:class:`~phonefair.analysis.shift_tests.CrossFit`: each
speaker half projected by the LDA of the other half, permutations within halves): a projection fitted on the tested
speakers would make a merely noisier group look shifted.

**Shares** (at the group's peak layer, in each space, with a speaker-bootstrap interval): the *systematic excess*
is the squared distance between the phone means (summed over dimensions, averaged over phones); the *random
excess* is how much larger the expected squared distance of a token from its own group's phone mean is for ``g``
than for ``C_g`` (``D × [(σ²_b + σ²_w)_g − (σ²_b + σ²_w)_C]``, per-dimension variances times dimensions). Both are
squared distances in the same units, so ``share_systematic = sys⁺ / (sys⁺ + rand⁺)`` (``x⁺ = max(x, 0)``) says which
kind of error makes ``g``'s tokens farther from where the others' are.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from phonefair import rng
from phonefair.analysis.decomposition import components, group_moments, nanmean_last
from phonefair.analysis.shift_tests import (CrossFit, SplitPair, label_permutations, null_statistics,
                                             pair_statistics, percentile, subset)
from phonefair.analysis.sufficient import SpaceStats
from phonefair.audit.design import Design
from phonefair.stats import benjamini_hochberg, cluster_bootstrap_weights, holm

__all__ = ["MechanismPlan", "plan_mechanisms", "mechanism_tables"]


@dataclass
class MechanismPlan:
    """What to test for one group served worse, and the statistics collected layer by layer."""

    group: int
    comparison: list[int]
    layers: list[str]
    peak_layer: str
    idx: np.ndarray  # speaker indices of g ∪ C_g
    labels: np.ndarray  # True for g's speakers (within idx)
    perms: np.ndarray  # [B, len(idx)] permuted labels, shared by every layer and space
    shift_obs: dict[tuple[str, str], float] = field(default_factory=dict)
    shift_null: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    var_obs: dict[tuple[str, str], float] = field(default_factory=dict)
    var_null: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    phone_rows: list[dict[str, Any]] = field(default_factory=list)
    share_rows: list[dict[str, Any]] = field(default_factory=list)

    def collect(self, layer: str, space: str, st: SpaceStats, scale: np.ndarray, phones: list[str], *,
                n_boot: int, level: float, seed: int, cross_fit: CrossFit | None = None) -> None:
        """Observed and permutation statistics of this (layer, space); phone p-values and shares at the peak.
        With ``cross_fit`` (the LDA space), every statistic comes from the cross-fitted projection."""
        if cross_fit is None:
            sub = subset(st, self.idx)
            common = (sub.has[self.labels].sum(0) >= 2) & (sub.has[~self.labels].sum(0) >= 2)
            obs = pair_statistics(sub, self.labels[None], common, scale)
            null = null_statistics(sub, self.perms, common, scale)
        else:
            sp = SplitPair(cross_fit, self.idx, self.labels)
            obs, null = sp(self.labels[None]), null_statistics(sp, self.perms)
        key = (layer, space)
        self.shift_obs[key], self.shift_null[key] = float(obs.t_star[0]), null.t_star
        self.var_obs[key], self.var_null[key] = float(obs.var_t[0]), null.var_t
        if layer != self.peak_layer:
            return
        B = len(self.perms)
        with np.errstate(invalid="ignore"):
            p_phone = (1 + np.sum(null.t_phone >= obs.t_phone[0][None] - 1e-12, axis=0)) / (B + 1)
        p_phone = np.where(np.isnan(obs.t_phone[0]), np.nan, p_phone)
        parts = [(subset(st, self.idx), self.labels)] if cross_fit is None else \
            [(part_st, self.labels[pos]) for pos, part_st, _, _ in sp.parts]
        if not parts:
            return
        dist = []
        reps = []
        for i, (sub, lab) in enumerate(parts):
            w = np.stack([lab, ~lab])[None].astype(float)
            dist.append(components(group_moments(sub, w)).D[0, 0, 1])
            com = (sub.has[lab].sum(0) >= 2) & (sub.has[~lab].sum(0) >= 2)
            reps.append(_share_replicates(sub, lab, com, n_boot=n_boot,
                                          seed=rng.derive_seed(seed, "shares", self.group, layer, space, i)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            shift_sq = np.nanmean(np.stack(dist), axis=0)
        for pi, ph in enumerate(phones):
            self.phone_rows.append({"layer": layer, "space": space, "phone": ph, "shift_sq": shift_sq[pi],
                                    "t": obs.t_phone[0, pi], "p_value": p_phone[pi]})
        # halves: the average of the two halves' excesses (replicate b of one half with replicate b of the other)
        sys = np.mean([r[0] for r in reps], axis=0)
        rand = np.mean([r[1] for r in reps], axis=0)
        self.share_rows.append({"layer": layer, "space": space, **_share_summary(sys, rand, level)})


def plan_mechanisms(design: Design, decisions: pd.DataFrame, *, n_perm: int, seed: int,
                    halves: np.ndarray | None = None) -> list[MechanismPlan]:
    """One plan per group served worse (``decisions`` of :func:`~phonefair.analysis.served.served_worse`).
    ``halves``: the cross-fitting halves; permutations then stay within them (so the raw-space and cross-fitted
    statistics share one set of permutations)."""
    names = design.group_names
    plans = []
    flagged = set(decisions.loc[decisions["served_worse"], "group"].astype(str))
    for _, d in decisions[decisions["served_worse"]].iterrows():
        g = names.index(str(d["group"]))
        worse_than = [x.strip() for x in str(d["worse_than"]).split(",") if x.strip()]
        # compare with the well-served groups among them: a group that is itself served worse (say, shifted)
        # would lend its own error to the pooled comparison and make g look shifted too
        clean = [x for x in worse_than if x not in flagged] or worse_than
        comp = [names.index(x) for x in clean]
        layers = [x.strip() for x in str(d["layers"]).split(",") if x.strip()]
        idx = np.flatnonzero(np.isin(design.speaker_group, [g, *comp]))
        labels = design.speaker_group[idx] == g
        perms = label_permutations(labels, n_perm, rng.derive(seed, "mechanism", names[g]),
                                   None if halves is None else halves[idx])
        plans.append(MechanismPlan(group=g, comparison=comp, layers=layers, peak_layer=str(d["peak_layer"]),
                                   idx=idx, labels=labels, perms=perms))
    return plans


def _share_replicates(sub: SpaceStats, labels: np.ndarray, common: np.ndarray, *, n_boot: int, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Systematic and random excess (module docstring), observed (replicate 0) and ``n_boot`` speaker-bootstrap
    replicates (within each set)."""
    members = [np.flatnonzero(labels), np.flatnonzero(~labels)]
    strata = labels.astype(int)
    _, Wb = cluster_bootstrap_weights(np.arange(len(labels)), n_boot, seed=seed, strata=strata)
    onehot = np.stack([labels, ~labels]).astype(float)
    w = np.concatenate([onehot[None], Wb[:, None, :] * onehot[None]])  # replicate 0 = observed

    def stats(wb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = components(group_moments(sub, wb, members=members))
        sys = nanmean_last(c.D[:, 0, 1, :], common)
        tot = c.between + c.within  # per-dim
        rand = (nanmean_last(tot[:, 0, :], common) - nanmean_last(tot[:, 1, :], common)) * sub.dim
        return sys, rand

    sys_all, rand_all = [], []
    for a in range(0, len(w), 200):
        s_, r_ = stats(w[a:a + 200])
        sys_all.append(s_)
        rand_all.append(r_)
    return np.concatenate(sys_all), np.concatenate(rand_all)


def _share_summary(sys: np.ndarray, rand: np.ndarray, level: float) -> dict[str, float]:
    """Excesses and systematic share with percentile intervals from :func:`_share_replicates`' arrays."""
    sp, rp = np.maximum(sys, 0), np.maximum(rand, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(sp + rp > 0, sp / (sp + rp), np.nan)
    out: dict[str, float] = {}
    for name, v in (("systematic_excess", sys), ("random_excess", rand), ("share_systematic", share)):
        lo, hi = percentile(v[1:], level)
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(v[0]), float(lo), float(hi)
    return out


def _combined(obs: dict[tuple[str, str], float], null: dict[tuple[str, str], np.ndarray]
              ) -> tuple[float, tuple[str, str] | None, dict[tuple[str, str], float]]:
    """min-p combination over (layer, space) components sharing one set of permutations.

    The observed labelling is one of ``B + 1`` rows that are exchangeable under the null; every row's p-value in
    each component is its rank among all ``B + 1`` (itself counted, ties as exceedances), and the combined p-value
    is the share of rows whose smallest p-value is at most the observed one. Ranking a permutation among the
    permutations only (itself counted, the observed left out) makes the null rows' p-values one count too large
    where they exceed the observed value: 5.8 % false rejections at α = 0.05 with 199 permutations and six
    independent components (docs/typology.md §3); ranked among all rows, 5.0 %.
    """
    keys = [k for k in obs if np.isfinite(obs[k])]
    if not keys:
        return float("nan"), None, {}
    rows = np.vstack([np.array([obs[k] for k in keys])[None], np.stack([null[k] for k in keys], axis=1)])
    rows = np.where(np.isnan(rows), -np.inf, rows)  # [B + 1, m], row 0 observed
    n = len(rows)
    srt = np.sort(rows, axis=0)
    ge = n - np.stack([np.searchsorted(srt[:, j], rows[:, j] - 1e-12, side="left") for j in range(len(keys))],
                      axis=1)
    p = ge / n
    # ties in the smallest p-value (it is discrete) are broken by the sum of the others: still one statistic of the
    # row, so the test stays exact, but far fewer ties (6 components, 199 permutations: 2.7 % → ~5 % at α = 0.05)
    m, tie = p.min(1), p.sum(1)
    p_comb = float(np.sum((m < m[0] - 1e-15) | ((np.abs(m - m[0]) <= 1e-15) & (tie <= tie[0] + 1e-12))) / n)
    return p_comb, keys[int(np.argmin(p[0]))], dict(zip(keys, p[0].tolist()))


def mechanism_tables(plans: list[MechanismPlan], design: Design, *, alpha: float, fdr_alpha: float
                     ) -> dict[str, pd.DataFrame]:
    """``mechanism`` (one row per group served worse), ``mechanism_components`` (per layer and space),
    ``phone_shift`` (per phone at the peak layer, BH across phones) and ``shares``."""
    names = design.group_names
    rows, comp_rows, phone_rows, share_rows = [], [], [], []
    for plan in plans:
        g = names[plan.group]
        ps, ks, comp_s = _combined(plan.shift_obs, plan.shift_null)
        pv, kv, comp_v = _combined(plan.var_obs, plan.var_null)
        rows.append({"group": g, "compared_with": ", ".join(names[h] for h in plan.comparison),
                     "layers": ", ".join(plan.layers), "peak_layer": plan.peak_layer,
                     "p_systematic": ps, "systematic_evidence": None if ks is None else f"layer {ks[0]}, {ks[1]}",
                     "p_random": pv, "random_evidence": None if kv is None else f"layer {kv[0]}, {kv[1]}",
                     "n_perm": len(plan.perms)})
        for (layer, space), p in comp_s.items():
            comp_rows.append({"group": g, "layer": layer, "space": space, "mechanism": "systematic",
                              "statistic": plan.shift_obs[(layer, space)], "p_value": p})
        for (layer, space), p in comp_v.items():
            comp_rows.append({"group": g, "layer": layer, "space": space, "mechanism": "random",
                              "statistic": plan.var_obs[(layer, space)], "p_value": p})
        pr = pd.DataFrame(plan.phone_rows)
        if len(pr):
            for _, sub in pr.groupby("space"):
                q, _ = benjamini_hochberg(sub["p_value"].to_numpy(), fdr_alpha)
                pr.loc[sub.index, "q_value"] = q
            pr["significant"] = (pr["q_value"] <= fdr_alpha).fillna(False)
            phone_rows.append(pr.assign(group=g))
        share_rows.extend({"group": g, **r} for r in plan.share_rows)
    mech = pd.DataFrame(rows, columns=["group", "compared_with", "layers", "peak_layer", "p_systematic",
                                       "systematic_evidence", "p_random", "random_evidence", "n_perm"])
    # one Holm family over every mechanism claim of the run (groups served worse × {systematic, random}): with
    # two groups and two effects, a family per mechanism would let each group's absent mechanism through at α
    # (about 1 − 0.95² ≈ 10 % of runs with some wrong "why"); one family bounds that at α
    cols = ["p_systematic", "p_random"]
    adj = holm(mech[cols].to_numpy(dtype=float).reshape(-1)).reshape(len(mech), 2)
    for j, col in enumerate(cols):
        mech[col.replace("p_", "p_adj_")] = adj[:, j]
        mech[col.replace("p_", "") + "_significant"] = adj[:, j] <= alpha
    phone = pd.concat(phone_rows, ignore_index=True) if phone_rows else pd.DataFrame(
        columns=["group", "layer", "space", "phone", "shift_sq", "t", "p_value", "q_value", "significant"])
    return {"mechanism": mech, "mechanism_components": pd.DataFrame(comp_rows), "phone_shift": phone,
            "shares": pd.DataFrame(share_rows)}
