"""The extraction loop: corpus + encoder -> a content-addressed, resumable on-disk :class:`EmbeddingStore`.

Utterances (recordings with at least one phone) are processed in phone-table order, in fixed batches of
``batch_size`` utterances (batch ``b`` = utterances ``b*batch_size ...``), so a resumed run forms exactly the same
batches as an uninterrupted one and writes identical numbers.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair.corpus.schema import Corpus, problems_frame
from phonefair.encoders.base import Encoder, parse_layers
from phonefair.extraction.frames import FRAME_RULE, POOLINGS, pool, pooling_ranges
from phonefair.store.disk import STORE_VERSION, EmbeddingStore, StoreWriter, open_store, store_key

#: test hook: "k" or "k:commit" makes the process os._exit(77) after k utterances were written (before their
#: commit) or right after the first commit that covers k utterances. Used to test crash recovery.
CRASH_ENV = "PHONEFAIR_TEST_CRASH_AFTER"


def _utterances(corpus: Corpus) -> pd.DataFrame:
    """One row per recording with phones: recording_id, row_lo, row_hi (phone rows are contiguous per recording)."""
    rid = corpus.phones["recording_id"].astype(str).to_numpy()
    if len(rid) == 0:
        return pd.DataFrame({"recording_id": [], "row_lo": [], "row_hi": []})
    change = np.flatnonzero(rid[1:] != rid[:-1]) + 1
    lo = np.concatenate([[0], change])
    hi = np.concatenate([change, [len(rid)]])
    utt = pd.DataFrame({"recording_id": rid[lo], "row_lo": lo, "row_hi": hi})
    if utt["recording_id"].duplicated().any():  # the Corpus constructor sorts phones, so this means a bug upstream
        raise ValueError("phone table rows of a recording are not contiguous")
    return utt


def _crash_hook() -> tuple[int, str] | None:
    v = os.environ.get(CRASH_ENV)
    if not v:
        return None
    k, _, point = v.partition(":")
    return int(k), point or "write"


def extraction_key(corpus: Corpus, encoder: Encoder, layers: Sequence[str], pooling: str, dtype: str,
                   mix: bool, on_audio_error: str) -> tuple[str, dict[str, Any]]:
    """The store key and the fields it hashes."""
    fields = {
        "encoder": encoder.identity(),
        "layers": list(layers),
        "pooling": pooling,
        "frame_rule": FRAME_RULE,
        "frame_grid": encoder.grid.as_dict(),
        "dtype": dtype,
        "corpus_fingerprint": corpus.fingerprint(),
        "mix": mix,
        "on_audio_error": on_audio_error,
        "store_version": STORE_VERSION,
    }
    return store_key(fields), fields


def extract(corpus: Corpus, encoder: Encoder | str | os.PathLike[str], *, store_root: str | os.PathLike[str],
            layers: str | int | Sequence[str | int] = "all", pooling: str = "mean", dtype: str = "float16",
            batch_size: int = 8, progress: bool = True, device: str = "cpu", mix: bool = False,
            on_audio_error: str = "raise", lock_timeout: float | None = None, commit_every_s: float = 10.0,
            revision: str | None = None) -> EmbeddingStore:
    """Pool encoder frames into one vector per phone token and layer, stored under ``store_root/<key>/``.

    ``encoder``: an :class:`~phonefair.encoders.base.Encoder` or a hub id / local directory (then loaded with
    ``load_encoder(encoder, revision=revision, layers=layers, device=device)``). ``layers`` selects among the
    encoder's layers. ``pooling``: ``"mean"`` | ``"center"`` | ``"middle_third"`` (see
    :func:`phonefair.extraction.frames.pooling_ranges`). ``dtype``: storage dtype (``"float16"`` | ``"float32"``).

    Returns the finished store; when a complete store with the same key exists it is returned at once without
    running (or loading) the model. An interrupted run is resumed from its journal. Every phone row is stored,
    including phones with ``phone`` <NA>. Phones beyond the audio are clamped to the last frame (counted in
    provenance ``n_phones_clamped``). Unreadable audio: ``on_audio_error="raise"`` stops with an error naming the
    file; ``"skip"`` writes NaN rows for that recording and a row in ``store.problems`` (never zeros).
    Audio shorter than one encoder frame (25 ms) or phones with non-finite times also give NaN rows + a problem.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
    if on_audio_error not in ("raise", "skip"):
        raise ValueError(f"on_audio_error must be 'raise' or 'skip', got {on_audio_error!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(encoder, (str, os.PathLike)):
        from phonefair.encoders.hf import load_encoder

        encoder = load_encoder(encoder, revision=revision, layers=layers, device=device)
        sel = list(encoder.layers)
    else:
        sel = parse_layers(layers, encoder.layers)
    key, fields = extraction_key(corpus, encoder, sel, pooling, dtype, mix, on_audio_error)
    done = open_store(store_root, key)
    if done is not None:
        return done

    utts = _utterances(corpus)
    n_batches = (len(utts) + batch_size - 1) // batch_size
    all_dims = encoder.layer_dims()
    dims = {k: all_dims[k] for k in sel}
    phones = corpus.phones
    starts = phones["start"].to_numpy(dtype=np.float64, na_value=np.nan)
    ends = phones["end"].to_numpy(dtype=np.float64, na_value=np.nan)
    rec = corpus.recordings.set_index("recording_id")
    crash = _crash_hook()
    timings = {"audio_read": 0.0, "forward": 0.0, "pooling": 0.0, "writing": 0.0}
    t_start = time.perf_counter()

    from phonefair.corpus.audio import read_audio

    with StoreWriter(store_root, key, tokens=phones, dims=dims, dtype=dtype, lock_timeout=lock_timeout) as w:
        if w.complete:  # another process finished it while we waited for the lock
            return EmbeddingStore(w.dir)
        todo = [b for b in range(n_batches) if b not in w.done_batches]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(utts), unit="utt", desc=f"extract {Path(encoder.model_id).name}",
                       initial=len(utts) - sum(min(batch_size, len(utts) - b * batch_size) for b in todo))
        total_h = corpus.hours
        done_s = 0.0
        pending: list[int] = []
        pending_stats: dict[str, Any] = _empty_stats()
        last_commit = time.monotonic()
        n_written = 0
        for b in todo:
            batch = utts.iloc[b * batch_size:(b + 1) * batch_size]
            waves: list[np.ndarray] = []
            ok: list[Any] = []
            t0 = time.perf_counter()
            for u in batch.itertuples(index=False):
                path = corpus.audio_path(u.recording_id)
                ch = rec.at[u.recording_id, "channel"] if u.recording_id in rec.index else pd.NA
                try:
                    x = read_audio(path, target_sr=16000, channel=None if pd.isna(ch) else int(ch), mix=mix)
                except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the file
                    if on_audio_error == "raise":
                        raise type(exc)(f"recording {u.recording_id!r} ({path}): {exc}") from exc
                    _nan_rows(w, dims, u.row_lo, u.row_hi)
                    pending_stats["n_nan_rows"] += int(u.row_hi - u.row_lo)
                    pending_stats["problems"].append(_problem(path, "audio_path", str(exc), u))
                    continue
                if encoder.num_frames(len(x)) == 0:
                    _nan_rows(w, dims, u.row_lo, u.row_hi)
                    pending_stats["n_nan_rows"] += int(u.row_hi - u.row_lo)
                    pending_stats["problems"].append(_problem(
                        path, "duration", f"{len(x)} samples at 16 kHz is shorter than one encoder frame", u))
                    continue
                waves.append(x)
                ok.append(u)
            t1 = time.perf_counter()
            results = encoder.frames_batch(waves) if waves else []
            t2 = time.perf_counter()
            t_pool = t_write = 0.0
            for u, x, fr in zip(ok, waves, results, strict=True):
                tp = time.perf_counter()
                n_fr = encoder.num_frames(len(x))
                if len(x) > getattr(encoder, "max_samples", np.inf):
                    pending_stats["n_chunked"] += 1
                s, e = starts[u.row_lo:u.row_hi], ends[u.row_lo:u.row_hi]
                bad = ~(np.isfinite(s) & np.isfinite(e))
                if bad.any():
                    pending_stats["n_nan_rows"] += int(bad.sum())
                    pending_stats["problems"].append(_problem(
                        corpus.audio_path(u.recording_id), "start/end", f"{int(bad.sum())} phone(s) with missing/non-finite times", u))
                    s, e = np.where(bad, 0.0, s), np.where(bad, 0.0, e)
                lo, hi, clamped = pooling_ranges(s, e, n_fr, pooling, encoder.grid)
                pending_stats["n_phones_clamped"] += int(clamped[~bad].sum())
                pooled = {}
                for layer in sel:
                    f = fr[layer]
                    if f.shape[0] != n_fr:
                        raise RuntimeError(f"{encoder!r} returned {f.shape[0]} frames for {len(x)} samples, "
                                           f"expected {n_fr}")
                    v = pool(f, lo, hi)
                    v[bad] = np.nan
                    pooled[layer] = v
                tw = time.perf_counter()
                for layer in sel:
                    w.write_rows(layer, int(u.row_lo), pooled[layer])
                t_pool += tw - tp
                t_write += time.perf_counter() - tw
                pending_stats["audio_seconds"] += len(x) / 16000
                done_s += len(x) / 16000
            timings["audio_read"] += t1 - t0
            timings["forward"] += t2 - t1
            timings["pooling"] += t_pool
            timings["writing"] += t_write
            pending.append(b)
            n_written += len(batch)
            if crash and crash[1] == "write" and n_written >= crash[0]:
                os._exit(77)
            if time.monotonic() - last_commit >= commit_every_s or b == todo[-1]:
                tc = time.perf_counter()
                w.commit(pending, pending_stats)
                timings["writing"] += time.perf_counter() - tc
                pending, pending_stats, last_commit = [], _empty_stats(), time.monotonic()
                if crash and crash[1] == "commit" and n_written >= crash[0]:
                    os._exit(77)
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix_str(f"audio {done_s / 3600:.3f} h (corpus {total_h:.3f} h)", refresh=False)
        if bar is not None:
            bar.close()
        stats = _merge(w.batch_stats)
        problems = problems_frame(stats.pop("problems"))
        prov: dict[str, Any] = {
            **fields,
            "encoder": encoder.provenance(),
            "layers": sel,
            "corpus": {"name": corpus.name, "fingerprint": corpus.fingerprint(), "n_phones": len(phones),
                       "n_phones_unlabelled": int(phones["phone"].isna().sum()), "n_utterances": len(utts),
                       "n_recordings_without_phones": int(len(corpus.recordings) - len(utts))},
            "batch_size": batch_size,
            "n_phones_clamped": stats["n_phones_clamped"],
            "n_utterances_chunked": stats["n_chunked"],
            "n_nan_rows": stats["n_nan_rows"],
            "n_problems": len(problems),
            "audio_seconds": round(stats["audio_seconds"], 3),
            "resumed": len(todo) < n_batches,
            "last_run_seconds": round(time.perf_counter() - t_start, 3),
            "last_run_timings_s": {k: round(v, 4) for k, v in timings.items()},
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "phonefair_version": _version(),
        }
        return w.finalize(prov, problems)


def _empty_stats() -> dict[str, Any]:
    return {"n_phones_clamped": 0, "n_chunked": 0, "n_nan_rows": 0, "audio_seconds": 0.0, "problems": []}


def _merge(stats: list[dict[str, Any]]) -> dict[str, Any]:
    out = _empty_stats()
    for s in stats:
        out["n_phones_clamped"] += int(s["n_phones_clamped"])
        out["n_chunked"] += int(s["n_chunked"])
        out["n_nan_rows"] += int(s["n_nan_rows"])
        out["audio_seconds"] += float(s["audio_seconds"])
        out["problems"].extend(s["problems"])
    return out


def _nan_rows(w: StoreWriter, dims: dict[str, int], lo: int, hi: int) -> None:
    for layer, d in dims.items():
        w.write_rows(layer, int(lo), np.full((int(hi) - int(lo), d), np.nan, dtype=np.float32))


def _problem(path: Any, field: str, message: str, u: Any) -> dict[str, Any]:
    return {"severity": "error", "file": str(path), "field": field,
            "message": f"recording {u.recording_id}: {message}",
            "action": f"rows {int(u.row_lo)}..{int(u.row_hi) - 1} stored as NaN"}


def _version() -> str:
    import phonefair

    return phonefair.__version__
