"""Stage results ↔ (tables, JSON metadata), for the pipeline's data-only cache."""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["save_stage", "load_stage"]


def save_stage(stage: str, result: Any) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """``probes`` → a :class:`~phonefair.probes.ProbeResults`; ``analyze`` → ``(ServedWorse, TypologyResults)``."""
    if stage in ("probes", "identity"):
        return dict(result.tables()), {"provenance": result.provenance}
    if stage == "analyze":
        served, typ = result
        tables = {f"typology.{k}": v for k, v in typ.tables().items()}
        tables.update({"served.gaps": served.gaps, "served.pairwise": served.pairwise,
                       "served.decisions": served.decisions})
        return tables, {"typology": typ.provenance, "served": {"warnings": served.warnings, "info": served.info}}
    raise ValueError(f"unknown stage {stage!r}")


def load_stage(stage: str, tables: dict[str, pd.DataFrame], meta: dict[str, Any]) -> Any:
    if stage == "probes":
        from phonefair.probes import ProbeResults

        return ProbeResults(table_map=tables, provenance=meta.get("provenance", {}))
    if stage == "identity":
        from phonefair.probes.identity import IdentityResults

        return IdentityResults(table_map=tables, provenance=meta.get("provenance", {}))
    if stage == "analyze":
        from phonefair.analysis import ServedWorse, TypologyResults

        typ = TypologyResults(table_map={k.split(".", 1)[1]: v for k, v in tables.items()
                                         if k.startswith("typology.")}, provenance=meta.get("typology", {}))
        dec = tables["served.decisions"]
        dec = dec.assign(peak_layer=dec["peak_layer"].astype(object).where(dec["peak_layer"].notna(), None))
        served = ServedWorse(gaps=tables["served.gaps"], pairwise=tables["served.pairwise"], decisions=dec,
                             warnings=list(meta.get("served", {}).get("warnings", [])),
                             info=dict(meta.get("served", {}).get("info", {})))
        return served, typ
    raise ValueError(f"unknown stage {stage!r}")
