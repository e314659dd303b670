"""Every table of an :class:`~phonefair.audit.Audit`, the encoders' rows stacked with an ``encoder`` column."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from phonefair.audit import Audit

__all__ = ["collect_tables", "stack"]

#: the typology's own exclusions are kept apart from the corpus's ``problems`` table
_RENAME = {"problems": "analysis_problems"}


def stack(per_encoder: dict[str, dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """``{encoder: {table: df}}`` → ``{table: df with an encoder column}`` (provenance kept per encoder)."""
    names = list(dict.fromkeys(n for t in per_encoder.values() for n in t))
    out: dict[str, pd.DataFrame] = {}
    for n in names:
        parts = [t[n].assign(encoder=enc) for enc, t in per_encoder.items() if n in t]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        df.attrs["provenance"] = {enc: t[n].attrs.get("provenance", {}) for enc, t in per_encoder.items() if n in t}
        out[n] = df
    return out


def collect_tables(audit: Audit, *, complete_only: bool = False) -> dict[str, pd.DataFrame]:
    """Every table of every encoder; ``complete_only``: only stages already computed (nothing is computed)."""
    per: dict[str, dict[str, pd.DataFrame]] = {}
    for enc in audit.encoders:
        t: dict[str, Any] = {}
        if not complete_only or audit.has(enc, "probes"):
            t.update(audit.probes(enc).tables())
        if not complete_only or audit.has(enc, "served"):
            s = audit.served(enc)
            t["group_accuracy"] = s.gaps
            t["pairwise_accuracy"] = s.pairwise
            t["phone_gaps"] = audit.phone_gaps(enc)
        if not complete_only or audit.has(enc, "typology"):
            for k, v in audit.typology(enc).tables().items():
                t[_RENAME.get(k, k)] = v
            t["verdict"] = audit.verdicts(enc)
        if audit.baseline is not None and enc != audit.baseline and (
                not complete_only or (audit.has(enc, "probes") and audit.has(audit.baseline, "probes"))):
            b = audit.amplification(enc).tables()
            t["baseline_gaps"], t["amplification"] = b["gaps"], b["amplification"]
        if audit.has(enc, "identity"):
            for k, v in audit.identity(enc).tables().items():
                if k == "phone_gap":  # the lenses' own gap at the removal layers; group_accuracy has every layer
                    continue
                t["identity_problems" if k == "problems" else k] = v
        per[enc] = t
    return stack(per)
