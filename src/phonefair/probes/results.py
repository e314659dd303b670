"""Probe metrics from per-token predictions, speaker-clustered bootstrap CIs, and :class:`ProbeResults`.

Definitions (see docs/probes.md for the full text):

* accuracy of a set of speakers = total correct tokens / total evaluated tokens (token-weighted);
* balanced accuracy = unweighted mean over phone classes present in the evaluated tokens of per-class recall;
* a probe's metric over seeds = the mean of its per-seed metrics; ``seed_sd`` = their SD (ddof 1);
* every CI is a percentile interval over ``n_boot`` replicates that redraw *test speakers* with replacement within
  their group; all probes, seeds and layers share the same replicate weights, so differences (Δ_g, gap) are paired.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair.io import ResultTables, load_tables, save_tables
from scipy.stats import norm

from phonefair.probes.populations import Population
from phonefair.stats import benjamini_hochberg, bootstrap_pvalue, cluster_bootstrap_weights, percentile_ci, spearman

TABLE_NAMES = ("probe_accuracy", "in_group_benefit", "group_gap", "transfer", "speaker_accuracy", "phone_accuracy",
               "predictions", "probe_fits")

COLUMNS: dict[str, list[str]] = {
    "probe_accuracy": ["layer", "train_kind", "train_group", "test_group", "metric", "estimate", "ci_low", "ci_high",
                       "seed_sd", "n_test_speakers", "n_test_tokens", "n_train_tokens", "n_train_speakers"],
    "in_group_benefit": ["layer", "group", "delta", "ci_low", "ci_high", "p_value", "q_value", "significant",
                         "seed_sd", "acc_in_group", "acc_pooled"],
    "group_gap": ["layer", "overall_accuracy", "overall_error", "best_group", "worst_group", "gap", "gap_ci_low",
                  "gap_ci_high", "ratio"],
    "transfer": ["layer", "train_group", "test_group", "accuracy", "ci_low", "ci_high"],
    "speaker_accuracy": ["layer", "speaker", "group", "accuracy", "balanced_accuracy", "n_tokens"],
    "phone_accuracy": ["layer", "group", "phone", "accuracy", "n_tokens", "top_confusion"],
    "predictions": ["layer", "train_kind", "train_group", "seed", "row", "speaker", "group", "phone", "predicted"],
    # not in the shared contract: one row per fitted probe (chosen L2, validation accuracy, dropped test tokens)
    "probe_fits": ["layer", "train_kind", "train_group", "seed", "l2", "val_accuracy", "n_train_tokens",
                   "n_train_speakers", "n_classes", "n_test_dropped_unseen", "optimizer", "n_iter"],
}

_STRING_COLS = {"layer", "train_kind", "train_group", "test_group", "metric", "group", "best_group", "worst_group",
                "speaker", "phone", "top_confusion", "predicted", "optimizer"}


def _frame(name: str, rows: list[dict[str, Any]] | pd.DataFrame, provenance: dict[str, Any]) -> pd.DataFrame:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=COLUMNS[name])
    df = df.reindex(columns=COLUMNS[name])
    for c in df.columns:
        if c in _STRING_COLS:
            df[c] = df[c].astype("string")
    if "significant" in df.columns:
        df["significant"] = df["significant"].astype(bool)
    df = df.reset_index(drop=True)
    df.attrs["provenance"] = {**provenance, "table": name}
    return df


@dataclass
class _Eval:
    """Per-(layer, probe) evaluated counts on the test speakers: correct / total per (speaker, class)."""

    correct: np.ndarray  # [S, C]
    total: np.ndarray  # [S, C]


class MetricEngine:
    """Turns per-token predictions into the contract tables. All bootstrap replicates share one weight matrix."""

    def __init__(self, test: pd.DataFrame, classes: Sequence[str], pops: Sequence[Population], *, n_boot: int,
                 level: float, seed: int, resample_seeds: bool = False) -> None:
        self.test = test.reset_index(drop=True)
        self.classes = list(classes)
        self.pops = list(pops)
        self.level = level
        spk = self.test[["speaker", "group"]].drop_duplicates("speaker").sort_values(["group", "speaker"])
        self.speakers = spk["speaker"].astype(str).to_numpy()
        self.spk_group = spk["group"].astype(str).to_numpy()
        self.groups = sorted(pd.unique(self.spk_group).tolist())
        pos = {s: i for i, s in enumerate(self.speakers)}
        self.s_idx = self.test["speaker"].astype(str).map(pos).to_numpy()
        self.y = self.test["y"].to_numpy().astype(np.int64)
        uniq, w = cluster_bootstrap_weights(self.speakers, n_boot, seed=seed, strata=self.spk_group)
        assert (uniq == self.speakers).all()
        # row 0 = the observed sample (all weights 1), rows 1.. = bootstrap replicates
        self.W = np.vstack([np.ones((1, len(self.speakers))), w])
        self.gmask = {g: self.spk_group == g for g in self.groups}
        self.keys: list[tuple[str, str | None]] = []
        for p in self.pops:
            if (p.kind, p.group) not in self.keys:
                self.keys.append((p.kind, p.group))
        self.seeds = sorted({p.seed for p in self.pops})
        self.idx = {(p.kind, p.group, p.seed): i for i, p in enumerate(self.pops)}
        # optional second level: each replicate also redraws the probe seeds with replacement (same draw for every
        # probe, so differences stay paired); adds training-sample variation to the CIs
        n_s = len(self.seeds)
        self.seed_draw = (np.random.default_rng([seed, 104729]).integers(0, n_s, size=(n_boot, n_s))
                          if resample_seeds and n_s > 1 else None)

    def avg(self, r: np.ndarray) -> np.ndarray:
        """Seed-averaged replicates [B + 1] from [n_seeds, B + 1] (column 0: the observed sample)."""
        if self.seed_draw is None:
            return r.mean(0)
        out = np.empty(r.shape[1])
        out[0] = r[:, 0].mean()
        out[1:] = r[self.seed_draw, np.arange(1, r.shape[1])[:, None]].mean(1)
        return out

    def counts(self, pred: np.ndarray) -> _Eval:
        S, C = len(self.speakers), len(self.classes)
        ev = pred >= 0
        ok = ev & (pred == self.y)
        cell = self.s_idx * C + self.y
        return _Eval(np.bincount(cell, weights=ok, minlength=S * C).reshape(S, C),
                     np.bincount(cell, weights=ev, minlength=S * C).reshape(S, C))

    def _acc(self, e: _Eval, mask: np.ndarray) -> np.ndarray:
        w = self.W[:, mask]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ e.correct[mask].sum(1)) / (w @ e.total[mask].sum(1))

    def _bal(self, e: _Eval, mask: np.ndarray) -> np.ndarray:
        w = self.W[:, mask]
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean((w @ e.correct[mask]) / (w @ e.total[mask]), axis=1)

    def reps(self, evals: list[_Eval], metric: str, group: str | None) -> np.ndarray:
        """[n_seeds, B + 1] replicates of one probe's metric on one test group (None: all test speakers)."""
        mask = np.ones(len(self.speakers), bool) if group is None else self.gmask[group]
        f = self._acc if metric == "accuracy" else self._bal
        return np.stack([f(e, mask) for e in evals])

    def summarise(self, r: np.ndarray) -> tuple[float, float, float, float]:
        """(estimate, ci_low, ci_high, seed_sd) from [n_seeds, B + 1] replicates."""
        m = self.avg(r)
        lo, hi = percentile_ci(m[1:], self.level)
        sd = float(np.std(r[:, 0], ddof=1)) if r.shape[0] > 1 else float("nan")
        return float(m[0]), float(lo), float(hi), sd


