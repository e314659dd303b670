"""Probe tables from cross-fitted test counts, and :class:`ProbeResults`.

Definitions (docs/probes.md has the full text; the speaker is the unit of every statistic):

* a speaker's **accuracy** = correct / evaluated tokens; **standardised accuracy** = the speaker's per-phone
  accuracies averaged with the phone frequencies of the whole analysed corpus (over the phones the speaker has),
  so a group that happens to say more of the hard phones is not made to look worse; **balanced accuracy** = the
  unweighted mean of the speaker's per-phone accuracies;
* a group's metric = the mean of its speakers' metrics; its interval is a t interval over those speakers;
* **in-group benefit** Δ_g = mean over g's speakers of (standardised accuracy of the size-matched probe trained on
  g only − that of the size-matched pooled probe), both cross-fitted. Its interval and test treat the
  (repeat, fold) as the unit and correct the variance for the overlap of training sets between folds
  (Nadeau & Bengio 2003, "corrected resampled t"; Bouckaert & Frank 2004 for repeated k-fold):
  ``Var = (1/J + 1/(K − 1)) s²_fold`` with ``J`` units and ``K`` folds, ``t`` with ``J − 1`` degrees of freedom.
  Speakers tested by the same fold share the same two probes, so a per-speaker interval would be too narrow.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from phonefair.io import ResultTables, load_tables, save_tables
from phonefair.stats import benjamini_hochberg, t_interval

if TYPE_CHECKING:
    from phonefair.audit.design import Design
    from phonefair.probes.fit import LayerCounts

TABLE_NAMES = ("speaker_accuracy", "probe_accuracy", "in_group_benefit", "transfer", "phone_accuracy",
               "speaker_phone_counts", "probe_fits")

COLUMNS: dict[str, list[str]] = {
    "speaker_accuracy": ["layer", "speaker", "group", "accuracy", "standardized_accuracy", "balanced_accuracy",
                         "n_tokens"],
    "probe_accuracy": ["layer", "train_kind", "train_group", "test_group", "metric", "estimate", "ci_low",
                       "ci_high", "n_test_speakers", "n_test_tokens", "n_train_tokens", "n_train_speakers"],
    "in_group_benefit": ["layer", "group", "delta", "ci_low", "ci_high", "p_value", "q_value", "significant",
                         "acc_in_group", "acc_pooled", "n_speakers", "n_units"],
    "transfer": ["layer", "train_group", "test_group", "accuracy", "ci_low", "ci_high", "n_test_speakers"],
    "phone_accuracy": ["layer", "group", "phone", "accuracy", "n_tokens", "top_confusion"],
    "speaker_phone_counts": ["layer", "speaker", "phone", "correct", "total"],
    "probe_fits": ["layer", "train_kind", "train_group", "repeat", "fold", "l2", "val_accuracy", "n_train_tokens",
                   "n_train_speakers", "n_classes", "optimizer", "n_iter"],
}
_STRING_COLS = {"layer", "train_kind", "train_group", "test_group", "metric", "group", "speaker", "phone",
                "top_confusion", "optimizer"}
METRICS = ("accuracy", "standardized_accuracy", "balanced_accuracy")


def _frame(name: str, rows: list[dict[str, Any]] | pd.DataFrame, provenance: dict[str, Any]) -> pd.DataFrame:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=COLUMNS[name])
    df = df.reindex(columns=COLUMNS[name])
    for c in df.columns:
        if c in _STRING_COLS:
            df[c] = df[c].astype("string")
    if "significant" in df.columns:
        df["significant"] = df["significant"].fillna(False).astype(bool)
    df = df.reset_index(drop=True)
    df.attrs["provenance"] = {**provenance, "table": name}
    return df


def speaker_metrics(correct: np.ndarray, total: np.ndarray, phone_weight: np.ndarray) -> dict[str, np.ndarray]:
    """Per-speaker accuracy, standardised accuracy and balanced accuracy from ``[S, C]`` counts (NaN when a speaker
    has no evaluated token). ``phone_weight [C]``: the corpus phone frequencies used for standardisation."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        present = total > 0
        per_phone = np.where(present, correct / np.where(present, total, 1), np.nan)
        acc = correct.sum(1) / total.sum(1)
        w = np.where(present, phone_weight[None, :], 0.0)
        std = np.nansum(np.nan_to_num(per_phone) * w, axis=1) / w.sum(1)
        bal = np.nanmean(per_phone, axis=1)
    return {"accuracy": acc, "standardized_accuracy": std, "balanced_accuracy": bal}


