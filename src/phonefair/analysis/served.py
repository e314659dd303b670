"""Is a group served worse? Accuracy gaps with intervals, and attribution among groups with family-wise control.

Input: every speaker's cross-fitted *standardised* accuracy per layer (``speaker_accuracy`` of the probes: the
probe trained on everyone else's speakers, phone frequencies standardised to the corpus's).

**The quantity.** A group's accuracy ``A_g`` is the mean over its speakers. Its **gap** is
``gap_g = A_ref − A_g`` where ``A_ref`` is the stated reference group's accuracy or, without a reference, the mean of
the *other* groups' accuracies (the leave-one-out consensus: unbiased for a fixed group, and an affected group does
not pull its own reference down). Positive = served worse. Intervals are Welch t intervals over speakers.

**The decision.** A group is *served worse* when it is significantly less accurate than at least one other group
(reference mode: than the reference; a reference that is itself significantly worse than another group is
flagged too, with a warning). The family of hypotheses is every pair of groups (reference mode: every
group-vs-reference pair) at every layer; each is tested with a Welch t statistic, and the family-wise error rate is
controlled at ``alpha`` by the step-down max-T procedure (Westfall & Young 1993) over speaker permutations: group
labels are shuffled between speakers within each cross-fitting fold, so the null distribution keeps the folds'
group composition and the correlation across layers and pairs. Under the complete null (no group differs at any
layer) the probability of any "served worse" verdict is ``alpha``; a group that is truly not worse than any other
is named only through a family-wise error. "Where": the layers at which a pair is significant.

**Minimum detectable effect** (reported when a group is not found served worse): the gap that the test would detect
with 80 % power at that layer, ``(c_alpha + z_0.8) × SE(gap)``, with ``c_alpha`` the permutation critical value of
the family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from phonefair import rng
from phonefair.audit.design import Design
from phonefair.layers import layer_order

__all__ = ["ServedWorse", "served_worse", "pair_family", "phone_gaps", "welch_t_matrix"]

_CHUNK_FLOATS = 20_000_000


@dataclass
class ServedWorse:
    """Result of :func:`served_worse`: the ``gaps`` and ``pairwise`` tables and the per-group decisions."""

    gaps: pd.DataFrame  # layer, group, accuracy, ci, gap, gap_ci, se, mde, significant_worse
    pairwise: pd.DataFrame  # layer, group, other, difference (A_other - A_group), ci, t, p_adjusted, significant
    decisions: pd.DataFrame  # group, served_worse, worse_than, better_than, layers, peak_layer, gap...
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def pair_family(design: Design) -> list[tuple[int, int]]:
    """The tested pairs ``(a, b)`` with ``a < b`` (reference mode: every group with the reference)."""
    G = design.n_groups
    if design.reference is None:
        return [(a, b) for a in range(G) for b in range(a + 1, G)]
    r = design.group_names.index(design.reference)
    return [tuple(sorted((g, r))) for g in range(G) if g != r]  # type: ignore[misc]


def _moments(acc: np.ndarray, onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group means, variances (ddof 1) and sizes for label one-hots ``[b, G, S]`` and accuracies ``[S, L]``."""
    n = onehot.sum(2)  # [b, G]
    s1 = onehot @ acc  # [b, G, L]
    s2 = onehot @ (acc * acc)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n[:, :, None]
        var = (s2 - n[:, :, None] * mean**2) / (n[:, :, None] - 1)
    return mean, np.maximum(var, 0.0), n


def welch_t_matrix(mean: np.ndarray, var: np.ndarray, n: np.ndarray, pairs: list[tuple[int, int]]
                   ) -> np.ndarray:
    """Welch t of ``mean_b − mean_a`` for every pair and layer: ``[b, n_pairs, L]`` (positive: ``a`` is worse)."""
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(var[:, a] / n[:, a, None] + var[:, b] / n[:, b, None])
        t = (mean[:, b] - mean[:, a]) / se
    # two speakers with identical accuracies: no evidence either way rather than an infinite statistic
    return np.where(np.isfinite(t), t, 0.0)


