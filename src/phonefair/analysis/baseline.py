"""Does the encoder make a group's gap, or inherit it from the signal? Amplification against an acoustic baseline.

Inputs are two per-speaker accuracy tables (``layer, speaker, group, accuracy``; e.g. the probes' ``speaker_accuracy``)
for the same test speakers: the encoder's (many layers) and the baseline's (one or several feature sets). Definitions
(docs/baselines.md has them with a worked example):

* ``A_g`` (one table, one layer) = mean over group ``g``'s speakers of per-speaker accuracy;
* ``gap_g = A_ref − A_g``: ``A_ref`` is the stated reference group's ``A``, or, without one, the mean of the *other*
  groups' ``A`` (leave-one-out consensus), so a positive gap is a disadvantage;
* ``amplification_g(layer, feature set) = gap_g(encoder, layer) − gap_g(baseline, feature set)``.

Every quantity is a linear contrast ``Σ_h c_h A_h`` of group means of a per-speaker value (the accuracy, or for the
amplification the *paired* per-speaker difference ``acc_encoder(s) − acc_baseline(s)``), so speakers are the unit of
resampling and the pairing is exact. Two interval methods:

* ``"welch"`` (default): ``est ± t_{ν, 1−α/2} · sqrt(Σ_h c_h² s_h² / n_h)`` with Welch–Satterthwaite degrees of
  freedom ``ν = (Σ v_h)² / Σ v_h² / (n_h − 1)``, ``v_h = c_h² s_h² / n_h`` (``s_h²``: sample variance, ddof 1). Near
  nominal coverage from 3-4 speakers per group (bench/baseline_coverage.py);
* ``"percentile"``: speakers resampled within their groups (one resample shared by both tables, so the two gaps are
  evaluated on the same speakers), percentile interval. Under-covers with few speakers per group (the bootstrap
  variance is too small by ``(n − 1) / n`` and the percentile interval ignores the t correction).

Readings per (layer, feature set, group), from the signs of three intervals: the baseline gap ``B``, the encoder gap
``E`` and the amplification ``M`` (``+``: interval above 0, ``−``: below, ``0``: contains 0):

=========  ===========================================  ==============================================================
reading    rule                                         meaning
=========  ===========================================  ==============================================================
amplified  ``B = +``, ``M = +``                         a disadvantage already in the signal, made larger
inherited  ``B = +``, ``M = 0``                         a disadvantage in the signal, passed on (no detectable change)
reduced    ``B = +``, ``M = −``                         a disadvantage in the signal, made smaller (or reversed)
created    ``B ≠ +``, ``E = +``, ``M = +``              no detectable disadvantage in the signal; the encoder has one
unclear    ``B ≠ +``, ``E = +``, ``M ≠ +``              the encoder has a gap; whether the signal has it is unresolved
absent     ``B ≠ +``, ``E ≠ +``                         no detectable disadvantage in either
=========  ===========================================  ==============================================================

``insufficient``: an interval could not be computed (a group with fewer than 2 speakers). The intervals are per cell,
not adjusted for the number of layers × groups; the reading at the encoder's best layer (chosen by accuracy, not by
gap) is the headline one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from phonefair.errors import ConfigError, DataError
from phonefair.io import ResultTables
from phonefair.layers import layer_order
from phonefair.rng import derive_seed
from phonefair.stats import cluster_bootstrap_weights

__all__ = ["CI_METHODS", "READINGS", "BaselineComparison", "amplification", "reading"]

CI_METHODS = ("welch", "percentile")
READINGS = ("amplified", "inherited", "reduced", "created", "unclear", "absent", "insufficient")
_COLUMNS = ("layer", "speaker", "group", "accuracy")


@dataclass
class BaselineComparison(ResultTables):
    """Output of :func:`amplification`: tables ``gaps`` (per source, layer, group), ``amplification`` (per encoder
    layer, baseline feature set, group, with the reading) and ``problems`` (speakers left out), plus provenance.

    ``best_layer``: the encoder layer the headline uses; ``baseline_layer``: the baseline feature set it is compared
    with (both the most accurate unless given)."""

    best_layer: str = ""
    baseline_layer: str = ""

    def headline(self) -> pd.DataFrame:
        """The ``amplification`` rows at the best encoder layer against the headline baseline feature set."""
        a = self.table_map["amplification"]
        return a[(a["layer"] == self.best_layer) & (a["baseline_layer"] == self.baseline_layer)].reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        """Per group at the headline cell: the two gaps and the amplification with CIs, and the reading."""
        def f(v: Any) -> float | None:
            return float(v) if pd.notna(v) else None

        groups = {str(r["group"]): {
            "reading": str(r["reading"]),
            "encoder_gap": {"estimate": f(r["encoder_gap"]), "ci_low": f(r["encoder_gap_ci_low"]),
                            "ci_high": f(r["encoder_gap_ci_high"])},
            "baseline_gap": {"estimate": f(r["baseline_gap"]), "ci_low": f(r["baseline_gap_ci_low"]),
                             "ci_high": f(r["baseline_gap_ci_high"])},
            "amplification": {"estimate": f(r["amplification"]), "ci_low": f(r["ci_low"]),
                              "ci_high": f(r["ci_high"])}} for _, r in self.headline().iterrows()}
        s = self.provenance.get("settings", {})
        return {"best_layer": self.best_layer, "baseline_layer": self.baseline_layer, "groups": groups,
                "reference": s.get("reference"), "method": s.get("method"), "level": s.get("level"),
                "n_speakers": self.provenance.get("n_speakers"), "n_problems": len(self.table_map["problems"])}


def amplification(encoder: pd.DataFrame, baseline: pd.DataFrame, *, reference: str | None = None,
                  method: str = "welch", level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                  best_layer: str | None = None, baseline_layer: str | None = None) -> BaselineComparison:
    """Per group, layer and baseline feature set: the encoder's gap, the baseline's gap and their difference, with
    paired speaker-level CIs and a reading (module docstring; docs/baselines.md).

    ``encoder``, ``baseline``: per-speaker accuracy tables with ``layer, speaker, group, accuracy`` (extra columns
    ignored). Only speakers with a finite accuracy in every layer of both tables are used; the others are listed in
    the ``problems`` table. ``reference``: reference group (``None``: leave-one-out consensus; the reference group
    gets no rows). ``method``: ``"welch"`` or ``"percentile"`` (``n_boot`` replicates, speakers resampled within
    groups, seed derived from ``seed``). ``best_layer`` / ``baseline_layer``: the headline cell (default: the layer
    / feature set with the highest overall accuracy, i.e. mean per-speaker accuracy over all used speakers).
    """
    if method not in CI_METHODS:
        raise ConfigError(f"method must be one of {CI_METHODS}, got {method!r}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    if method == "percentile" and n_boot < 100:
        raise ConfigError(f"n_boot must be >= 100 for percentile intervals, got {n_boot}")
    enc = _check(encoder, "encoder")
    base = _check(baseline, "baseline")
    X_enc, X_base, speakers, spk_group, problems = _align(enc, base)
    enc_layers, base_layers = list(X_enc.index), list(X_base.index)
    groups = sorted(set(spk_group))
    if len(groups) < 2:
        raise DataError(f"amplification needs at least two groups with usable speakers; got {groups}")
    if reference is not None and reference not in groups:
        raise ConfigError(f"reference group {reference!r} is not among the usable groups {groups}")
    best = _pick(best_layer, X_enc, "best_layer", "encoder")
    bbest = _pick(baseline_layer, X_base, "baseline_layer", "baseline")

    gi = np.array([groups.index(g) for g in spk_group])
    targets = [g for g in groups if g != reference]
    C = np.stack([_contrast(groups.index(g), len(groups), None if reference is None else groups.index(reference))
                  for g in targets])  # [G', G]
    W = None
    if method == "percentile":
        _, W = cluster_bootstrap_weights(speakers, n_boot, seed=derive_seed(seed, "baseline", "bootstrap"),
                                         strata=spk_group)
    xe, xb = X_enc.to_numpy(float), X_base.to_numpy(float)  # [L, S], [K, S]
    ge = _intervals(xe, gi, C, method, level, W)  # each [L, G'] (est, lo, hi)
    gb = _intervals(xb, gi, C, method, level, W)  # [K, G']
    am = _intervals(xe[:, None, :] - xb[None, :, :], gi, C, method, level, W)  # [L, K, G']
    means_e, means_b = _group_means(xe, gi, len(groups)), _group_means(xb, gi, len(groups))

    gap_rows = []
    for source, layers, g3, means, x, top in (("encoder", enc_layers, ge, means_e, xe, best),
                                              ("baseline", base_layers, gb, means_b, xb, bbest)):
        for li, layer in enumerate(layers):
            for ti, g in enumerate(targets):
                gap_rows.append({"source": source, "layer": layer, "group": g,
                                 "accuracy": means[li, groups.index(g)],
                                 "reference_accuracy": means[li, groups.index(g)] + g3[0][li, ti],
                                 "gap": g3[0][li, ti], "ci_low": g3[1][li, ti], "ci_high": g3[2][li, ti],
                                 "n_speakers": int((gi == groups.index(g)).sum()),
                                 "overall_accuracy": float(x[li].mean()), "is_headline": layer == top})
    amp_rows = []
    for li, layer in enumerate(enc_layers):
        for ki, blayer in enumerate(base_layers):
            for ti, g in enumerate(targets):
                e = (ge[0][li, ti], ge[1][li, ti], ge[2][li, ti])
                b = (gb[0][ki, ti], gb[1][ki, ti], gb[2][ki, ti])
                m = (am[0][li, ki, ti], am[1][li, ki, ti], am[2][li, ki, ti])
                amp_rows.append({"layer": layer, "baseline_layer": blayer, "group": g,
                                 "encoder_gap": e[0], "encoder_gap_ci_low": e[1], "encoder_gap_ci_high": e[2],
                                 "baseline_gap": b[0], "baseline_gap_ci_low": b[1], "baseline_gap_ci_high": b[2],
                                 "amplification": m[0], "ci_low": m[1], "ci_high": m[2],
                                 "reading": reading(e[1:], b[1:], m[1:]),
                                 "is_best_layer": layer == best, "is_baseline_layer": blayer == bbest})
    prov = {"stage": "phonefair.analysis.baseline.amplification",
            "settings": {"reference": reference, "consensus": "leave-one-out mean of the other groups' A"
                         if reference is None else None, "method": method, "level": level,
                         "n_boot": n_boot if method == "percentile" else None, "seed": seed},
            "definitions": {"A_g": "mean over the group's speakers of per-speaker accuracy",
                            "gap_g": "A_ref - A_g", "amplification_g": "gap_g(encoder) - gap_g(baseline)",
                            "overall_accuracy": "mean per-speaker accuracy over all used speakers"},
            "groups": groups, "n_speakers": len(speakers),
            "n_speakers_per_group": {g: int((gi == i).sum()) for i, g in enumerate(groups)},
            "encoder_layers": enc_layers, "baseline_layers": base_layers,
            "best_layer": best, "baseline_layer": bbest,
            "encoder_source": dict(encoder.attrs.get("provenance", {}) or {}),
            "baseline_source": dict(baseline.attrs.get("provenance", {}) or {})}
    tables = {"gaps": pd.DataFrame(gap_rows), "amplification": pd.DataFrame(amp_rows),
              "problems": pd.DataFrame(problems, columns=["table", "speaker", "group", "reason"])}
    for name, df in tables.items():
        for c in ("source", "layer", "baseline_layer", "group", "reading", "table", "speaker", "reason"):
            if c in df.columns:
                df[c] = df[c].astype("string")
        df.attrs["provenance"] = {**prov, "table": name}
    return BaselineComparison(table_map=tables, provenance=prov, best_layer=best, baseline_layer=bbest)


def reading(encoder_ci: tuple[float, float], baseline_ci: tuple[float, float],
            amplification_ci: tuple[float, float]) -> str:
    """The reading of one (layer, group) from the three ``(low, high)`` intervals (table in the module docstring)."""
    cis = (encoder_ci, baseline_ci, amplification_ci)
    if any(not (np.isfinite(lo) and np.isfinite(hi)) for lo, hi in cis):
        return "insufficient"
    e, b, m = (1 if lo > 0 else -1 if hi < 0 else 0 for lo, hi in cis)
    if b > 0:
        return "amplified" if m > 0 else "reduced" if m < 0 else "inherited"
    if e > 0:
        return "created" if m > 0 else "unclear"
    return "absent"


# ----------------------------------------------------------------------------------------------- internals
def _check(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{name} accuracy table: expected a DataFrame, got {type(df).__name__}")
    if missing := [c for c in _COLUMNS if c not in df.columns]:
        raise DataError(f"{name} accuracy table lacks column(s) {missing}; needs {list(_COLUMNS)}, "
                        f"has {list(df.columns)}")
    if df.empty:
        raise DataError(f"{name} accuracy table is empty")
    out = pd.DataFrame({"layer": df["layer"].astype(str).to_numpy(), "speaker": df["speaker"].astype(str).to_numpy(),
                        "group": df["group"].astype(object).where(df["group"].notna(), None).to_numpy(),
                        "accuracy": pd.to_numeric(df["accuracy"], errors="coerce").to_numpy(float)})
    if (dup := out.duplicated(["layer", "speaker"])).any():
        r = out[dup].iloc[0]
        raise DataError(f"{name} accuracy table: {int(dup.sum())} duplicated (layer, speaker) row(s), e.g. layer "
                        f"{r['layer']!r}, speaker {r['speaker']!r}")
    per_spk = out.groupby("speaker")["group"].nunique(dropna=False)
    if (bad := per_spk[per_spk > 1]).size:
        raise DataError(f"{name} accuracy table: speaker(s) {bad.index.tolist()[:5]} have more than one group")
    return out


def _align(enc: pd.DataFrame, base: pd.DataFrame
           ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Wide ``[layer, speaker]`` matrices on the speakers usable in both tables, plus the left-out speakers."""
    g_enc = enc.drop_duplicates("speaker").set_index("speaker")["group"]
    g_base = base.drop_duplicates("speaker").set_index("speaker")["group"]
    both = g_enc.index.intersection(g_base.index)
    differ = (g_enc[both].fillna("<NA>") != g_base[both].fillna("<NA>")).to_numpy()
    if differ.any():
        s = both[differ][0]
        raise DataError(f"speaker {s!r} is in group {g_enc[s]!r} in the encoder table but {g_base[s]!r} in the "
                        f"baseline table")
    group_of = pd.concat([g_enc, g_base[g_base.index.difference(both)]])
    problems: list[dict[str, Any]] = []

    def drop(table: str, speakers: Any, reason: str) -> None:
        problems.extend({"table": table, "speaker": s, "group": group_of[s], "reason": reason}
                        for s in sorted(speakers))

    drop("encoder", g_base.index.difference(both), "not in the encoder table: left out of every comparison (pairing)")
    drop("baseline", g_enc.index.difference(both), "not in the baseline table: left out of every comparison "
                                                   "(pairing)")
    usable = set(both)
    wide = {}
    for name, df in (("encoder", enc), ("baseline", base)):
        w = df.pivot(index="layer", columns="speaker", values="accuracy")
        w = w.loc[layer_order(w.index), sorted(usable)]
        bad = ~np.isfinite(w.to_numpy(float))
        for j in np.flatnonzero(bad.any(0)):
            s = w.columns[j]
            drop(name, [s], f"no finite accuracy at layer(s) {w.index[bad[:, j]].tolist()[:5]} (missing row or NaN): "
                            f"left out of every comparison")
            usable.discard(s)
        wide[name] = w
    no_group = sorted(s for s in usable if pd.isna(group_of[s]))
    drop("both", no_group, "no group: left out")
    usable -= set(no_group)
    spk = np.array(sorted(usable, key=lambda s: (str(group_of[s]), s)), dtype=object)
    if len(spk) == 0:
        raise DataError("no speaker has a finite accuracy in every layer of both tables (see the reasons: "
                        + "; ".join(f"{p['speaker']}: {p['reason']}" for p in problems[:3]) + ")")
    return (wide["encoder"][spk], wide["baseline"][spk], spk.astype(str),
            np.array([str(group_of[s]) for s in spk]), problems)


