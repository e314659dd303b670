"""Before / after: how fine-tuning changed each group's accuracy, gap, in-group benefit, spread and shift.

The encoders compared are audited on the *same speakers and folds* (one :class:`~phonefair.audit.Audit`), so the
per-speaker quantities pair by speaker:

* accuracy: per speaker ``Δ_s = after − before`` (standardised accuracy, cross-fitted); a group's change is the mean
  of its speakers' ``Δ_s`` with a t interval over them;
* gap (against the reference or the other groups): a linear combination of group means, so its change is the same
  combination of the paired ``Δ_s``, with a Welch interval;
* normalised variance (per speaker, from the typology): paired the same way;
* shift (phone-averaged squared shift of the group against the consensus / reference) and in-group benefit: the two
  audits give one estimate each with an interval; the change is their difference with a conservative interval
  (independent errors assumed; both use the same speakers, so the true interval is narrower);
* verdict transitions: the verdict of each group before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from phonefair.layers import layer_order
from phonefair.stats import t_interval

__all__ = ["compare_audits", "CHANGE_TABLES"]

CHANGE_TABLES = ("change_accuracy", "change_gap", "change_variance", "change_shift", "change_benefit",
                 "verdict_transitions")
_Z = sps.norm.ppf(0.975)


def _paired(before: pd.DataFrame, after: pd.DataFrame, value: str) -> pd.DataFrame:
    b = before[["layer", "speaker", "group", value]].assign(layer=lambda d: d["layer"].astype(str))
    a = after[["layer", "speaker", value]].assign(layer=lambda d: d["layer"].astype(str))
    m = b.merge(a, on=["layer", "speaker"], suffixes=("_before", "_after"))
    return m.assign(delta=m[f"{value}_after"] - m[f"{value}_before"])


def _group_change(m: pd.DataFrame, value: str, level: float, reference: str | None, kind: str
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, gap_rows = [], []
    for layer in layer_order(m["layer"].unique()):
        d = m[m["layer"] == layer]
        groups = sorted(d["group"].astype(str).unique())
        stats = {}
        for g in groups:
            x = d.loc[d["group"] == g, "delta"].to_numpy(float)
            est, lo, hi = t_interval(x, level)
            stats[g] = (x.mean() if len(x) else np.nan, x.var(ddof=1) if len(x) > 1 else np.nan, len(x))
            rows.append({"layer": layer, "group": g, f"{kind}_before": d.loc[d["group"] == g, f"{value}_before"].mean(),
                         f"{kind}_after": d.loc[d["group"] == g, f"{value}_after"].mean(), "change": est,
                         "ci_low": lo, "ci_high": hi, "n_speakers": len(x)})
        for g in groups:
            c = {h: (1.0 / (len(groups) - 1) if reference is None else float(h == reference)) for h in groups if h != g}
            c[g] = -1.0
            if reference == g:
                continue
            means = np.array([stats[h][0] for h in c])
            var = np.array([stats[h][1] for h in c])
            n = np.array([stats[h][2] for h in c])
            coef = np.array(list(c.values()))
            est = float(coef @ means)
            terms = coef**2 * var / n
            se = float(np.sqrt(np.nansum(terms)))
            with np.errstate(invalid="ignore", divide="ignore"):
                df = np.nansum(terms) ** 2 / np.nansum(terms**2 / np.maximum(n - 1, 1))
            q = float(sps.t.ppf(0.5 + level / 2, df)) if np.isfinite(df) and df > 0 else np.nan
            gap_rows.append({"layer": layer, "group": g, "change": est, "ci_low": est - q * se,
                             "ci_high": est + q * se})
    return rows, gap_rows


def _unpaired(b: pd.DataFrame, a: pd.DataFrame, keys: list[str], est: str, lo: str, hi: str, level: float
              ) -> pd.DataFrame:
    """Difference of two estimates with intervals; SEs read off the intervals, errors assumed independent."""
    z = sps.norm.ppf(0.5 + level / 2)
    m = b[keys + [est, lo, hi]].merge(a[keys + [est, lo, hi]], on=keys, suffixes=("_before", "_after"))
    se = np.sqrt(((m[f"{hi}_before"] - m[f"{lo}_before"]) / (2 * z)) ** 2
                 + ((m[f"{hi}_after"] - m[f"{lo}_after"]) / (2 * z)) ** 2)
    change = m[f"{est}_after"] - m[f"{est}_before"]
    return m.assign(change=change, ci_low=change - z * se, ci_high=change + z * se)


def compare_audits(audit: Any, before: str, afters: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The change tables of every ``after`` encoder against ``before`` (see the module docstring)."""
    level = audit.analysis_settings.level
    ref = audit.reference
    out: dict[str, list[pd.DataFrame]] = {k: [] for k in CHANGE_TABLES}
    b_probe = audit.probes(before)
    b_typ = audit.typology(before)
    b_ver = audit.verdicts(before)
    for after in afters:
        a_probe = audit.probes(after)
        a_typ = audit.typology(after)
        m = _paired(b_probe["speaker_accuracy"], a_probe["speaker_accuracy"], "standardized_accuracy")
        acc, gap = _group_change(m, "standardized_accuracy", level, ref, "accuracy")
        out["change_accuracy"].append(pd.DataFrame(acc).assign(after=after))
        out["change_gap"].append(pd.DataFrame(gap).assign(after=after))
        sv_b, sv_a = b_typ["speaker_variance"], a_typ["speaker_variance"]
        for space in sorted(set(sv_b["space"]) & set(sv_a["space"])):
            mv = _paired(sv_b[sv_b["space"] == space], sv_a[sv_a["space"] == space], "variance")
            var, _ = _group_change(mv, "variance", level, ref, "variance")
            out["change_variance"].append(pd.DataFrame(var).assign(space=space, after=after))
        db, da = b_typ["decomposition"], a_typ["decomposition"]
        keys = ["layer", "space", "group", "phone"]
        sh = _unpaired(db[db["phone"] == "*"], da[da["phone"] == "*"], keys, "shift_sq", "shift_ci_low",
                       "shift_ci_high", level)
        out["change_shift"].append(sh.assign(after=after))
        ib_b, ib_a = b_probe["in_group_benefit"], a_probe["in_group_benefit"]
        if len(ib_b) and len(ib_a):
            out["change_benefit"].append(_unpaired(ib_b, ib_a, ["layer", "group"], "delta", "ci_low", "ci_high",
                                                   level).assign(after=after))
        a_ver = audit.verdicts(after)
        tr = b_ver[["group", "verdict", "gap"]].merge(a_ver[["group", "verdict", "gap"]], on="group",
                                                      suffixes=("_before", "_after"))
        out["verdict_transitions"].append(tr.assign(after=after, changed=tr["verdict_before"] != tr["verdict_after"]))
    tables = {}
    for k, parts in out.items():
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        df.attrs["provenance"] = {"stage": "phonefair.audit.compare", "before": before, "after": list(afters),
                                  "level": level, "reference": ref}
        tables[k] = df
    return tables