def served_worse(speaker_accuracy: pd.DataFrame, design: Design, *, alpha: float = 0.05, level: float = 0.95,
                 n_perm: int = 9999, seed: int = 0, metric: str = "standardized_accuracy") -> ServedWorse:
    """Gaps, pairwise tests and served-worse decisions (module docstring) from per-speaker accuracies."""
    layers = layer_order(speaker_accuracy["layer"].astype(str).unique())
    wide = speaker_accuracy.assign(layer=speaker_accuracy["layer"].astype(str)).pivot_table(
        index="speaker", columns="layer", values=metric, aggfunc="first")
    wide = wide.reindex(index=design.speakers, columns=layers)
    acc = wide.to_numpy(dtype=float)  # [S, L]
    if np.isnan(acc).any():
        # a speaker with no evaluable token at some layer: its mean accuracy over layers stands in (documented);
        # a speaker with none at all is dropped from the arithmetic by giving it the group mean
        fill = np.nanmean(acc, axis=1, keepdims=True)
        acc = np.where(np.isnan(acc), fill, acc)
        col = np.nanmean(acc, axis=0, keepdims=True)
        acc = np.where(np.isnan(acc), col, acc)
    G, S, L = design.n_groups, design.n_speakers, len(layers)
    labels = design.speaker_group
    pairs = pair_family(design)
    onehot0 = (labels[None, :] == np.arange(G)[:, None]).astype(float)[None]
    mean0, var0, n0 = _moments(acc, onehot0)
    t_obs = welch_t_matrix(mean0, var0, n0, pairs)[0]  # [n_pairs, L]
    flat_obs = np.abs(t_obs).ravel()

    # ---- permutation null (labels shuffled within folds of the first repeat), step-down max-T
    gen = rng.derive(seed, "served-worse")
    strata = design.folds[0]
    n_exceed = _stepdown_counts(acc, labels, strata, G, pairs, flat_obs, n_perm, gen)
    p_adj = _stepdown_adjust(flat_obs, n_exceed, n_perm).reshape(len(pairs), L)
    crit = _critical_value(acc, labels, strata, G, pairs, alpha, min(n_perm, 1999), rng.derive(seed, "crit"))

    # ---- tables
    names = design.group_names
    tq = lambda df: float(sps.t.ppf(0.5 + level / 2, df)) if np.isfinite(df) and df > 0 else np.nan  # noqa: E731
    pw_rows = []
    for pi, (a, b) in enumerate(pairs):
        for li, layer in enumerate(layers):
            va, vb, na, nb = var0[0, a, li], var0[0, b, li], n0[0, a], n0[0, b]
            se = np.sqrt(va / na + vb / nb)
            df = _welch_df(np.array([va, vb]), np.array([na, nb]), np.array([1.0, 1.0]))
            diff = mean0[0, b, li] - mean0[0, a, li]
            q = tq(df)
            for g, h, sign in ((a, b, 1.0), (b, a, -1.0)):
                d = sign * diff  # A_h - A_g: positive when g is the less accurate
                pw_rows.append({"layer": layer, "group": names[g], "other": names[h], "difference": d,
                                "ci_low": d - q * se, "ci_high": d + q * se, "t": sign * t_obs[pi, li],
                                "p_adjusted": p_adj[pi, li],
                                "significant": bool(p_adj[pi, li] <= alpha and sign * t_obs[pi, li] > 0)})
    pairwise = pd.DataFrame(pw_rows)

    ref_idx = None if design.reference is None else names.index(design.reference)
    gap_rows = []
    for g in range(G):
        coefs = np.zeros(G)
        if ref_idx is None:
            coefs[[h for h in range(G) if h != g]] = 1.0 / (G - 1)
        else:
            coefs[ref_idx] = 1.0
        coefs[g] -= 1.0  # gap = Σ_h c_h A_h − A_g
        for li, layer in enumerate(layers):
            m, v, n = mean0[0, :, li], var0[0, :, li], n0[0]
            gap = float(coefs @ m) if g != ref_idx else 0.0
            se = float(np.sqrt(np.sum(coefs**2 * v / n))) if g != ref_idx else np.nan
            df = _welch_df(v, n, coefs) if g != ref_idx else np.nan
            est, lo_a, hi_a = _t_ci(acc[labels == g, li], level)
            lo_a, hi_a = max(lo_a, 0.0), min(hi_a, 1.0)  # an accuracy interval stays within [0, 1]
            gap_rows.append({"layer": layer, "group": names[g], "accuracy": est, "accuracy_ci_low": lo_a,
                             "accuracy_ci_high": hi_a, "gap": gap, "gap_ci_low": gap - tq(df) * se,
                             "gap_ci_high": gap + tq(df) * se, "gap_se": se,
                             "mde": (crit + sps.norm.ppf(0.8)) * se if np.isfinite(se) else np.nan,
                             "n_speakers": int(n[g])})
    gaps = pd.DataFrame(gap_rows)
    decisions, warnings = _decide(pairwise, gaps, design, layers)
    info = {"alpha": alpha, "n_perm": n_perm, "reference": design.reference, "family": [f"{names[a]} vs {names[b]}" for a, b in pairs],
            "family_size": len(pairs) * L, "critical_t": crit, "metric": metric, "permutation":
            "group labels shuffled between speakers within cross-fitting folds (repeat 0)",
            "min_attainable_p": 1.0 / (n_perm + 1)}
    return ServedWorse(gaps=gaps, pairwise=pairwise, decisions=decisions, warnings=warnings, info=info)


