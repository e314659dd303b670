"""The headline of an audit: per encoder, served worse? (gap with CI) where? (layers) why? (mechanism, share).

:func:`headline` is what ``summary.json`` holds and what the report's first screen and the terminal show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from phonefair.audit import Audit

__all__ = ["headline", "headline_lines"]


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


#: the verdict columns the headline carries (summary.json, the report's first screen)
_VERDICT_KEYS = ("group", "verdict", "served_worse", "is_reference", "worse_than", "better_than", "layers", "phones",
                 "layer", "accuracy", "gap", "gap_ci_low", "gap_ci_high", "mde", "p_served_worse", "mechanism",
                 "p_systematic", "p_random", "evidence", "share_systematic", "share_ci_low", "share_ci_high",
                 "in_group_benefit", "igb_ci_low", "igb_ci_high", "representational", "baseline_reading",
                 "amplification", "amplification_ci_low", "amplification_ci_high", "sentence")


def headline(audit: Audit, *, complete_only: bool = False) -> dict[str, Any]:
    """JSON-able headline per encoder (see the module docstring); ``complete_only``: encoders whose analysis is
    not computed yet are skipped rather than computed."""
    from phonefair.analysis import headline_layer

    out: dict[str, Any] = {"encoders": {}, "warnings": [], "baseline": audit.baseline}
    for enc in audit.encoders:
        if complete_only and not audit.has(enc, "typology"):
            continue
        probes = audit.probes(enc)
        sa = probes["speaker_accuracy"]
        best = headline_layer(sa)
        served = audit.served(enc)
        v = audit.verdicts(enc)
        layer_acc = sa.assign(layer=sa["layer"].astype(str)).groupby("layer")["standardized_accuracy"].mean()
        design = audit.design(enc)
        out["encoders"][enc] = {
            "headline_layer": best,
            "overall_accuracy": _f(layer_acc.get(best)) if best is not None else None,
            "chance_accuracy": _f(_majority(design)),
            "groups": design.group_names, "reference": design.reference,
            "served_worse": [str(g) for g in v.loc[v["served_worse"], "group"]],
            "verdicts": [{k: (_f(r[k]) if isinstance(r[k], (float, np.floating)) else
                              (None if r[k] is None else str(r[k]) if not isinstance(r[k], (bool, np.bool_))
                               else bool(r[k])))
                          for k in _VERDICT_KEYS if k in r}
                         for r in v.to_dict("records")],
            "versus": _versus(served.pairwise, v),
            "family": served.info, "warnings": list(design.warnings) + list(served.warnings),
            "design": design.summary(),
        }
        out["warnings"] += [f"{enc}: {w}" for w in list(design.warnings) + list(served.warnings)]
        notes = audit.typology(enc).provenance.get("notes", [])
        out["warnings"] += [f"{enc}: {n}" for n in notes]
    return out


def _versus(pairwise: Any, verdicts: Any) -> dict[str, list[dict[str, Any]]]:
    """Per group served worse: its accuracy difference to each group it is served worse than, at its verdict
    layer, with the Welch interval and the family-wise adjusted p (the pairwise numbers behind "served worse
    than"; the consensus gap can be small or even negative when a group is worse than one group only)."""
    out: dict[str, list[dict[str, Any]]] = {}
    pw = pairwise.assign(layer=pairwise["layer"].astype(str))
    for r in verdicts.to_dict("records"):
        if not r["served_worse"] or not isinstance(r.get("worse_than"), str):
            continue
        others = [x.strip() for x in r["worse_than"].split(",") if x.strip()]
        rows = pw[(pw["group"] == r["group"]) & pw["other"].isin(others) & (pw["layer"] == str(r["layer"]))]
        out[str(r["group"])] = [{"other": str(x["other"]), "difference": _f(x["difference"]),
                                 "ci_low": _f(x["ci_low"]), "ci_high": _f(x["ci_high"]),
                                 "p_adjusted": _f(x["p_adjusted"]), "layer": str(x["layer"])}
                                for x in rows.to_dict("records")]
    return out


def _majority(design: Any) -> float:
    counts = np.bincount(design.tokens["phone_idx"], minlength=len(design.phones))
    return float(counts.max() / counts.sum()) if counts.sum() else float("nan")


def headline_lines(summary: Mapping[str, Any]) -> list[str]:
    """A few terminal lines: per encoder the headline layer, then one sentence per group."""
    lines = []
    for name, s in (summary.get("encoders") or {}).items():
        acc = s.get("overall_accuracy")
        head = f"{name}: headline layer {s.get('headline_layer')}"
        if acc is not None:
            head += f", accuracy {100 * acc:.1f} %"
        chance = s.get("chance_accuracy")
        if chance is not None:
            head += f" (majority class {100 * chance:.1f} %)"
        lines.append(head)
        for v in s.get("verdicts", []):
            lines.append(f"  {v.get('sentence')}")
    for w in summary.get("warnings", []):
        lines.append(f"warning: {w}")
    return lines
