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


def resolve_path(path: str | os.PathLike[str], base: str | os.PathLike[str] | None) -> str:
    """``path`` as an absolute path; a relative one is taken relative to ``base`` (a config file's folder), never
    to the current directory."""
    p = Path(path).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return str(p.resolve()) if (base is not None or p.is_absolute()) else str(p)


def temp_path(final: Path) -> Path:
    """A temporary name next to ``final`` that no other process uses (concurrent runs on one folder)."""
    import uuid

    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def json_strict(o: Any) -> Any:
    """:func:`json_default` plus what settings and summaries hold (dataclasses, mappings, paths, pandas NA);
    non-finite numbers become ``null``, so every JSON file phonefair writes is strict JSON."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(o) and not isinstance(o, type):
        return asdict(o)
    if isinstance(o, Mapping):
        return dict(o)
    if isinstance(o, (np.floating, float)) and not np.isfinite(o):
        return None
    if o is pd.NA or o is pd.NaT:
        return None
    if isinstance(o, (Path, pd.Timestamp)):
        return str(o)
    return json_default(o)


def to_json(obj: Any) -> str:
    """Strict JSON text (NaN/inf → null) of settings, summaries and provenance."""
    return dumps_strict(json.loads(json.dumps(obj, default=json_strict)), indent=2)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write strict JSON atomically (a unique temporary file, then a rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(p)
    try:
        tmp.write_text(to_json(obj))
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def write_table(df: pd.DataFrame, path_stem: str | os.PathLike[str], *, csv: bool = True) -> list[Path]:
    """``<stem>.parquet`` (+ ``<stem>.csv``), each written atomically. Provenance stays in ``attrs`` only
    (it goes to JSON sidecars / manifests), so Parquet metadata holds data, never objects."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    plain = df.copy()
    plain.attrs = {}
    out = []
    for ext in (("parquet", "csv") if csv else ("parquet",)):
        final = stem.with_name(f"{stem.name}.{ext}")
        tmp = temp_path(final)
        try:
            if ext == "parquet":
                plain.to_parquet(tmp, index=False)
            else:
                plain.to_csv(tmp, index=False)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        out.append(final)
    return out


def save_tables(directory: str | os.PathLike[str], tables: Mapping[str, pd.DataFrame], *, fmt: str,
                meta: Mapping[str, Any]) -> Path:
    """Write ``<name>.parquet`` per table, then ``<fmt>.json`` (``{"format": "phonefair.<fmt>", "tables": [...],
    **meta}``) last, so a directory without the JSON file is an incomplete save."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        write_table(df, out / name, csv=False)
    write_json(out / f"{fmt}.json", {"format": f"phonefair.{fmt}", "version": 1, "tables": list(tables), **meta})
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