def compute_tables(
    layers: Sequence[str],
    preds: dict[str, np.ndarray],
    engine: MetricEngine,
    fits: pd.DataFrame,
    *,
    fdr_alpha: float,
    provenance: dict[str, Any],
    keep_predictions: bool = True,
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """All contract tables (plus ``probe_fits``) and the layerwise-curve summary from ``preds[layer] [Nt, P]``."""
    E = engine
    pa, ib, gg, tr, sa, ph, pr = [], [], [], [], [], [], []
    curve_err: list[np.ndarray] = []
    curve_gap: list[np.ndarray] = []
    curve_layers: list[str] = []
    has_pooled = any(k == "pooled" for k, _ in E.keys)
    classes = np.array(E.classes, dtype=object)
    for layer in layers:
        pred = preds[layer]
        evals = {i: E.counts(pred[:, i]) for i in range(pred.shape[1])}

        def ev_of(kind: str, group: str | None, _evals: dict[int, _Eval] = evals) -> list[_Eval]:
            return [_evals[E.idx[(kind, group, s)]] for s in E.seeds]

        acc_reps: dict[tuple[str, str | None, str], np.ndarray] = {}
        for kind, tg in E.keys:
            pops = [E.pops[E.idx[(kind, tg, s)]] for s in E.seeds]
            evs = ev_of(kind, tg)
            for g in E.groups:
                m = E.gmask[g]
                n_spk = min(int((e.total[m].sum(1) > 0).sum()) for e in evs)
                n_tok = min(int(e.total[m].sum()) for e in evs)
                for metric in ("accuracy", "balanced_accuracy"):
                    r = E.reps(evs, metric, g)
                    if metric == "accuracy":
                        acc_reps[(kind, tg, g)] = r
                    est, lo, hi, sd = E.summarise(r)
                    pa.append({"layer": layer, "train_kind": kind, "train_group": tg, "test_group": g,
                               "metric": metric, "estimate": est, "ci_low": lo, "ci_high": hi, "seed_sd": sd,
                               "n_test_speakers": n_spk, "n_test_tokens": n_tok,
                               "n_train_tokens": pops[0].n_tokens, "n_train_speakers": pops[0].n_speakers})
                if kind == "group" and g != tg:
                    est, lo, hi, _ = E.summarise(acc_reps[(kind, tg, g)])
                    tr.append({"layer": layer, "train_group": tg, "test_group": g, "accuracy": est, "ci_low": lo,
                               "ci_high": hi})
        if has_pooled:
            for g in E.groups:
                if ("group", g) not in E.keys:
                    continue
                a_in, a_pool = acc_reps[("group", g, g)], acc_reps[("pooled", None, g)]
                d = E.avg(a_in) - E.avg(a_pool)  # same replicate weights on both terms: paired
                lo, hi = percentile_ci(d[1:], E.level)
                per_seed = a_in[:, 0] - a_pool[:, 0]
                ib.append({"layer": layer, "group": g, "delta": float(d[0]), "ci_low": float(lo),
                           "ci_high": float(hi), "p_value": _delta_pvalue(d[1:]),
                           "seed_sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan"),
                           "acc_in_group": float(a_in[:, 0].mean()), "acc_pooled": float(a_pool[:, 0].mean())})
            # layerwise fairness curve (pooled probe)
            per_group = np.stack([E.avg(acc_reps[("pooled", None, g)]) for g in E.groups])  # [G, B+1]
            best, worst = int(np.nanargmax(per_group[:, 0])), int(np.nanargmin(per_group[:, 0]))
            overall = E.avg(E.reps(ev_of("pooled", None), "accuracy", None))
            gap = per_group[best] - per_group[worst]  # identities fixed at the observed best/worst group
            lo, hi = percentile_ci(gap[1:], E.level)
            gg.append({"layer": layer, "overall_accuracy": float(overall[0]), "overall_error": float(1 - overall[0]),
                       "best_group": E.groups[best], "worst_group": E.groups[worst], "gap": float(gap[0]),
                       "gap_ci_low": float(lo), "gap_ci_high": float(hi),
                       "ratio": float(per_group[worst, 0] / per_group[best, 0])})
            curve_err.append(1 - overall)
            curve_gap.append(gap)
            curve_layers.append(layer)
            # per speaker and per phone (pooled probe, counts summed over seeds)
            evs = ev_of("pooled", None)
            corr = sum(e.correct for e in evs)
            tot = sum(e.total for e in evs)
            n_tok = np.max(np.stack([e.total.sum(1) for e in evs]), axis=0)
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                acc_s = corr.sum(1) / tot.sum(1)
                bal_s = np.nanmean(corr / tot, axis=1)
            sa.append(pd.DataFrame({"layer": layer, "speaker": E.speakers, "group": E.spk_group,
                                    "accuracy": acc_s, "balanced_accuracy": bal_s, "n_tokens": n_tok.astype(int)}))
            ph.append(_phone_table(layer, E, [pred[:, E.idx[("pooled", None, s)]] for s in E.seeds]))
        if keep_predictions:
            for i, p in enumerate(E.pops):
                ev = pred[:, i] >= 0
                t = E.test.loc[ev]
                pr.append(pd.DataFrame({"layer": layer, "train_kind": p.kind, "train_group": p.group,
                                        "seed": p.seed, "row": t["row"].to_numpy(), "speaker": t["speaker"].to_numpy(),
                                        "group": t["group"].to_numpy(), "phone": t["phone"].to_numpy(),
                                        "predicted": classes[pred[ev, i]]}))

    if ib:
        q, rej = benjamini_hochberg([r["p_value"] for r in ib], fdr_alpha)  # across groups x layers
        for r, qi, ri in zip(ib, q, rej, strict=True):
            r["q_value"], r["significant"] = float(qi), bool(ri)
    curve: dict[str, Any] = {}
    if curve_layers:
        err, gap = np.stack(curve_err), np.stack(curve_gap)  # [L, B+1]
        rho = spearman(err[:, 0], gap[:, 0]) if len(curve_layers) > 2 else float("nan")
        rho_reps = np.array([spearman(err[:, b], gap[:, b]) for b in range(1, err.shape[1])]) \
            if len(curve_layers) > 2 else np.array([np.nan])
        lo, hi = percentile_ci(rho_reps, E.level) if np.isfinite(rho_reps).any() else (np.nan, np.nan)
        best_layer = curve_layers[int(np.argmin(err[:, 0]))]
        gap_layer = curve_layers[int(np.argmax(gap[:, 0]))]
        curve = {"spearman_error_gap": rho, "spearman_ci_low": float(lo), "spearman_ci_high": float(hi),
                 "best_layer": best_layer, "largest_gap_layer": gap_layer,
                 "best_layer_has_largest_gap": best_layer == gap_layer, "n_layers": len(curve_layers)}
    prov = {**provenance, "fdr_scope": "in_group_benefit: all groups x layers of this fit",
            "curve": curve}
    tables = {
        "probe_accuracy": _frame("probe_accuracy", pa, prov),
        "in_group_benefit": _frame("in_group_benefit", ib, prov),
        "group_gap": _frame("group_gap", gg, prov),
        "transfer": _frame("transfer", tr, prov),
        "speaker_accuracy": _frame("speaker_accuracy", pd.concat(sa, ignore_index=True) if sa else [], prov),
        "phone_accuracy": _frame("phone_accuracy", pd.concat(ph, ignore_index=True) if ph else [], prov),
        "predictions": _frame("predictions", pd.concat(pr, ignore_index=True) if pr else [], prov),
        "probe_fits": _frame("probe_fits", fits, prov),
    }
    return tables, curve


