"""The on-disk embedding store: one memory-mappable ``.npy`` per layer, rows aligned with the corpus phone table.

Layout of one store (``root/<key>/``)::

    layer_<name>.npy     [N, D] float16 (default) or float32, one file per layer; read with np.load(mmap_mode="r")
    tokens.parquet       the corpus phone table (row i <-> row i of every layer)
    allocated.json       written once every layer file is preallocated (before any utterance is processed)
    journal.jsonl        progress journal: one line per commit, listing finished utterances (fsynced after the rows)
    problems.parquet     utterances that could not be embedded (their rows are NaN)
    provenance.json      model, layers, pooling, frame rule, dtype, normalisation, corpus fingerprint, counts, versions
    COMPLETE             completion marker, written last; a store without it is never opened as complete
    .lock                fcntl.flock-ed by the writing process

``key`` is a content hash of everything that determines the numbers (see :func:`store_key`), so asking for the same
extraction again finds the finished store, and changing e.g. pooling or layers gives a new one.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair.corpus.schema import problems_frame
from phonefair.store.base import LayerName

STORE_VERSION = 1
COMPLETE = "COMPLETE"
_DTYPES = ("float16", "float32")


class StoreError(RuntimeError):
    """An embedding store is missing, incomplete, locked or inconsistent. The message names the path."""


class StoreLockedError(StoreError):
    """Another process holds the store's lock."""


def store_key(fields: Mapping[str, Any]) -> str:
    """Content hash (20 hex digits) of the JSON-canonicalised ``fields`` plus :data:`STORE_VERSION`."""
    blob = json.dumps({"store_version": STORE_VERSION, **fields}, sort_keys=True, default=str,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _layer_file(directory: Path, layer: str) -> Path:
    return directory / f"layer_{layer}.npy"


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def npy_data_offset(path: str | os.PathLike[str]) -> tuple[int, tuple[int, ...], np.dtype[Any]]:
    """``(byte offset of the data, shape, dtype)`` of a ``.npy`` file, from its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
        return f.tell(), shape, dtype


class EmbeddingStore:
    """A finished store, opened read-only. Implements :class:`phonefair.store.base.EmbeddingSource`.

    ``read(layer, rows)`` memory-maps only that layer's file; ``tokens`` is the corpus phone table.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not (self.path / COMPLETE).exists():
            what = "an interrupted extraction (rerun extract() to resume it)" if self.path.is_dir() else "missing"
            raise StoreError(f"{self.path}: not a complete embedding store ({what})")
        self.provenance: dict[str, Any] = json.loads((self.path / "provenance.json").read_text())
        self.layers: list[LayerName] = list(self.provenance["layers"])
        self.tokens: pd.DataFrame = pd.read_parquet(self.path / "tokens.parquet")
        self.tokens.attrs["provenance"] = {"embedding_store": str(self.path), "key": self.key}
        pp = self.path / "problems.parquet"
        self.problems: pd.DataFrame = pd.read_parquet(pp) if pp.exists() else problems_frame([])
        self._mm: dict[str, np.ndarray] = {}

    @property
    def key(self) -> str:
        return self.path.name

    def array(self, layer: LayerName) -> np.ndarray:
        """The raw memory-mapped ``[N, D]`` array of one layer (stored dtype, read-only)."""
        layer = str(layer)
        if layer not in self.layers:
            raise KeyError(f"no layer {layer!r} in {self.path}; available: {self.layers}")
        if layer not in self._mm:
            mm = np.load(_layer_file(self.path, layer), mmap_mode="r")
            if mm.shape[0] != len(self.tokens):
                raise StoreError(f"{_layer_file(self.path, layer)}: {mm.shape[0]} rows but {len(self.tokens)} tokens")
            self._mm[layer] = mm
        return self._mm[layer]

    def read(self, layer: LayerName, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 ``[len(rows), D]`` (all rows when ``rows`` is None); only this layer's file is touched."""
        mm = self.array(layer)
        if rows is None:
            return np.asarray(mm, dtype=np.float32)
        r = np.asarray(rows)
        if r.dtype == bool:  # a boolean mask over tokens, not row numbers
            if r.shape != (mm.shape[0],):
                raise ValueError(f"boolean rows must have length {mm.shape[0]}, got {r.shape}")
            r = np.flatnonzero(r)
        out = mm[r.astype(np.int64)]
        return np.asarray(out, dtype=np.float32)

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.provenance["dims"].items()}

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, {len(self.tokens)} tokens, layers={self.layers})"


def open_store(root: str | os.PathLike[str], key: str) -> EmbeddingStore | None:
    """The complete store ``root/key``, or None when it does not exist or is incomplete."""
    d = Path(root) / key
    return EmbeddingStore(d) if (d / COMPLETE).exists() else None


