"""Is the alignment equally good for every speaker group?

An aligner that is worse on some groups (accented speech, children, a noisy recording channel) makes their phone
tokens noisier *before* any encoder sees them, and that would show up as "the encoder serves this group worse".
:func:`alignment_quality_by_group` puts the aligner's own evidence next to the audit.

Speaker-level metrics (every speaker counts once, however many utterances it has):

* ``confidence``: the mean confidence of the speaker's aligned speech phones (the backend's confidence, see
  ``docs/align.md``: nats per frame for pocketsphinx, a posterior probability for CTC).
* ``confidence_phone_adjusted``: the same after subtracting each phone label's corpus-wide mean confidence from
  its tokens, so groups that happen to say different phones (different sentences) are compared like for like.
* ``failure_rate``: the share of the speaker's utterances that could not be aligned.

For each metric and group: the mean over the group's speakers with a percentile CI from a speaker bootstrap
within the group. The test of "groups differ" is a permutation test on speakers: the statistic is the
between-group sum of squares ``Σ_g n_g (m_g − m)²`` of the speaker values (``n_g`` speakers of group ``g`` with mean
``m_g``; ``m`` the mean of all speakers), its null distribution comes from shuffling group labels among speakers,
``p = (1 + #{null ≥ observed}) / (1 + n_perm)``. The three metrics' p-values are adjusted with Benjamini–Hochberg;
a metric with ``q ≤ alpha`` gives a warning.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from phonefair.errors import DataError
from phonefair.rng import derive
from phonefair.stats import benjamini_hochberg, percentile_ci, permutation_pvalue

__all__ = ["METRICS", "alignment_quality_by_group", "between_group_permutation_test", "speaker_quality"]

METRICS: tuple[str, ...] = ("confidence", "confidence_phone_adjusted", "failure_rate")


def speaker_quality(quality: pd.DataFrame, utterances: pd.DataFrame) -> pd.DataFrame:
    """One row per speaker: ``speaker, n_utterances, n_failed, n_phones`` and the :data:`METRICS`.

    ``quality``: the phone rows of ``alignment_quality`` (``speaker, phone, confidence``; rows with <NA>
    confidence are ignored). ``utterances``: the utterance rows of ``alignment_utterances`` (``speaker, status``
    with ``"aligned"`` or ``"failed"``).
    """
    for name, df, cols in (("quality", quality, ("speaker", "phone", "confidence")),
                           ("utterances", utterances, ("speaker", "status"))):
        if missing := [c for c in cols if c not in df.columns]:
            raise DataError(f"alignment {name} table lacks column(s) {missing}; has {list(df.columns)}")
    q = quality[quality["confidence"].notna()].copy()
    q["speaker"] = q["speaker"].astype(str)
    q["confidence"] = q["confidence"].astype(float)
    q["adjusted"] = q["confidence"] - q.groupby("phone", dropna=False)["confidence"].transform("mean")
    per_spk = q.groupby("speaker").agg(n_phones=("confidence", "size"), confidence=("confidence", "mean"),
                                       confidence_phone_adjusted=("adjusted", "mean"))
    u = utterances.assign(speaker=utterances["speaker"].astype(str),
                          failed=(utterances["status"] != "aligned").astype(float))
    per_utt = u.groupby("speaker").agg(n_utterances=("failed", "size"), n_failed=("failed", "sum"),
                                       failure_rate=("failed", "mean"))
    out = per_utt.join(per_spk, how="outer").reset_index().rename(columns={"index": "speaker"})
    out["n_utterances"] = out["n_utterances"].fillna(0).astype(int)
    out["n_failed"] = out["n_failed"].fillna(0).astype(int)
    out["n_phones"] = out["n_phones"].fillna(0).astype(int)
    return out[["speaker", "n_utterances", "n_failed", "n_phones", *METRICS]]


def between_group_permutation_test(values: np.ndarray, labels: np.ndarray, *, n_perm: int, seed: int
                                   ) -> tuple[float, float]:
    """``(statistic, p)``: between-group sum of squares of ``values`` (one per speaker) and its permutation p-value
    under shuffles of ``labels`` among speakers. NaN values are left out. ``(nan, nan)`` with fewer than two
    groups of speakers."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    v = v[ok]
    codes, uniq = pd.factorize(pd.Series(np.asarray(labels)[ok]))
    n_groups = len(uniq)
    if n_groups < 2 or len(v) < 3:
        return float("nan"), float("nan")

    def ssb(lab: np.ndarray) -> np.ndarray:
        # lab: [P, n] group codes -> between-group sum of squares per row
        p = lab.shape[0]
        flat = (lab + n_groups * np.arange(p)[:, None]).ravel()
        sums = np.bincount(flat, weights=np.tile(v, p), minlength=p * n_groups).reshape(p, n_groups)
        counts = np.bincount(flat, minlength=p * n_groups).reshape(p, n_groups)
        grand = v.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.maximum(counts, 1), grand)
        return np.sum(counts * (means - grand) ** 2, axis=1)

    observed = float(ssb(codes[None, :])[0])
    rng = derive(seed, "alignment-quality-permutation")
    perms = np.argsort(rng.random((n_perm, len(v))), axis=1)
    null = ssb(codes[perms])
    # a relative tolerance so that permutations equal to the observed labelling count as ">=" despite rounding
    p = float(permutation_pvalue(observed - 1e-12 * max(1.0, abs(observed)), null))
    return observed, p


