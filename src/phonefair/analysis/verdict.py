"""Joint view: per-group accuracy gap, what shift and spread account for, and the verdict per (layer, group).

Verdict rule (each label is backed by tests, not by a threshold on an estimate):

* *systematic* evidence: the phone-averaged shift test against the reference is significant after FDR control
  (``shift_tests`` row with ``phone == "*"``), **or** the probes' in-group benefit is significantly positive
  (behavioural evidence: a probe trained on the group beats the pooled probe on it);
* *random* evidence: the speaker-level variance test (group more variable than the reference) is significant after
  FDR control;
* both → ``"both"``; one → ``"systematic-dominant"`` / ``"random-dominant"``; none → ``"no detectable
  disadvantage"``. The evidence text gives the numbers, the accuracy gap with its CI, and flags a significant
  accuracy gap that neither mechanism explains.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from phonefair.stats import cluster_bootstrap_weights, percentile_ci


def accuracy_gaps(acc: pd.DataFrame, groups: list[str], reference: str | None, *, n_boot: int, seed: int,
                  level: float) -> pd.DataFrame:
    """Per group: ``gap = accuracy(reference) − accuracy(group)`` (mean over speakers), with a speaker-bootstrap CI.

    The reference accuracy is the reference group's, or by default the median of the group mean accuracies (the
    same median-group consensus as the shifts). ``acc`` has ``speaker, group, accuracy``.
    """
    a = acc.dropna(subset=["accuracy"])
    a = a[a["group"].isin(groups)]
    rows = []
    if a.empty or a["group"].nunique() < 2:
        return pd.DataFrame({"group": groups, "accuracy_gap": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                             "accuracy": np.nan})
    gi = a["group"].map({g: i for i, g in enumerate(groups)}).to_numpy()
    x = a["accuracy"].to_numpy(dtype=float)
    onehot = (gi[None, :] == np.arange(len(groups))[:, None]).astype(float)
    _, W = cluster_bootstrap_weights(a["speaker"].to_numpy(), n_boot, seed=seed, strata=gi)

    def gaps(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wg = w[:, None, :] * onehot[None]  # [b, G, n]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (wg * x).sum(2) / wg.sum(2)
        if reference is None:
            ref = np.nanmedian(means, axis=1, keepdims=True)
        else:
            ref = means[:, [groups.index(reference)]]
        return ref - means, means

    obs, means = gaps(np.ones((1, len(x))))
    reps, _ = gaps(W)
    lo, hi = percentile_ci(reps, level)
    for i, g in enumerate(groups):
        rows.append({"group": g, "accuracy_gap": obs[0, i], "ci_low": lo[i], "ci_high": hi[i],
                     "accuracy": means[0, i]})
    return pd.DataFrame(rows)


def gap_attribution(spk: pd.DataFrame, groups: list[str], reference: str | None) -> pd.DataFrame:
    """OLS of per-speaker accuracy on normalised variance and group-shift exposure; per group, the part of its
    accuracy gap each accounts for: ``−β_var (v̄_g − v̄_ref)`` and ``−β_shift (ē_g − ē_ref)``.

    ``spk`` has ``speaker, group, accuracy, variance, exposure`` (exposure: the speaker's token-weighted mean of
    its group's per-phone squared shift). The reference values are the reference group's means or the median of
    the group means. The rest of the gap is ``residual``.
    """
    d = spk.dropna(subset=["accuracy", "variance", "exposure"])
    d = d[d["group"].isin(groups)]
    cols = ["group", "accuracy_gap", "explained_by_variance", "explained_by_shift", "residual", "r2",
            "beta_variance", "beta_shift", "n_speakers"]
    if len(d) < 4 or d["group"].nunique() < 2:
        return pd.DataFrame({c: ([*groups] if c == "group" else np.nan) for c in cols})
    X = np.column_stack([np.ones(len(d)), d["variance"], d["exposure"]])
    y = d["accuracy"].to_numpy(dtype=float)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    r2 = 1 - resid.var() / y.var() if y.var() > 0 else np.nan
    gm = d.groupby("group")[["accuracy", "variance", "exposure"]].mean().reindex(groups)
    ref = gm.median() if reference is None else gm.loc[reference]
    rows = []
    for g in groups:
        gap = ref["accuracy"] - gm.loc[g, "accuracy"]
        ev = -beta[1] * (gm.loc[g, "variance"] - ref["variance"])
        es = -beta[2] * (gm.loc[g, "exposure"] - ref["exposure"])
        rows.append({"group": g, "accuracy_gap": gap, "explained_by_variance": ev, "explained_by_shift": es,
                     "residual": gap - ev - es, "r2": r2, "beta_variance": beta[1], "beta_shift": beta[2],
                     "n_speakers": int((d["group"] == g).sum())})
    return pd.DataFrame(rows, columns=cols)


def decide(*, sys_test: bool, igb_sig: bool, rnd_test: bool) -> str:
    """The verdict label from the three pieces of test evidence."""
    systematic = sys_test or igb_sig
    if systematic and rnd_test:
        return "both"
    if systematic:
        return "systematic-dominant"
    if rnd_test:
        return "random-dominant"
    return "no detectable disadvantage"


def evidence_text(*, shift_sq: float, q_shift: float, ratio: float, q_var: float, igb: float, igb_q: float,
                  gap: float, gap_lo: float, gap_hi: float, alpha: float, is_reference: bool) -> str:
    """Short human-readable justification of a verdict cell."""
    if is_reference:
        return f"reference group; accuracy gap defined as 0; variance ratio {ratio:.2f}"
    parts = [f"shift²={shift_sq:.3g} (q={q_shift:.3g})", f"variance ratio={ratio:.2f} (q={q_var:.3g})"]
    if not np.isnan(igb):
        parts.append(f"in-group benefit={igb:+.3f} (q={igb_q:.3g})")
    if not np.isnan(gap):
        parts.append(f"accuracy gap={gap:+.3f} [{gap_lo:+.3f}, {gap_hi:+.3f}]")
        if gap_lo > 0 and q_shift > alpha and q_var > alpha and not (igb_q <= alpha and igb > 0):
            parts.append("gap not explained by a detected shift or spread")
    return "; ".join(parts)


__all__ = ["accuracy_gaps", "decide", "evidence_text", "gap_attribution"]