def _delta_pvalue(reps: np.ndarray) -> float:
    """Two-sided p-value of ``Δ = 0`` from bootstrap replicates.

    The bootstrap p-value (``phonefair.stats.bootstrap_pvalue``) cannot go below ``2 / (B + 1)``, which would cap
    what Benjamini–Hochberg can find over many layers × groups. When no replicate reaches 0 it is replaced by the
    normal approximation ``2 Φ(-|mean*| / sd*)`` (smaller, as the data say); otherwise it is used as is.
    """
    r = reps[np.isfinite(reps)]
    if r.size < 2:
        return float("nan")
    p = float(bootstrap_pvalue(r))
    if (r > 0).all() or (r < 0).all():
        sd = float(np.std(r, ddof=1))
        if sd > 0:
            p = min(p, float(2 * norm.sf(abs(float(np.mean(r))) / sd)))
    return p


def _phone_table(layer: str, E: MetricEngine, preds: list[np.ndarray]) -> pd.DataFrame:
    C = len(E.classes)
    rows = []
    g_of_tok = E.spk_group[E.s_idx]
    for g in E.groups:
        m = g_of_tok == g
        y = E.y[m]
        conf = np.zeros((C, C))
        n_tok = np.zeros(C)
        for p in preds:
            pm = p[m]
            ev = pm >= 0
            conf += np.bincount(y[ev] * C + pm[ev], minlength=C * C).reshape(C, C)
            n_tok = np.maximum(n_tok, np.bincount(y[ev], minlength=C))
        for c in np.flatnonzero(conf.sum(1) > 0):
            wrong = conf[c].copy()
            wrong[c] = 0
            rows.append({"layer": layer, "group": g, "phone": E.classes[c], "accuracy": conf[c, c] / conf[c].sum(),
                         "n_tokens": int(n_tok[c]),
                         "top_confusion": E.classes[int(np.argmax(wrong))] if wrong.sum() > 0 else pd.NA})
    return pd.DataFrame(rows, columns=COLUMNS["phone_accuracy"])