def build_tables(layers: Sequence[str], counts: dict[str, LayerCounts], design: Design, fits: pd.DataFrame, *,
                 level: float, fdr_alpha: float, provenance: dict[str, Any], kinds: Sequence[str]
                 ) -> dict[str, pd.DataFrame]:
    """All probe tables from the per-layer counts."""
    G, S = design.n_groups, design.n_speakers
    names = design.group_names
    phones = np.array(design.phones, dtype=object)
    w_phone = np.bincount(design.tokens["phone_idx"], minlength=len(phones)).astype(float)
    sg = design.speaker_group
    R = design.folds.shape[0]
    spk_acc, pa, ib, tr, ph, spc = [], [], [], [], [], []
    for layer in layers:
        lc = counts[layer]
        metrics = {key: speaker_metrics(lc.correct[key], lc.total[key], w_phone) for key in lc.correct}
        m_all = metrics[("all", None)]
        n_tok = lc.total[("all", None)].sum(1) / R
        spk_acc.append(pd.DataFrame({"layer": layer, "speaker": design.speakers,
                                     "group": np.array(names, dtype=object)[sg], **m_all, "n_tokens": n_tok}))
        f = fits[fits["layer"] == layer]
        for key, m in metrics.items():
            kind, tg = key
            ff = f[(f["train_kind"] == kind) & (f["train_group"].astype(object).fillna("") == (tg or ""))]
            n_train_tok = float(ff["n_train_tokens"].median()) if len(ff) else np.nan
            n_train_spk = float(ff["n_train_speakers"].median()) if len(ff) else np.nan
            for g in range(G):
                sel = sg == g
                n_eval = lc.total[key][sel].sum(1) / R
                for metric in METRICS:
                    est, lo, hi = t_interval(m[metric][sel], level)
                    pa.append({"layer": layer, "train_kind": kind, "train_group": tg, "test_group": names[g],
                               "metric": metric, "estimate": est, "ci_low": lo, "ci_high": hi,
                               "n_test_speakers": int((n_eval > 0).sum()), "n_test_tokens": int(n_eval.sum()),
                               "n_train_tokens": n_train_tok, "n_train_speakers": n_train_spk})
                if kind == "group":
                    est, lo, hi = t_interval(m["standardized_accuracy"][sel], level)
                    tr.append({"layer": layer, "train_group": tg, "test_group": names[g], "accuracy": est,
                               "ci_low": lo, "ci_high": hi, "n_test_speakers": int(sel.sum())})
        if ("pooled", None) in lc.correct:
            for g in range(G):
                if ("group", names[g]) in lc.correct:
                    ib.append({"layer": layer, "group": names[g],
                               **in_group_benefit(lc, design, g, w_phone, level=level)})
        ph.append(_phone_table(layer, lc.confusion / R, names, phones))
        tot = lc.total[("all", None)]
        nz = np.nonzero(tot)
        spc.append(pd.DataFrame({"layer": layer, "speaker": design.speakers[nz[0]], "phone": phones[nz[1]],
                                 "correct": lc.correct[("all", None)][nz] / R, "total": tot[nz] / R}))
    if ib:
        q, rej = benjamini_hochberg([r["p_value"] for r in ib], fdr_alpha)  # across groups x layers
        for r, qi, ri in zip(ib, q, rej, strict=True):
            r["q_value"], r["significant"] = float(qi), bool(ri)
    prov = {**provenance, "fdr_scope": "in_group_benefit: all groups x layers of this fit"}
    return {
        "speaker_accuracy": _frame("speaker_accuracy", pd.concat(spk_acc, ignore_index=True), prov),
        "probe_accuracy": _frame("probe_accuracy", pa, prov),
        "in_group_benefit": _frame("in_group_benefit", ib, prov),
        "transfer": _frame("transfer", tr, prov),
        "phone_accuracy": _frame("phone_accuracy", pd.concat(ph, ignore_index=True) if ph else [], prov),
        "speaker_phone_counts": _frame("speaker_phone_counts", pd.concat(spc, ignore_index=True), prov),
        "probe_fits": _frame("probe_fits", fits, prov),
    }