def _t_ci(x: np.ndarray, level: float) -> tuple[float, float, float]:
    from phonefair.stats import t_interval

    return t_interval(x, level)


def _welch_df(v: np.ndarray, n: np.ndarray, c: np.ndarray) -> float:
    terms = c**2 * v / n
    with np.errstate(invalid="ignore", divide="ignore"):
        df = terms.sum() ** 2 / np.sum(np.where(terms > 0, terms**2 / np.maximum(n - 1, 1), 0.0))
    return float(df) if np.isfinite(df) else float("nan")


def _permuted_labels(labels: np.ndarray, strata: np.ndarray, b: int, gen: np.random.Generator) -> np.ndarray:
    """``[b, S]`` label vectors, each a permutation of ``labels`` within every stratum."""
    out = np.empty((b, len(labels)), dtype=labels.dtype)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        keys = gen.random((b, len(idx)))
        out[:, idx] = labels[idx][np.argsort(keys, axis=1)]
    return out


def _null_t(acc: np.ndarray, labels: np.ndarray, strata: np.ndarray, G: int, pairs: list[tuple[int, int]],
            b: int, gen: np.random.Generator) -> np.ndarray:
    """``[b, n_pairs * L]`` |t| under the permutation null."""
    lab = _permuted_labels(labels, strata, b, gen)
    onehot = (lab[:, None, :] == np.arange(G)[None, :, None]).astype(float)
    mean, var, n = _moments(acc, onehot)
    return np.abs(welch_t_matrix(mean, var, n, pairs)).reshape(b, -1)