def _pick(given: str | None, X: pd.DataFrame, arg: str, name: str) -> str:
    if given is None:
        return str(X.index[int(np.argmax(X.to_numpy(float).mean(1)))])
    if str(given) not in X.index:
        raise ConfigError(f"{arg}={given!r} is not a layer of the {name} table; it has {list(X.index)}")
    return str(given)


def _contrast(g: int, n_groups: int, ref: int | None) -> np.ndarray:
    """Coefficients c with gap_g = Σ_h c_h A_h."""
    c = np.zeros(n_groups)
    if ref is None:
        c[:] = 1.0 / (n_groups - 1)
    else:
        c[ref] = 1.0
    c[g] = -1.0
    return c


def _group_means(x: np.ndarray, gi: np.ndarray, n_groups: int) -> np.ndarray:
    return np.stack([x[..., gi == h].mean(-1) for h in range(n_groups)], axis=-1)


def _intervals(x: np.ndarray, gi: np.ndarray, C: np.ndarray, method: str, level: float,
               W: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(estimate, low, high)``, each ``x.shape[:-1] + [n_contrasts]``, for contrasts ``C [n_contrasts, G]`` of the
    group means of ``x [..., S]``."""
    G = C.shape[1]
    n = np.array([(gi == h).sum() for h in range(G)], dtype=float)
    means = _group_means(x, gi, G)  # [..., G]
    est = means @ C.T
    used = C != 0  # [n_contrasts, G]
    small = (used & (n < 2)[None, :]).any(1)  # a contrast needing a group with < 2 speakers has no interval
    if method == "welch":
        var = np.stack([x[..., gi == h].var(-1, ddof=1) if n[h] > 1 else np.full(x.shape[:-1], np.nan)
                        for h in range(G)], axis=-1)  # [..., G]
        v = var[..., None, :] * (C**2 / n)  # [..., n_contrasts, G]: c_h² s_h² / n_h
        v = np.where(used, v, 0.0)  # [..., n_contrasts, G]
        se2 = v.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            df = se2**2 / np.where(used, v**2 / np.maximum(n - 1, 1), 0.0).sum(-1)
        q = student_t.ppf(0.5 + level / 2, np.where(se2 > 0, df, 1.0))
        half = np.where(se2 > 0, q * np.sqrt(se2), 0.0)
        lo, hi = est - half, est + half
    else:
        assert W is not None
        onehot = (gi[None, :] == np.arange(G)[:, None]) / n[:, None]  # [G, S]: replicate mean = (W * onehot) @ x
        spk_w = C @ onehot  # [n_contrasts, S]
        reps = np.einsum("bs,...s,cs->...cb", W, x, spk_w)  # [..., n_contrasts, B]
        lo = np.quantile(reps, (1 - level) / 2, axis=-1)
        hi = np.quantile(reps, (1 + level) / 2, axis=-1)
    lo = np.where(small, np.nan, lo)
    hi = np.where(small, np.nan, hi)
    return est, lo, hi
