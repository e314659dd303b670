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


def headline(audit: Audit, *, complete_only: bool = False) -> dict[str, Any]:
    """JSON-able headline per encoder (see the module docstring); ``complete_only``: encoders whose analysis is
    not computed yet are skipped rather than computed."""
    from phonefair.analysis import headline_layer

    out: dict[str, Any] = {"encoders": {}, "warnings": []}
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
                          for k in ("group", "verdict", "served_worse", "worse_than", "layers", "phones", "layer", "accuracy",
                                    "gap", "gap_ci_low", "gap_ci_high", "mde", "p_served_worse", "mechanism",
                                    "p_systematic", "p_random", "share_systematic", "share_ci_low", "share_ci_high",
                                    "in_group_benefit", "igb_ci_low", "igb_ci_high", "representational",
                                    "sentence")}
                         for r in v.to_dict("records")],
            "family": served.info, "warnings": list(design.warnings) + list(served.warnings),
            "design": design.summary(),
        }
        out["warnings"] += [f"{enc}: {w}" for w in list(design.warnings) + list(served.warnings)]
        notes = audit.typology(enc).provenance.get("notes", [])
        out["warnings"] += [f"{enc}: {n}" for n in notes]
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
