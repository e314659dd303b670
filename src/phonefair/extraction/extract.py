"""The extraction loop: corpus + encoder -> a content-addressed, resumable on-disk :class:`EmbeddingStore`.

Utterances (recordings with at least one phone) are processed in phone-table order, in fixed batches of
``batch_size`` utterances (batch ``b`` = utterances ``b*batch_size ...``), so a resumed run forms exactly the same
batches as an uninterrupted one and writes identical numbers.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from phonefair.corpus.schema import Corpus, problems_frame
from phonefair.encoders.base import Encoder, parse_layers
from phonefair.extraction.frames import FRAME_RULE, POOLINGS, pool_layers, pooling_ranges
from phonefair.store.disk import STORE_VERSION, EmbeddingStore, StoreWriter, open_store, store_key

#: test hook: "k" or "k:commit" makes the process os._exit(77) after k utterances were written (before their
#: commit) or right after the first commit that covers k utterances. Used to test crash recovery.
CRASH_ENV = "PHONEFAIR_TEST_CRASH_AFTER"
_FP16_MAX = float(np.finfo(np.float16).max)


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
    encoder, sel, key, fields = prepare(corpus, encoder, layers=layers, pooling=pooling, dtype=dtype,
                                        batch_size=batch_size, device=device, mix=mix,
                                        on_audio_error=on_audio_error, revision=revision)
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
    rec_info = rec_lookup(corpus)
    crash = _crash_hook()
    timings = {"audio_read": 0.0, "forward": 0.0, "pooling": 0.0, "writing": 0.0}
    t_start = time.perf_counter()

    with StoreWriter(store_root, key, tokens=phones, dims=dims, dtype=dtype, lock_timeout=lock_timeout) as w:
        if w.complete:  # another process finished it while we waited for the lock
            return EmbeddingStore(w.dir)
        def members(b: int) -> range:
            return range(b * batch_size, min((b + 1) * batch_size, len(utts)))

        # the journal lists utterances, so a resume with another batch_size never skips unfinished work
        todo = [b for b in range(n_batches) if not all(i in w.done for i in members(b))]
        n_reused = len(utts) - sum(len(members(b)) for b in todo)
        resumed = bool(w.done)  # a journal from an interrupted run was found
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(utts), unit="utt", desc=f"extract {Path(encoder.model_id).name}",
                       initial=n_reused)
        total_h = corpus.hours
        done_s = 0.0
        pending: list[int] = []
        pending_stats: dict[str, Any] = _empty_stats()
        last_commit = time.monotonic()
        n_written = 0
        for b in todo:
            batch = utts.iloc[b * batch_size:(b + 1) * batch_size]
            t0 = time.perf_counter()
            waves, ok = read_batch(batch, rec_info, encoder, w, dims, mix, on_audio_error, pending_stats)
            timings["audio_read"] += time.perf_counter() - t0
            done_s += embed_batch(encoder, waves, ok, w, sel, pooling, starts, ends, rec_info, pending_stats,
                                  timings, dtype == "float16")
            pending.extend(members(b))
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
        prov = store_provenance(fields, encoder, sel, corpus, len(utts), batch_size, stats, len(problems),
                                resumed=resumed, n_reused=n_reused, seconds=time.perf_counter() - t_start,
                                timings=timings)
        if stats["n_float16_overflow"]:
            warnings.warn(f"{stats['n_float16_overflow']} pooled values exceed the float16 range and are stored as "
                          f"inf; use dtype='float32' for this model", RuntimeWarning, stacklevel=2)
        return w.finalize(prov, problems)


def prepare(corpus: Corpus, encoder: Encoder | str | os.PathLike[str], *, layers: str | int | Sequence[str | int],
            pooling: str, dtype: str, batch_size: int, device: str, mix: bool, on_audio_error: str,
            revision: str | None) -> tuple[Encoder, list[str], str, dict[str, Any]]:
    """Validate the arguments shared by every backend; ``(encoder, selected layers, key, key fields)``."""
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
    return encoder, sel, key, fields


def store_provenance(fields: dict[str, Any], encoder: Encoder, sel: Sequence[str], corpus: Corpus,
                     n_utterances: int, batch_size: int, stats: dict[str, Any], n_problems: int, *, resumed: bool,
                     n_reused: int, seconds: float, timings: dict[str, float]) -> dict[str, Any]:
    """The provenance every backend writes (``stats`` merged over all commits, problems popped)."""
    phones = corpus.phones
    return {
        **fields,
        "encoder": encoder.provenance(),
        "layers": list(sel),
        "corpus": {"name": corpus.name, "fingerprint": corpus.fingerprint(), "n_phones": len(phones),
                   "n_phones_unlabelled": int(phones["phone"].isna().sum()), "n_utterances": n_utterances,
                   "n_recordings_without_phones": int(len(corpus.recordings) - n_utterances)},
        "batch_size": batch_size,
        "n_phones_clamped": stats["n_phones_clamped"],
        "n_utterances_chunked": stats["n_chunked"],
        "n_nan_rows": stats["n_nan_rows"],
        "n_float16_overflow": stats["n_float16_overflow"],
        "n_problems": n_problems,
        "audio_seconds": round(stats["audio_seconds"], 3),
        "resumed": resumed,
        "n_utterances_reused": n_reused,
        "last_run_seconds": round(seconds, 3),
        "last_run_timings_s": {k: round(v, 4) for k, v in timings.items()},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "phonefair_version": _version(),
    }


class RowSink(Protocol):
    """Where pooled rows go: a :class:`StoreWriter`, or a collector (shards with a row offset, Ray workers)."""

    def write_rows(self, layer: str, lo: int, values: np.ndarray) -> None: ...


def rec_lookup(corpus: Corpus) -> dict[str, tuple[Path, int | None]]:
    """``{recording_id: (absolute audio path, channel)}``: one lookup table instead of ``corpus.audio_path()`` per
    utterance (a linear scan: quadratic on big corpora)."""
    return {str(r): (Path(str(p)) if Path(str(p)).is_absolute() else Path(corpus.source) / str(p),
                     None if pd.isna(c) else int(c))
            for r, p, c in zip(corpus.recordings["recording_id"], corpus.recordings["audio_path"],
                               corpus.recordings["channel"], strict=True)}


def read_batch(batch: pd.DataFrame, rec_info: dict[str, tuple[Path, int | None]], encoder: Encoder, w: RowSink,
               dims: dict[str, int], mix: bool, on_audio_error: str,
               stats: dict[str, Any]) -> tuple[list[np.ndarray], list[Any]]:
    """Read one batch's audio: ``(waves, utterance rows)`` of the readable ones; NaN rows + problems for the rest.

    Shared by every backend (local, shards, Ray) so all of them treat bad audio identically."""
    from phonefair.corpus.audio import read_audio

    waves: list[np.ndarray] = []
    ok: list[Any] = []
    for u in batch.itertuples(index=False):
        try:
            if u.recording_id not in rec_info:
                raise ValueError(f"recording_id {u.recording_id!r} of the phone table is not in the "
                                 f"recordings table")
            path, ch = rec_info[u.recording_id]
            x = read_audio(path, target_sr=16000, channel=ch, mix=mix)
        except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the file
            if on_audio_error == "raise":
                where = rec_info.get(u.recording_id, ("<no recording row>", None))[0]
                raise _with_context(exc, f"recording {u.recording_id!r} ({where}): {exc}") from exc
            _nan_rows(w, dims, u.row_lo, u.row_hi)
            stats["n_nan_rows"] += int(u.row_hi - u.row_lo)
            stats["problems"].append(_problem(rec_info.get(u.recording_id, ("", None))[0],
                                              "audio_path", str(exc), u))
            continue
        if encoder.num_frames(len(x)) == 0:
            _nan_rows(w, dims, u.row_lo, u.row_hi)
            stats["n_nan_rows"] += int(u.row_hi - u.row_lo)
            stats["problems"].append(_problem(
                path, "duration", f"{len(x)} samples at 16 kHz is shorter than one encoder frame", u))
            continue
        waves.append(x)
        ok.append(u)
    return waves, ok


def embed_batch(encoder: Encoder, waves: list[np.ndarray], ok: list[Any], w: RowSink, sel: Sequence[str],
                pooling: str, starts: np.ndarray, ends: np.ndarray, rec_info: dict[str, tuple[Path, int | None]],
                stats: dict[str, Any], timings: dict[str, float], fp16: bool) -> float:
    """Forward + pool + write one batch of read utterances; returns the seconds of audio processed.

    The batch is exactly the local one (``batch_size`` utterances), so every backend runs the same forward passes.
    """
    done_s = 0.0
    # models that cannot be padded run one utterance at a time anyway: handle each utterance completely
    # before the next, so only one utterance's hidden states are ever held in memory
    subs = [list(range(len(waves)))] if encoder.can_pad else [[i] for i in range(len(waves))]
    for sub in subs:
        if not sub:
            continue
        tf = time.perf_counter()
        results = encoder.frames_batch([waves[i] for i in sub])
        timings["forward"] += time.perf_counter() - tf
        for i, fr in zip(sub, results, strict=True):
            _pool_and_write(w, encoder, ok[i], len(waves[i]), fr, sel, pooling, starts, ends,
                            rec_info[ok[i].recording_id][0], stats, timings, fp16)
            done_s += len(waves[i]) / 16000
        del results
    return done_s


def _pool_and_write(w: RowSink, encoder: Encoder, u: Any, n_samples: int, fr: dict[str, np.ndarray],
                    sel: Sequence[str], pooling: str, starts: np.ndarray, ends: np.ndarray, path: Path,
                    stats: dict[str, Any], timings: dict[str, float], fp16: bool) -> None:
    """Pool one utterance's frames into its phone rows and write them."""
    tp = time.perf_counter()
    n_fr = encoder.num_frames(n_samples)
    if n_samples > getattr(encoder, "max_samples", np.inf):
        stats["n_chunked"] += 1
    s, e = starts[u.row_lo:u.row_hi], ends[u.row_lo:u.row_hi]
    bad = ~(np.isfinite(s) & np.isfinite(e))
    if bad.any():  # cannot place these phones in time: NaN rows + a problem, never a silent guess
        stats["n_nan_rows"] += int(bad.sum())
        stats["problems"].append(_problem(path, "start/end",
                                          f"{int(bad.sum())} phone(s) with missing/non-finite times", u))
        s, e = np.where(bad, 0.0, s), np.where(bad, 0.0, e)
    lo, hi, clamped = pooling_ranges(s, e, n_fr, pooling, encoder.grid)
    stats["n_phones_clamped"] += int(clamped[~bad].sum())
    for layer in sel:
        if fr[layer].shape[0] != n_fr:
            raise RuntimeError(f"{encoder!r} returned {fr[layer].shape[0]} frames for {n_samples} samples, "
                               f"expected {n_fr}")
    pooled = pool_layers({k: fr[k] for k in sel}, lo, hi)
    for v in pooled.values():
        v[bad] = np.nan
        if fp16:  # |x| > 65504 would be stored as inf: count it rather than let it pass unnoticed
            stats["n_float16_overflow"] += int((np.abs(v) > _FP16_MAX).sum())
    tw = time.perf_counter()
    for layer in sel:
        w.write_rows(layer, int(u.row_lo), pooled[layer])
    timings["pooling"] += tw - tp
    timings["writing"] += time.perf_counter() - tw
    stats["audio_seconds"] += n_samples / 16000