def _group_ci(values: np.ndarray, *, n_boot: int, seed: int, key: str, level: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = derive(seed, "alignment-quality-bootstrap", key)
    reps = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = percentile_ci(reps, level=level)
    return float(lo), float(hi)


def alignment_quality_by_group(quality: pd.DataFrame, utterances: pd.DataFrame, groups: pd.Series, *,
                               n_perm: int = 999, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                               level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Alignment quality per speaker group and a test of whether groups differ.

    ``quality`` / ``utterances``: the ``alignment_quality`` and ``alignment_utterances`` tables of
    :func:`phonefair.align.align_corpus`; ``groups``: speaker -> group label (``phonefair.groups.assign_groups``'s
    ``.groups``; speakers without a group are left out). Returns:

    * ``by_group``: ``metric, group, estimate, ci_low, ci_high, n_speakers, n_utterances, n_phones`` (estimate =
      mean over the group's speakers; CI from a within-group speaker bootstrap, percentile, ``level``);
    * ``tests``: ``metric, statistic, p_value, q_value, significant, n_speakers, n_groups, n_perm, seed``;
    * warnings: one sentence per metric whose groups differ (``q_value <= alpha``), naming the best and worst
      group, for the report's data section.
    """
    if n_perm < 1 or n_boot < 1:
        raise DataError(f"n_perm and n_boot must be >= 1, got {n_perm}, {n_boot}")
    spk = speaker_quality(quality, utterances)
    g = groups.copy()
    g.index = g.index.astype(str)
    spk["group"] = spk["speaker"].map(g)
    spk = spk[spk["group"].notna()]
    if spk.empty:
        raise DataError("alignment quality: no aligned speaker has a group; check that the group Series is indexed "
                        "by the speaker ids of the alignment tables")
    rows = []
    tests = []
    for metric in METRICS:
        for grp, sub in spk.groupby("group", sort=True):
            vals = sub[metric].to_numpy(dtype=float)
            lo, hi = _group_ci(vals, n_boot=n_boot, seed=seed, key=f"{metric}/{grp}", level=level)
            rows.append({"metric": metric, "group": str(grp), "estimate": float(np.nanmean(vals))
                         if np.isfinite(vals).any() else float("nan"), "ci_low": lo, "ci_high": hi,
                         "n_speakers": int(np.isfinite(vals).sum()), "n_utterances": int(sub["n_utterances"].sum()),
                         "n_phones": int(sub["n_phones"].sum())})
        vals = spk[metric].to_numpy(dtype=float)
        stat, p = between_group_permutation_test(vals, spk["group"].to_numpy(), n_perm=n_perm,
                                                 seed=int(derive(seed, metric).integers(2**31)))
        tests.append({"metric": metric, "statistic": stat, "p_value": p, "n_speakers": int(np.isfinite(vals).sum()),
                      "n_groups": int(spk.loc[np.isfinite(vals), "group"].nunique()), "n_perm": n_perm,
                      "seed": seed})
    by_group = pd.DataFrame(rows)
    test_df = pd.DataFrame(tests)
    q, rejected = benjamini_hochberg(test_df["p_value"].to_numpy(), alpha=alpha)
    test_df.insert(3, "q_value", q)
    test_df.insert(4, "significant", rejected)
    warnings = [_warning(row, by_group) for row in test_df.itertuples() if row.significant]
    method = ("speaker-level permutation test of the between-group sum of squares (group labels shuffled among "
              "speakers), Benjamini-Hochberg over the metrics; group CIs from a within-group speaker bootstrap")
    for df in (by_group, test_df):
        df.attrs["provenance"] = {"method": method, "n_perm": n_perm, "n_boot": n_boot, "seed": seed,
                                  "alpha": alpha, "level": level, "metrics": list(METRICS)}
    return by_group, test_df, warnings


_NICE = {"confidence": "alignment confidence", "confidence_phone_adjusted": "phone-adjusted alignment confidence",
         "failure_rate": "alignment failure rate"}


def _warning(test: object, by_group: pd.DataFrame) -> str:
    metric = str(test.metric)  # type: ignore[attr-defined]
    est = by_group[(by_group["metric"] == metric) & by_group["estimate"].notna()]
    # "worse" is a lower confidence or a higher failure rate
    ordered = est.sort_values("estimate", ascending=metric != "failure_rate")
    worst, best = ordered.iloc[0], ordered.iloc[-1]

    def fmt(r: pd.Series) -> str:
        return f"{r['group']} {r['estimate']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"

    return (f"The {_NICE[metric]} differs between speaker groups (permutation p = {test.p_value:.3g}, "  # type: ignore[attr-defined]
            f"q = {test.q_value:.3g}; worst {fmt(worst)}, best {fmt(best)}). Phone-level differences between "  # type: ignore[attr-defined]
            f"these groups may partly come from the forced alignment rather than from the encoder.")