def _clean(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    return v


@dataclass
class ProbeResults(ResultTables):
    """The output of :func:`phonefair.probes.fit_probes`: the tables by contract name (plus ``probe_fits``),
    provenance and the layerwise-curve summary."""

    curve: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Headline numbers with CIs: per layer the overall accuracy, worst group, gap, Δ_g; the layerwise curve."""
        gap = self.table_map["group_gap"]
        ib = self.table_map["in_group_benefit"]
        layers: dict[str, Any] = {}
        for layer in self.provenance.get("layers", []):
            d: dict[str, Any] = {}
            g = gap[gap["layer"] == layer]
            if len(g):
                r = g.iloc[0]
                d.update({"overall_accuracy": _clean(r["overall_accuracy"]), "best_group": str(r["best_group"]),
                          "worst_group": str(r["worst_group"]),
                          "gap": {"estimate": _clean(r["gap"]), "ci_low": _clean(r["gap_ci_low"]),
                                  "ci_high": _clean(r["gap_ci_high"])},
                          "ratio": _clean(r["ratio"])})
            d["in_group_benefit"] = {
                str(r["group"]): {"delta": _clean(r["delta"]), "ci_low": _clean(r["ci_low"]),
                                  "ci_high": _clean(r["ci_high"]), "q_value": _clean(r["q_value"]),
                                  "significant": bool(r["significant"])}
                for _, r in ib[ib["layer"] == layer].iterrows()}
            layers[layer] = d
        sig = ib[ib["significant"]]
        return {"layers": layers,
                "curve": {k: _clean(v) for k, v in self.curve.items()},
                "significant_in_group_benefit": [{"layer": str(r["layer"]), "group": str(r["group"]),
                                                  "delta": _clean(r["delta"])} for _, r in sig.iterrows()],
                "level": self.provenance.get("settings", {}).get("level"),
                "fdr_alpha": self.provenance.get("settings", {}).get("fdr_alpha"),
                "excluded": self.provenance.get("excluded", {})}

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.parquet`` per table and ``probes.json`` (provenance, curve, summary)."""
        out = Path(directory)
        return save_tables(out, self.table_map, fmt="probes",
                           meta={"provenance": self.provenance, "curve": self.curve, "summary": self.summary()})

    @classmethod
    def load(cls, directory: str | Path) -> ProbeResults:
        """Read what :meth:`save` wrote."""
        tables, meta = load_tables(directory, fmt="probes")
        for df in tables.values():
            df.attrs["provenance"]["curve"] = meta["curve"]
        return cls(table_map=tables, provenance=meta["provenance"], curve=meta["curve"])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.table_map.items())
        return f"ProbeResults(layers={self.provenance.get('layers')}, {sizes})"


__all__ = ["COLUMNS", "TABLE_NAMES", "MetricEngine", "ProbeResults", "compute_tables"]
