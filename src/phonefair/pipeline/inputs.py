"""Fingerprints of the files a corpus was read from, so a cached result never outlives its data.

Every file under the corpus root and every path-valued loader option (a speaker table elsewhere) is fingerprinted:
small files (≤ 256 KiB: alignments, speaker tables, transcripts) by a hash of their content; larger ones (audio) by
size, modification time and a hash of their first 64 KiB, which is cheap on corpora of many thousands of files and
catches replaced, truncated and re-encoded audio. The corpus stage's cache key includes the hash of all of them,
the recordings table carries each recording's audio fingerprint (so extraction stores are keyed by the audio too),
and a rerun says which files changed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["file_fingerprint", "input_fingerprints", "describe_changes", "fingerprint_hash"]

SMALL = 256 * 1024
HEAD = 64 * 1024
_SKIP_DIRS = {".git", "__pycache__", ".ipynb_checkpoints"}


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """``size:mtime_ns:hash`` of a file (see the module docstring); ``"missing"`` when it does not exist."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return "missing"
    h = hashlib.blake2b(digest_size=12)
    with open(p, "rb") as f:
        if st.st_size <= SMALL:
            h.update(f.read())
            return f"{st.st_size}:{h.hexdigest()}"
        h.update(f.read(HEAD))
    return f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()}"


def input_fingerprints(root: str | os.PathLike[str] | None, options: Mapping[str, Any] | None = None,
                       exclude: Path | None = None) -> dict[str, str]:
    """``{path: fingerprint}`` of every file under ``root`` (relative paths) and of path-valued ``options``
    (absolute paths). ``exclude``: a folder not to walk (the run's own output folder inside the corpus)."""
    out: dict[str, str] = {}
    if root is not None and Path(root).is_dir():
        base = Path(root)
        ex = exclude.resolve() if exclude is not None else None
        for dirpath, dirnames, filenames in os.walk(base):
            d = Path(dirpath)
            if ex is not None and (d.resolve() == ex or ex in d.resolve().parents):
                dirnames[:] = []
                continue
            dirnames[:] = sorted(x for x in dirnames if x not in _SKIP_DIRS)
            for name in sorted(filenames):
                fp = d / name
                out[str(fp.relative_to(base))] = file_fingerprint(fp)
    elif root is not None and Path(root).is_file():
        out[str(root)] = file_fingerprint(root)
    for key, value in (options or {}).items():
        if isinstance(value, (str, os.PathLike)) and Path(value).is_absolute() and Path(value).exists():
            if Path(value).is_file():
                out[f"[option {key}] {value}"] = file_fingerprint(value)
    return out


def fingerprint_hash(fps: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(fps):
        h.update(f"{k}\0{fps[k]}\n".encode())
    return h.hexdigest()[:16]


def describe_changes(old: Mapping[str, str], new: Mapping[str, str], limit: int = 5) -> str:
    """A short human-readable list of what changed between two fingerprint maps."""
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    parts = []
    for label, items in (("changed", changed), ("added", added), ("removed", removed)):
        if items:
            shown = ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
            parts.append(f"{len(items)} {label} ({shown})")
    return "; ".join(parts) or "no file changed"
