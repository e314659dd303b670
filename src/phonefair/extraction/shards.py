"""Static sharding for clusters without Ray (SLURM arrays, ``torchrun``): ``extract_shard`` + ``merge_shards``.

Each of N processes runs :func:`extract_shard` with its own ``shard`` index; shard ``i`` owns a contiguous range of
*local batches* (batch ``b`` = utterances ``b*batch_size ...``, exactly as :func:`~phonefair.extraction.extract`
forms them), so every forward pass is the one a single-process run makes and the merged store is bit-identical
to it. A shard is itself a small crash-safe store (same writer and journal, rows rebased to the shard's range)::

    <store_root>/<key>/shards/shard_0003-of-0008/
        layer_<name>.npy, tokens.parquet (the shard's phone rows), journal.jsonl, problems.parquet,
        plan.json (the shard's batch / utterance / row range), provenance.json (+ "sha256" of every layer's
        data bytes and the shard's raw counts), COMPLETE

A finished shard is skipped on rerun; an interrupted one resumes from its journal. :func:`merge_shards` checks
that every shard is complete, that the shard ranges cover every row exactly once and that each layer's bytes
still match the shard's checksum, copies the rows into the final store's preallocated files (journalled per shard,
so an interrupted merge resumes), verifies the merged bytes against the same checksums and writes provenance and
``COMPLETE`` last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair.corpus.schema import Corpus, problems_frame
from phonefair.encoders.base import Encoder
from phonefair.extraction.loop import (BatchPlan, audio_sources, empty_stats, finish_store, merge_stats,
                                       new_timings, phone_times, prepare, utterance_plan, write_batches)
from phonefair.store.disk import COMPLETE, EmbeddingStore, StoreError, StoreWriter, npy_data_offset, open_store

SHARDS_DIR = "shards"
BALANCES = ("duration", "index")
_CHUNK_BYTES = 64 << 20  # merge copies at most this much of one layer at a time (flat memory on big stores)


def shard_name(shard: int, num_shards: int) -> str:
    """``shard_0003-of-0008``."""
    return f"shard_{shard:04d}-of-{num_shards:04d}"


def plan_shards(corpus: Corpus, num_shards: int, *, batch_size: int = 8, balance: str = "duration") -> pd.DataFrame:
    """Split the corpus's extraction batches into ``num_shards`` contiguous ranges.

    One row per shard: ``shard, batch_lo, batch_hi, utt_lo, utt_hi, row_lo, row_hi, audio_seconds`` (half-open
    ranges; a shard may be empty when there are fewer batches than shards). ``balance="duration"`` cuts where the
    cumulative audio duration (recordings table ``duration``; the last phone's end when missing) crosses
    ``i/N`` of the total; ``"index"`` gives every shard the same number of batches (±1). Deterministic: every
    process of an array job computes the same plan.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if balance not in BALANCES:
        raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
    utts = utterance_plan(corpus)
    n_utt = len(utts)
    n_batches = (n_utt + batch_size - 1) // batch_size
    dur = _utterance_seconds(corpus, utts)
    bdur = np.add.reduceat(dur, np.arange(0, n_utt, batch_size)) if n_utt else np.zeros(0)
    if balance == "duration" and n_batches and bdur.sum() > 0:
        cum = np.concatenate([[0.0], np.cumsum(bdur)])
        targets = cum[-1] * np.arange(1, num_shards) / num_shards
        cuts = np.searchsorted(cum, targets, side="left")  # first batch boundary at or past each target
    else:
        cuts = (np.arange(1, num_shards) * n_batches) // num_shards
    edges = np.concatenate([[0], np.clip(cuts, 0, n_batches), [n_batches]]).astype(np.int64)
    edges = np.maximum.accumulate(edges)
    row_of_utt = np.concatenate([utts["row_lo"].to_numpy(dtype=np.int64), [len(corpus.phones)]])
    rows = []
    for i in range(num_shards):
        b_lo, b_hi = int(edges[i]), int(edges[i + 1])
        u_lo, u_hi = min(b_lo * batch_size, n_utt), min(b_hi * batch_size, n_utt)
        rows.append({"shard": i, "batch_lo": b_lo, "batch_hi": b_hi, "utt_lo": u_lo, "utt_hi": u_hi,
                     "row_lo": int(row_of_utt[u_lo]), "row_hi": int(row_of_utt[u_hi]),
                     "audio_seconds": round(float(dur[u_lo:u_hi].sum()), 3)})
    if n_utt:  # the first utterance may start after phone rows of no recording: impossible (rows are per recording)
        rows[0]["row_lo"] = 0
    plan = pd.DataFrame(rows)
    plan.attrs["provenance"] = {"num_shards": num_shards, "batch_size": batch_size, "balance": balance,
                                "corpus_fingerprint": corpus.fingerprint(), "n_utterances": n_utt,
                                "n_rows": len(corpus.phones)}
    return plan


def _utterance_seconds(corpus: Corpus, utts: pd.DataFrame) -> np.ndarray:
    rec_dur = corpus.recordings.set_index(corpus.recordings["recording_id"].astype(str))["duration"]
    d = pd.to_numeric(rec_dur.reindex(utts["recording_id"]), errors="coerce").to_numpy(dtype=np.float64)
    ends = pd.to_numeric(corpus.phones["end"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    hi = utts["row_hi"].to_numpy(dtype=np.int64)
    last_end = ends[hi - 1] if len(hi) else np.zeros(0)
    d = np.where(np.isfinite(d), d, last_end)
    return np.where(np.isfinite(d) & (d > 0), d, 0.0)


class _OffsetSink:
    """Writes global phone rows into a shard store whose row 0 is global row ``offset``."""

    def __init__(self, w: StoreWriter, offset: int) -> None:
        self.w, self.offset = w, offset

    def write_rows(self, layer: str, lo: int, values: np.ndarray) -> None:
        self.w.write_rows(layer, lo - self.offset, values)


def _layer_sha256(path: Path) -> str:
    """SHA-256 of a ``.npy`` file's data bytes (header excluded, so it can be compared with a row range of the
    merged file)."""
    offset, _shape, _dt = npy_data_offset(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _plan_record(row: pd.Series, key: str, num_shards: int, batch_size: int, balance: str) -> dict[str, Any]:
    return {"store_key": key, "num_shards": num_shards, "batch_size": batch_size, "balance": balance,
            **{c: int(row[c]) for c in ("shard", "batch_lo", "batch_hi", "utt_lo", "utt_hi", "row_lo", "row_hi")}}


def extract_shard(corpus: Corpus, encoder: Encoder | str | os.PathLike[str], *, shard: int, num_shards: int,
                  store_root: str | os.PathLike[str], layers: str | int | Sequence[str | int] = "all",
                  pooling: str = "mean", dtype: str = "float16", batch_size: int = 8, balance: str = "duration",
                  progress: bool = True, device: str = "cpu", mix: bool = False, on_audio_error: str = "raise",
                  lock_timeout: float | None = None, commit_every_s: float = 10.0,
                  revision: str | None = None) -> Path:
    """Extract shard ``shard`` of ``num_shards`` (0-based) into ``<store_root>/<key>/shards/<shard_name>/``.

    Arguments as :func:`~phonefair.extraction.extract` (every shard and the merge must use the same ones, including
    ``batch_size`` and ``balance``). Idempotent: returns at once when the shard (or the merged store) is already
    complete; resumes an interrupted shard. Returns the shard directory.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
    t_start = time.perf_counter()
    setup = prepare(corpus, encoder, layers=layers, pooling=pooling, dtype=dtype, batch_size=batch_size,
                    device=device, mix=mix, on_audio_error=on_audio_error, revision=revision)
    key = setup.key
    shard_root = Path(store_root) / key / SHARDS_DIR
    sdir = shard_root / shard_name(shard, num_shards)
    if open_store(store_root, key) is not None:
        return sdir  # already merged: nothing to do
    plan = plan_shards(corpus, num_shards, batch_size=batch_size, balance=balance)
    rec = _plan_record(plan.iloc[shard], key, num_shards, batch_size, balance)
    sdir.mkdir(parents=True, exist_ok=True)
    plan_path = sdir / "plan.json"
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        if old != rec:
            raise StoreError(f"{plan_path}: this shard directory was written with another plan ({old}); now "
                             f"{rec}. Use the same batch_size/balance for every shard, or delete {sdir}")
    else:
        plan_path.write_text(json.dumps(rec))
    if (sdir / COMPLETE).exists():
        return sdir
    r_lo, r_hi = rec["row_lo"], rec["row_hi"]
    tokens = corpus.phones.iloc[r_lo:r_hi].reset_index(drop=True)
    if len(tokens) == 0:  # more shards than batches: an empty, trivially complete shard
        sdir.joinpath("provenance.json").write_text(json.dumps({"plan": rec, "sha256": {}, "stats": empty_stats(),
                                                                "timings_s": {}, "n_utterances_reused": 0}))
        sdir.joinpath(COMPLETE).write_text(json.dumps({"key": sdir.name, "n_rows": 0}))
        return sdir
    job = setup.job()
    batches = BatchPlan.of(corpus, batch_size)
    starts, ends = phone_times(corpus)
    timings = new_timings()
    with StoreWriter(shard_root, sdir.name, tokens=tokens, dims=job.dims, dtype=dtype,
                     lock_timeout=lock_timeout) as w:
        if w.complete:
            return sdir
        mine = range(rec["batch_lo"], rec["batch_hi"])
        todo = batches.unfinished(w.done, mine)
        n_reused = batches.n_utterances_in(mine) - batches.n_utterances_in(todo)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=rec["utt_hi"] - rec["utt_lo"], unit="utt", initial=n_reused,
                       desc=f"extract {Path(setup.encoder.model_id).name} {sdir.name}")
        write_batches(job, batches, todo, w, sources=audio_sources(corpus, mix=mix), starts=starts, ends=ends,
                      commit_every_s=commit_every_s, timings=timings, sink=_OffsetSink(w, r_lo), bar=bar)
        if bar is not None:
            bar.close()
        stats = merge_stats(w.batch_stats)
        problems = problems_frame(stats.pop("problems"))
        # checksums of what is on disk now (rows were fsynced by the commits), verified again by the merge
        sha = {layer: _layer_sha256(w.dir / f"layer_{layer}.npy") for layer in job.dims}
        prov = {"plan": rec, "sha256": sha, "stats": stats, "n_utterances_reused": n_reused,
                "timings_s": {k: round(v, 4) for k, v in timings.items()},
                "seconds": round(time.perf_counter() - t_start, 3), "host": os.uname().nodename,
                "pid": os.getpid()}
        w.finalize(prov, problems)
    return sdir


def shard_status(corpus: Corpus, encoder: Encoder | str | os.PathLike[str], *, store_root: str | os.PathLike[str],
                 num_shards: int, layers: str | int | Sequence[str | int] = "all", pooling: str = "mean",
                 dtype: str = "float16", batch_size: int = 8, balance: str = "duration", mix: bool = False,
                 on_audio_error: str = "raise", revision: str | None = None) -> pd.DataFrame:
    """The shard plan plus ``path`` and ``state`` (``"complete"`` | ``"partial"`` | ``"missing"``) per shard."""
    key = prepare(corpus, encoder, layers=layers, pooling=pooling, dtype=dtype, batch_size=batch_size,
                  device="cpu", mix=mix, on_audio_error=on_audio_error, revision=revision).key
    plan = plan_shards(corpus, num_shards, batch_size=batch_size, balance=balance)
    root = Path(store_root) / key / SHARDS_DIR
    paths = [root / shard_name(i, num_shards) for i in plan["shard"]]
    plan["path"] = [str(p) for p in paths]
    plan["state"] = ["complete" if (p / COMPLETE).exists() else "partial" if p.exists() else "missing"
                     for p in paths]
    plan.attrs["provenance"] = {**plan.attrs.get("provenance", {}), "store_key": key}
    return plan


def merge_shards(corpus: Corpus, encoder: Encoder | str | os.PathLike[str], *, store_root: str | os.PathLike[str],
                 num_shards: int, layers: str | int | Sequence[str | int] = "all", pooling: str = "mean",
                 dtype: str = "float16", batch_size: int = 8, balance: str = "duration", mix: bool = False,
                 on_audio_error: str = "raise", lock_timeout: float | None = None, revision: str | None = None,
                 remove_shards: bool = False) -> EmbeddingStore:
    """Assemble the ``num_shards`` shards into the final store ``<store_root>/<key>/`` and verify it.

    Arguments as for :func:`extract_shard`. Raises :class:`~phonefair.store.disk.StoreError` naming every missing or
    incomplete shard, a plan mismatch, a coverage gap/overlap, or a checksum mismatch (before and after copying).
    The model is never run (nor loaded). ``remove_shards=True`` deletes the shard directories after success.
    Returns the complete store, whose arrays, tokens and key equal those of a single-process ``extract``.
    """
    t_start = time.perf_counter()
    setup = prepare(corpus, encoder, layers=layers, pooling=pooling, dtype=dtype, batch_size=batch_size,
                    device="cpu", mix=mix, on_audio_error=on_audio_error, revision=revision)
    key = setup.key
    done = open_store(store_root, key)
    if done is not None:
        return done
    plan = plan_shards(corpus, num_shards, batch_size=batch_size, balance=balance)
    shard_root = Path(store_root) / key / SHARDS_DIR
    recs, provs, bad = [], [], []
    for _, row in plan.iterrows():
        sdir = shard_root / shard_name(int(row["shard"]), num_shards)
        if not (sdir / COMPLETE).exists():
            bad.append(f"{sdir} ({'partial' if sdir.exists() else 'missing'})")
            continue
        prov = json.loads((sdir / "provenance.json").read_text())
        want = _plan_record(row, key, num_shards, batch_size, balance)
        if prov["plan"] != want:
            raise StoreError(f"{sdir}: written for plan {prov['plan']}, expected {want}")
        recs.append(want)
        provs.append(prov)
    if bad:
        raise StoreError(f"cannot merge store {key}: {len(bad)} of {num_shards} shard(s) not complete: "
                         + "; ".join(bad) + ". Run extract_shard(...) for them (finished shards are skipped)")
    n_utts = len(utterance_plan(corpus))
    _check_coverage(recs, n_rows=len(corpus.phones), n_utts=n_utts, key=key)
    dims = setup.job().dims
    for rec, prov in zip(recs, provs, strict=True):
        if rec["row_hi"] > rec["row_lo"] and set(prov["sha256"]) != set(dims):
            raise StoreError(f"{shard_root / shard_name(rec['shard'], num_shards)}: layers {sorted(prov['sha256'])}"
                             f", expected {sorted(dims)}")
    with StoreWriter(store_root, key, tokens=corpus.phones, dims=dims, dtype=dtype, lock_timeout=lock_timeout) as w:
        if w.complete:
            return EmbeddingStore(w.dir)
        n_reused_merge = 0
        for rec, prov in zip(recs, provs, strict=True):
            items = list(range(rec["utt_lo"], rec["utt_hi"]))
            if items and all(i in w.done for i in items):
                n_reused_merge += 1
                continue  # copied by an interrupted merge (journalled): skip
            sdir = shard_root / shard_name(rec["shard"], num_shards)
            problems = pd.read_parquet(sdir / "problems.parquet") if rec["row_hi"] > rec["row_lo"] else None
            for layer in dims:
                if rec["row_hi"] == rec["row_lo"]:
                    break
                path = sdir / f"layer_{layer}.npy"
                got = _layer_sha256(path)
                if got != prov["sha256"][layer]:
                    raise StoreError(f"{path}: checksum {got[:16]}… differs from the one recorded when the shard "
                                     f"finished ({prov['sha256'][layer][:16]}…): the file changed or is corrupt; "
                                     f"delete {sdir} and rerun that shard")
                mm = np.load(path, mmap_mode="r")
                if mm.shape != (rec["row_hi"] - rec["row_lo"], dims[layer]) or mm.dtype != np.dtype(dtype):
                    raise StoreError(f"{path}: shape {mm.shape} {mm.dtype}, expected "
                                     f"({rec['row_hi'] - rec['row_lo']}, {dims[layer]}) {dtype}")
                step = max(1, _CHUNK_BYTES // max(1, mm.shape[1] * mm.dtype.itemsize))
                for a in range(0, mm.shape[0], step):
                    # already in the storage dtype: write_rows' cast is a no-op, bytes are copied unchanged
                    w.write_rows(layer, rec["row_lo"] + a, np.asarray(mm[a:a + step]))
                del mm
            stats = dict(prov["stats"])
            stats["problems"] = [] if problems is None else _records(problems)
            w.commit(items, stats)
        _verify_merged(w.dir, recs, dims, provs)
        timings = {k: round(sum(float(p.get("timings_s", {}).get(k, 0.0)) for p in provs), 4)
                   for k in new_timings()}
        backend = {"name": "shards", "num_shards": num_shards, "balance": balance,
                   "merge_seconds": round(time.perf_counter() - t_start, 3),
                   "shards": [{**r, "sha256": p["sha256"], "seconds": p.get("seconds"), "host": p.get("host")}
                              for r, p in zip(recs, provs, strict=True)]}
        store = finish_store(w, setup, corpus, n_utterances=n_utts, batch_size=batch_size,
                             resumed=any(p.get("n_utterances_reused", 0) for p in provs) or bool(n_reused_merge),
                             n_reused=sum(int(p.get("n_utterances_reused", 0)) for p in provs),
                             seconds=time.perf_counter() - t_start, timings=timings, backend=backend)
    if remove_shards:
        shutil.rmtree(shard_root)
    return store


def _records(problems: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in problems.to_dict("records")]


def _check_coverage(recs: list[dict[str, Any]], *, n_rows: int, n_utts: int, key: str) -> None:
    """Every row and utterance exactly once: the shard ranges must tile ``[0, n)`` in order."""
    row, utt = 0, 0
    for r in sorted(recs, key=lambda r: r["shard"]):
        if r["row_lo"] != row or r["utt_lo"] != utt or r["row_hi"] < r["row_lo"] or r["utt_hi"] < r["utt_lo"]:
            raise StoreError(f"store {key}: shard {r['shard']} covers rows [{r['row_lo']}, {r['row_hi']}) / "
                             f"utterances [{r['utt_lo']}, {r['utt_hi']}) but the next uncovered row is {row} / "
                             f"utterance {utt} (gap or overlap)")
        row, utt = r["row_hi"], r["utt_hi"]
    if row != n_rows or utt != n_utts:
        raise StoreError(f"store {key}: shards cover {row} of {n_rows} rows and {utt} of {n_utts} utterances")


def _verify_merged(directory: Path, recs: list[dict[str, Any]], dims: dict[str, int],
                   provs: list[dict[str, Any]]) -> None:
    """Re-hash each shard's row range in the merged files and compare with the shard's checksum."""
    for layer, dim in dims.items():
        path = directory / f"layer_{layer}.npy"
        offset, shape, dt = npy_data_offset(path)
        row_bytes = dim * dt.itemsize
        with open(path, "rb") as f:
            for rec, prov in zip(recs, provs, strict=True):
                if rec["row_hi"] == rec["row_lo"]:
                    continue
                f.seek(offset + rec["row_lo"] * row_bytes)
                left = (rec["row_hi"] - rec["row_lo"]) * row_bytes
                h = hashlib.sha256()
                while left:
                    chunk = f.read(min(left, _CHUNK_BYTES))
                    if not chunk:
                        raise StoreError(f"{path}: truncated (shape {shape})")
                    h.update(chunk)
                    left -= len(chunk)
                if h.hexdigest() != prov["sha256"][layer]:
                    raise StoreError(f"{path}: rows [{rec['row_lo']}, {rec['row_hi']}) differ from shard "
                                     f"{rec['shard']} after copying (checksum mismatch)")
