"""The stage cache: ``out/cache/<stage>/<key>/`` holds a stage's tables (Parquet) and metadata (JSON), data only.

A stage writes into a uniquely named temporary folder, writes ``COMPLETE.json`` last and renames the folder into
place, so an interrupted stage never looks complete, two concurrent runs never share a temporary name, and a rerun
recomputes exactly the stages whose inputs or settings changed. Nothing in an output folder is ever executed on
reading (no pickle): a results folder received from someone else is safe to open.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from phonefair.io import json_strict, write_json, write_table

__all__ = ["StageCache", "cache_key", "MARKER"]

MARKER = "COMPLETE.json"


def cache_key(*parts: Any) -> str:
    """Stable short hash of JSON-able settings and fingerprints (the cache key)."""
    blob = json.dumps(parts, sort_keys=True, default=json_strict).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class StageCache:
    """``root/cache/<stage>/<key>/``: tables as Parquet, metadata as JSON, ``COMPLETE.json`` last."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "cache"

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def complete(self, stage: str, key: str) -> bool:
        return (self.dir(stage, key) / MARKER).is_file()

    def save(self, stage: str, key: str, tables: Mapping[str, pd.DataFrame], meta: Mapping[str, Any]) -> Path:
        final = self.dir(stage, key)
        tmp = final.with_name(f".{key}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir(parents=True)
        try:
            provs = {}
            for name, df in tables.items():
                write_table(df, tmp / name, csv=False)
                provs[name] = df.attrs.get("provenance", {})
            write_json(tmp / MARKER, {"stage": stage, "key": key, "tables": list(tables), "provenance": provs,
                                      "meta": dict(meta), "finished": time.time()})
            if final.exists():  # a finished copy from a concurrent run, or an interrupted leftover
                if (final / MARKER).is_file():
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:  # another process renamed its copy into place first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def load(self, stage: str, key: str) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
        d = self.dir(stage, key)
        marker = json.loads((d / MARKER).read_text())
        tables = {}
        for name in marker["tables"]:
            df = pd.read_parquet(d / f"{name}.parquet")
            df.attrs["provenance"] = marker["provenance"].get(name, {})
            tables[name] = df
        return tables, marker.get("meta", {})