def in_group_benefit(lc: LayerCounts, design: Design, g: int, w_phone: np.ndarray, *, level: float
                     ) -> dict[str, Any]:
    """Δ_g with the fold-level corrected-resampled-t interval and two-sided p-value (module docstring)."""
    name = design.group_names[g]
    R, K = design.folds.shape[0], design.n_folds
    members = np.flatnonzero(design.speaker_group == g)
    n_s = lc.total[("all", None)][members] / R  # [n_g, C] tokens per speaker and phone (same every repeat)
    units = []
    per_speaker = np.zeros(len(members))
    for r in range(R):
        fold_of = design.folds[r, members]
        a_in = speaker_metrics(lc.fold_correct[("group", name)][r, fold_of, members], n_s,
                               w_phone)["standardized_accuracy"]
        a_po = speaker_metrics(lc.fold_correct[("pooled", None)][r, fold_of, members], n_s,
                               w_phone)["standardized_accuracy"]
        d = a_in - a_po
        per_speaker += d / R
        for k in range(K):
            sel = (fold_of == k) & np.isfinite(d)
            if sel.any():
                units.append(float(d[sel].mean()))
    m_in = speaker_metrics(lc.correct[("group", name)][members], lc.total[("group", name)][members], w_phone)
    m_po = speaker_metrics(lc.correct[("pooled", None)][members], lc.total[("pooled", None)][members], w_phone)
    u = np.array(units)
    J = len(u)
    out = {"delta": float(np.nanmean(per_speaker)), "acc_in_group": float(np.nanmean(m_in["standardized_accuracy"])),
           "acc_pooled": float(np.nanmean(m_po["standardized_accuracy"])), "n_speakers": int(len(members)),
           "n_units": J, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}
    if J >= 2:
        sd = float(u.std(ddof=1))
        se = sd * np.sqrt(1.0 / J + 1.0 / max(K - 1, 1))
        tq = float(sps.t.ppf(0.5 + level / 2, J - 1))
        est = out["delta"]
        out["ci_low"], out["ci_high"] = est - tq * se, est + tq * se
        out["p_value"] = float(2 * sps.t.sf(abs(est) / se, J - 1)) if se > 0 else (1.0 if est == 0 else 0.0)
    return out


def _phone_table(layer: str, conf: np.ndarray, names: list[str], phones: np.ndarray) -> pd.DataFrame:
    rows = []
    for g, gname in enumerate(names):
        c = conf[g]
        tot = c.sum(1)
        for p in np.flatnonzero(tot > 0):
            wrong = c[p].copy()
            wrong[p] = 0
            rows.append({"layer": layer, "group": gname, "phone": phones[p], "accuracy": c[p, p] / tot[p],
                         "n_tokens": float(tot[p]),
                         "top_confusion": phones[int(np.argmax(wrong))] if wrong.sum() > 0 else pd.NA})
    return pd.DataFrame(rows, columns=COLUMNS["phone_accuracy"])


def _clean(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


@dataclass
class ProbeResults(ResultTables):
    """The output of :func:`phonefair.probes.fit_probes`: the probe tables by name, and provenance."""

    def summary(self) -> dict[str, Any]:
        """Per layer: overall (speaker-mean) standardised accuracy of the all-speaker probe and per group."""
        sa = self.table_map["speaker_accuracy"]
        out: dict[str, Any] = {}
        for layer, d in sa.groupby("layer", sort=False):
            out[str(layer)] = {"accuracy": _clean(d["standardized_accuracy"].mean()),
                               "by_group": {str(g): _clean(x) for g, x in
                                            d.groupby("group")["standardized_accuracy"].mean().items()}}
        return {"layers": out, "design": self.provenance.get("design", {})}

    def save(self, directory: str | Path) -> Path:
        return save_tables(Path(directory), self.table_map, fmt="probes", meta={"provenance": self.provenance})

    @classmethod
    def load(cls, directory: str | Path) -> ProbeResults:
        tables, meta = load_tables(directory, fmt="probes")
        return cls(table_map=tables, provenance=meta["provenance"])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.table_map.items())
        return f"ProbeResults(layers={self.provenance.get('layers')}, {sizes})"


__all__ = ["COLUMNS", "METRICS", "TABLE_NAMES", "ProbeResults", "build_tables", "in_group_benefit",
           "speaker_metrics"]