def _with_context(exc: Exception, message: str) -> Exception:
    """The same exception type with the recording named (RuntimeError if the type cannot be rebuilt)."""
    try:
        return type(exc)(message)
    except Exception:  # noqa: BLE001 - exception types with other constructor signatures
        return RuntimeError(message)


def _empty_stats() -> dict[str, Any]:
    return {"n_phones_clamped": 0, "n_chunked": 0, "n_nan_rows": 0, "n_float16_overflow": 0, "audio_seconds": 0.0,
            "problems": []}


def _merge(stats: list[dict[str, Any]]) -> dict[str, Any]:
    out = _empty_stats()
    for s in stats:
        out["n_phones_clamped"] += int(s["n_phones_clamped"])
        out["n_chunked"] += int(s["n_chunked"])
        out["n_nan_rows"] += int(s["n_nan_rows"])
        out["n_float16_overflow"] += int(s.get("n_float16_overflow", 0))
        out["audio_seconds"] += float(s["audio_seconds"])
        out["problems"].extend(s["problems"])
    return out


def _nan_rows(w: RowSink, dims: dict[str, int], lo: int, hi: int) -> None:
    for layer, d in dims.items():
        w.write_rows(layer, int(lo), np.full((int(hi) - int(lo), d), np.nan, dtype=np.float32))


def _problem(path: Any, field: str, message: str, u: Any) -> dict[str, Any]:
    return {"severity": "error", "file": str(path), "field": field,
            "message": f"recording {u.recording_id}: {message}",
            "action": f"rows {int(u.row_lo)}..{int(u.row_hi) - 1} stored as NaN"}


def _version() -> str:
    import phonefair

    return phonefair.__version__