class StoreWriter:
    """Writes one store crash-safely; used by :func:`phonefair.extraction.extract`.

    Protocol: ``with StoreWriter(...) as w``: ``w.done`` (utterance indices finished, from the journal) -> for
    each remaining batch ``w.write_rows(...)`` then ``w.commit(utterance_indices, stats)`` ->
    ``w.finalize(provenance, problems)``. Rows are written with ``os.pwrite`` into preallocated ``.npy`` files (no
    long-lived memory map, so resident memory does not grow with the store) and fsynced before the journal line
    that declares them done is appended and fsynced. After a crash the journal lists only utterances whose rows are
    on disk; anything else is recomputed and overwritten.
    """

    def __init__(self, root: str | os.PathLike[str], key: str, *, tokens: pd.DataFrame, dims: Mapping[str, int],
                 dtype: str = "float16", lock_timeout: float | None = None) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"store dtype must be one of {_DTYPES}, got {dtype!r}")
        self.dir = Path(root) / key
        self.key = key
        self.tokens = tokens
        self.dims = {str(k): int(v) for k, v in dims.items()}
        self.dtype = np.dtype(dtype)
        self.n = len(tokens)
        self.lock_timeout = lock_timeout
        self._lock_fd: int | None = None
        self._fds: dict[str, tuple[int, int]] = {}
        self.done: set[int] = set()
        self.batch_stats: list[dict[str, Any]] = []

    # --- lifecycle ----------------------------------------------------------------------------------------
    def __enter__(self) -> StoreWriter:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            if not (self.dir / COMPLETE).exists():
                self._prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def complete(self) -> bool:
        return (self.dir / COMPLETE).exists()

    def _lock(self) -> None:
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.lock_timeout is None else time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreLockedError(
                        f"{self.dir}: another process is writing this embedding store (lock {self.dir / '.lock'} "
                        f"held; waited {self.lock_timeout} s). Wait for it to finish, or pass a larger "
                        f"lock_timeout (None = wait indefinitely)") from None
                time.sleep(0.1)  # another writer is busy; it finishes or dies (flock is released on exit)
        self._lock_fd = fd

    def close(self) -> None:
        for fd, _ in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- allocation / resume ------------------------------------------------------------------------------
    def _alloc_spec(self) -> dict[str, Any]:
        return {"key": self.key, "n_rows": self.n, "dims": self.dims, "dtype": self.dtype.name}

    def _prepare(self) -> None:
        alloc = self.dir / "allocated.json"
        spec = self._alloc_spec()
        if alloc.exists() and json.loads(alloc.read_text()) == spec:
            self._read_journal()
        else:
            for p in (alloc, self.dir / "journal.jsonl"):
                p.unlink(missing_ok=True)
            tmp = self.dir / ".tokens.parquet.tmp"
            self.tokens.to_parquet(tmp, index=False)
            os.replace(tmp, self.dir / "tokens.parquet")
            for layer, dim in self.dims.items():
                # open_memmap writes the header and extends the file (sparse); rows are filled by pwrite later
                mm = np.lib.format.open_memmap(_layer_file(self.dir, layer), mode="w+", dtype=self.dtype,
                                               shape=(self.n, dim))
                del mm
            _atomic_write(alloc, json.dumps(spec))
        for layer, dim in self.dims.items():
            path = _layer_file(self.dir, layer)
            offset, shape, dt = npy_data_offset(path)
            if shape != (self.n, dim) or dt != self.dtype:
                raise StoreError(f"{path}: shape {shape} / dtype {dt} does not match ({self.n}, {dim}) {self.dtype}")
            self._fds[layer] = (os.open(path, os.O_RDWR), offset)

    def _read_journal(self) -> None:
        path = self.dir / "journal.jsonl"
        if not path.exists():
            return
        good: list[str] = []
        for line in path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # torn last line from a crash mid-append: that commit never happened
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            good.append(line)
            self.done.update(int(b) for b in rec["done"])
            self.batch_stats.append(rec["stats"])
        # rewrite without any torn tail so later appends start on a clean line
        _atomic_write(path, "".join(good))

    # --- writing ------------------------------------------------------------------------------------------
    def write_rows(self, layer: str, lo: int, values: np.ndarray) -> None:
        """Write ``values`` ``[k, D]`` into rows ``lo .. lo+k`` of ``layer``."""
        fd, offset = self._fds[layer]
        dim = self.dims[layer]
        if values.ndim != 2 or values.shape[1] != dim or lo < 0 or lo + values.shape[0] > self.n:
            raise StoreError(f"layer {layer!r}: cannot write {values.shape} at row {lo} of ({self.n}, {dim})")
        with np.errstate(over="ignore"):  # float16 overflow is counted (and warned about) by extract()
            buf = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        pos = offset + lo * dim * self.dtype.itemsize
        while buf:  # pwrite may write less than asked
            k = os.pwrite(fd, buf, pos)
            buf, pos = buf[k:], pos + k

    def commit(self, items: Sequence[int], stats: Mapping[str, Any]) -> None:
        """Make the rows written so far durable, then record ``items`` (utterance indices) as done."""
        for fd, _ in self._fds.values():
            os.fsync(fd)
        line = json.dumps({"done": [int(b) for b in items], "stats": dict(stats)}, default=str) + "\n"
        with open(self.dir / "journal.jsonl", "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.done.update(int(b) for b in items)
        self.batch_stats.append(dict(stats))

    def finalize(self, provenance: Mapping[str, Any], problems: pd.DataFrame) -> EmbeddingStore:
        """Write problems, provenance and finally the completion marker; return the opened store."""
        for fd, _ in self._fds.values():
            os.fsync(fd)
        tmp = self.dir / ".problems.parquet.tmp"
        problems.to_parquet(tmp, index=False)
        os.replace(tmp, self.dir / "problems.parquet")
        prov = {**provenance, "key": self.key, "dims": self.dims, "dtype": self.dtype.name, "n_rows": self.n,
                "layers": list(self.dims), "store_version": STORE_VERSION}
        _atomic_write(self.dir / "provenance.json", json.dumps(prov, indent=2, default=str))
        _atomic_write(self.dir / COMPLETE, json.dumps({"key": self.key, "n_rows": self.n}))
        return EmbeddingStore(self.dir)