def _chunk(S: int, G: int, L: int) -> int:
    return max(1, min(2000, _CHUNK_FLOATS // max(1, S * G + G * L * 4)))


def _stepdown_counts(acc: np.ndarray, labels: np.ndarray, strata: np.ndarray, G: int,
                     pairs: list[tuple[int, int]], obs: np.ndarray, n_perm: int, gen: np.random.Generator
                     ) -> np.ndarray:
    """For each hypothesis (in descending order of |t|), how many permutations have the max over it and every
    less significant hypothesis at least as large (Westfall–Young step-down)."""
    order = np.argsort(-obs, kind="stable")
    counts = np.zeros(len(obs), dtype=np.int64)
    done = 0
    S, L = acc.shape
    while done < n_perm:
        b = min(_chunk(S, G, L), n_perm - done)
        null = _null_t(acc, labels, strata, G, pairs, b, gen)[:, order]  # [b, M] in observed order
        succ = np.maximum.accumulate(null[:, ::-1], axis=1)[:, ::-1]  # max over hypotheses j.. M
        counts += (succ >= obs[order][None, :] - 1e-12).sum(0)
        done += b
    out = np.empty_like(counts)
    out[order] = counts
    return out


def _stepdown_adjust(obs: np.ndarray, counts: np.ndarray, n_perm: int) -> np.ndarray:
    """Step-down adjusted p-values, made monotone in the observed order."""
    order = np.argsort(-obs, kind="stable")
    p = (1 + counts[order]) / (1 + n_perm)
    p = np.maximum.accumulate(p)
    out = np.empty_like(p)
    out[order] = p
    return np.minimum(out, 1.0)


def _critical_value(acc: np.ndarray, labels: np.ndarray, strata: np.ndarray, G: int,
                    pairs: list[tuple[int, int]], alpha: float, n_perm: int, gen: np.random.Generator) -> float:
    """The 1 − alpha quantile of the family's max |t| under the permutation null."""
    S, L = acc.shape
    maxes = []
    done = 0
    while done < n_perm:
        b = min(_chunk(S, G, L), n_perm - done)
        maxes.append(_null_t(acc, labels, strata, G, pairs, b, gen).max(1))
        done += b
    return float(np.quantile(np.concatenate(maxes), 1 - alpha))


def _decide(pairwise: pd.DataFrame, gaps: pd.DataFrame, design: Design, layers: list[str]
            ) -> tuple[pd.DataFrame, list[str]]:
    names = design.group_names
    rows, warnings = [], []
    sig = pairwise[pairwise["significant"]]
    for g in names:
        mine = sig[sig["group"] == g]
        worse_than = sorted(mine["other"].unique().tolist())
        better_than = sorted(sig[sig["other"] == g]["group"].unique().tolist())
        sig_layers = layer_order(mine["layer"].unique())
        gg = gaps[gaps["group"] == g].set_index("layer")
        if sig_layers:
            peak = max(sig_layers, key=lambda layer: float(gg.loc[layer, "gap"])
                       if np.isfinite(gg.loc[layer, "gap"]) else -np.inf)
        else:
            peak = None
        rows.append({"group": g, "served_worse": bool(worse_than), "worse_than": ", ".join(worse_than),
                     "better_than": ", ".join(better_than), "layers": ", ".join(sig_layers), "peak_layer": peak,
                     "is_reference": g == design.reference})
    dec = pd.DataFrame(rows)
    if design.reference is not None:
        r = dec[dec["group"] == design.reference].iloc[0]
        if r["served_worse"]:
            warnings.append(f"the reference group {design.reference!r} is itself served worse than "
                            f"{r['worse_than']}: gaps measured against it understate the other groups' position; "
                            "consider another reference or none (the other groups as consensus)")
    return dec, warnings


def phone_gaps(speaker_phone_counts: pd.DataFrame, design: Design, decisions: pd.DataFrame, *, level: float = 0.95,
               fdr_alpha: float = 0.05) -> pd.DataFrame:
    """Where, phone by phone: for each group served worse, at its peak layer, the accuracy gap per phone between its
    speakers and the speakers of the groups it is served worse than (Welch t over speakers, Benjamini–Hochberg
    across the group's phones). A descriptive map of where the deficit sits, not a second verdict."""
    from phonefair.stats import benjamini_hochberg

    cols = ["group", "layer", "phone", "accuracy", "accuracy_others", "gap", "ci_low", "ci_high", "p_value",
            "q_value", "significant", "n_speakers", "n_speakers_others"]
    rows = []
    spc = speaker_phone_counts.assign(layer=speaker_phone_counts["layer"].astype(str))
    grp = dict(zip(design.speakers, np.array(design.group_names, dtype=object)[design.speaker_group]))
    for _, d in decisions[decisions["served_worse"]].iterrows():
        g, layer = str(d["group"]), str(d["peak_layer"])
        others = {x.strip() for x in str(d["worse_than"]).split(",") if x.strip()}
        s = spc[spc["layer"] == layer]
        s = s.assign(group=s["speaker"].map(grp), acc=s["correct"] / s["total"])
        part = []
        for phone, sp in s.groupby("phone", sort=True):
            a = sp.loc[sp["group"] == g, "acc"].to_numpy(float)
            b = sp.loc[sp["group"].isin(others), "acc"].to_numpy(float)
            if len(a) < 2 or len(b) < 2:
                continue
            va, vb = a.var(ddof=1), b.var(ddof=1)
            se = np.sqrt(va / len(a) + vb / len(b))
            gap = float(b.mean() - a.mean())
            df = _welch_df(np.array([va, vb]), np.array([len(a), len(b)], float), np.array([1.0, 1.0]))
            q = float(sps.t.ppf(0.5 + level / 2, df)) if np.isfinite(df) and df > 0 else np.nan
            p = float(2 * sps.t.sf(abs(gap) / se, df)) if se > 0 and np.isfinite(df) else (1.0 if gap == 0 else 0.0)
            part.append({"group": g, "layer": layer, "phone": phone, "accuracy": float(a.mean()),
                         "accuracy_others": float(b.mean()), "gap": gap, "ci_low": gap - q * se,
                         "ci_high": gap + q * se, "p_value": p, "n_speakers": len(a), "n_speakers_others": len(b)})
        if part:
            qv, _ = benjamini_hochberg([r["p_value"] for r in part], fdr_alpha)
            for r, qi in zip(part, qv, strict=True):
                r["q_value"] = float(qi)
                r["significant"] = bool(qi <= fdr_alpha and r["gap"] > 0)
            rows += part
    return pd.DataFrame(rows, columns=cols)
