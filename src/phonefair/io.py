"""Saving and loading result tables: one Parquet file per table plus a JSON metadata file.

Provenance is kept once, in the JSON file (Parquet metadata cannot hold arbitrary Python objects), and put back
on every table's ``attrs["provenance"]`` when loading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays, sets and tuples; anything else as ``str``."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN / inf float (and pandas' missing values) replaced by ``None``, numpy scalars made
    Python ones: what ``json.dumps(..., allow_nan=False)`` accepts. Bare ``NaN`` is not JSON; jq and browsers
    refuse files holding it."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset, np.ndarray)):
        return [strict_json(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    return str(obj)


def dumps_strict(obj: Any, **kw: Any) -> str:
    """``json.dumps`` of :func:`strict_json` (``allow_nan=False``: a non-finite value that slipped through fails
    here, not in a reader)."""
    return json.dumps(strict_json(obj), allow_nan=False, **kw)


def save_tables(directory: str | os.PathLike[str], tables: Mapping[str, pd.DataFrame], *, fmt: str,
                meta: Mapping[str, Any]) -> Path:
    """Write ``<name>.parquet`` per table, then ``<fmt>.json`` (``{"format": "phonefair.<fmt>", "tables": [...],
    **meta}``) last, so a directory without the JSON file is an incomplete save."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        plain = df.copy()
        plain.attrs = {}
        plain.to_parquet(out / f"{name}.parquet", index=False)
    doc = {"format": f"phonefair.{fmt}", "version": 1, "tables": list(tables), **meta}
    tmp = out / f".{fmt}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=json_default))
    os.replace(tmp, out / f"{fmt}.json")
    return out


def load_tables(directory: str | os.PathLike[str], *, fmt: str, provenance_key: str = "provenance"
                ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Read what :func:`save_tables` wrote: ``(tables, meta)``; each table gets ``attrs["provenance"]``."""
    d = Path(directory)
    meta_path = d / f"{fmt}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a saved phonefair {fmt} directory ({fmt}.json missing)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != f"phonefair.{fmt}":
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not 'phonefair.{fmt}'")
    prov = meta.get(provenance_key, {})
    tables = {}
    for name in meta["tables"]:
        df = pd.read_parquet(d / f"{name}.parquet")
        df.attrs = {"provenance": {**prov, "table": name}}
        tables[name] = df
    return tables, meta


@dataclass
class ResultTables:
    """Base of a stage's result object: named tidy tables (``.tables()``, ``result["name"]``) plus provenance."""

    table_map: dict[str, pd.DataFrame]
    provenance: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The result tables by name, each with ``attrs["provenance"]``."""
        return dict(self.table_map)

    def __getitem__(self, name: str) -> pd.DataFrame:
        try:
            return self.table_map[name]
        except KeyError:
            raise KeyError(f"no table {name!r}; available: {list(self.table_map)}") from None
