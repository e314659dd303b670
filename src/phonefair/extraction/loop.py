"""The extraction core: the utterance plan and what one batch goes through (audio read, forward pass, pooling,
row writes), the statistics each journal commit records, and the provenance of a finished store.

Every driver uses it unchanged - :func:`phonefair.extraction.extract` (one process),
:func:`phonefair.extraction.ray_backend.extract_ray` (Ray Data actors) and
:func:`phonefair.extraction.shards.extract_shard` (static shards) - and differs only in where a batch runs and
where its rows are written. Every decision that changes a stored number or a problems row is made here, which is
why the three give bit-identical stores.

Utterances are the recordings that have phones, in phone-table order; batch ``b`` holds utterances
``b*batch_size ... (b+1)*batch_size - 1``, so a resumed or distributed run forms exactly the batches (and the
forward passes) of an uninterrupted single-process run.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
import warnings
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from phonefair.corpus.schema import Corpus, problems_frame
from phonefair.encoders.base import Encoder, parse_layers
from phonefair.errors import DataError
from phonefair.extraction.frames import (FRAME_RULE, PAST_END_RULE, POOLINGS, audio_end_masks, pool_layers,
                                         pooling_ranges)
from phonefair.store.disk import STORE_VERSION, EmbeddingStore, StoreWriter, store_key

__all__ = ["CRASH_ENV", "AudioSource", "BatchJob", "BatchPlan", "ExtractionSetup", "RowSink", "audio_sources",
           "crash_point", "empty_stats", "extraction_key", "finish_store", "merge_stats", "new_timings",
           "phone_times", "prepare", "problem", "store_provenance", "utterance_plan", "with_context",
           "write_batches"]

#: test hook: "k" or "k:commit" makes the process os._exit(77) after k utterances were written (before their
#: commit) or right after the first commit that covers k utterances. Used to test crash recovery.
CRASH_ENV = "PHONEFAIR_TEST_CRASH_AFTER"
TIMING_KEYS = ("audio_read", "forward", "pooling", "writing")
_SR = 16000
_FP16_MAX = float(np.finfo(np.float16).max)
_COUNTS = ("n_phones_clamped", "n_phones_past_end", "n_phones_truncated", "n_chunked", "n_nan_rows",
           "n_float16_overflow")


# ---------------------------------------------------------------------------------------------- statistics
def new_timings() -> dict[str, float]:
    """Seconds spent per phase, all zero."""
    return dict.fromkeys(TIMING_KEYS, 0.0)


def empty_stats() -> dict[str, Any]:
    """The counters one journal commit records (summed over commits by :func:`merge_stats`)."""
    return {**dict.fromkeys(_COUNTS, 0), "audio_seconds": 0.0, "problems": []}


def merge_stats(stats: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the counters of several commits; problems are concatenated in commit order.

    Missing counters count as 0: journals written before a counter existed still resume."""
    out = empty_stats()
    for s in stats:
        for k in _COUNTS:
            out[k] += int(s.get(k, 0))
        out["audio_seconds"] += float(s.get("audio_seconds", 0.0))
        out["problems"].extend(s.get("problems", []))
    return out


# ---------------------------------------------------------------------------------------------- plan
class RowSink(Protocol):
    """Where pooled rows go: a :class:`~phonefair.store.disk.StoreWriter`, or a collector (shards with a row
    offset, Ray workers)."""

    def write_rows(self, layer: str, lo: int, values: np.ndarray) -> None: ...


@dataclass(frozen=True)
class AudioSource:
    """Where a recording's audio is and the channel policy its corpus gave it: ``channel`` picks one channel,
    ``mix`` averages all of them (the loader admitted the multi-channel file with ``mix=True``)."""

    path: Path
    channel: int | None
    mix: bool


def audio_sources(corpus: Corpus, *, mix: bool = False) -> dict[str, AudioSource]:
    """``{recording_id: AudioSource}`` from the recordings table, built once (``corpus.audio_path()`` per utterance
    is a linear scan: quadratic on big corpora). ``mix=True`` also mixes recordings whose ``mix`` is not set
    (corpora built without a loader)."""
    rec = corpus.recordings
    rec_mix = rec["mix"].fillna(False).to_numpy(dtype=bool) if "mix" in rec.columns else np.zeros(len(rec), bool)
    out: dict[str, AudioSource] = {}
    for r, p, c, m in zip(rec["recording_id"], rec["audio_path"], rec["channel"], rec_mix, strict=True):
        path = Path(str(p))
        out[str(r)] = AudioSource(path if path.is_absolute() else Path(corpus.source) / path,
                                  None if pd.isna(c) else int(c), bool(m) or (mix and pd.isna(c)))
    return out


def utterance_plan(corpus: Corpus) -> pd.DataFrame:
    """One row per recording with phones, in phone-table order: ``recording_id, row_lo, row_hi`` (phone rows are
    contiguous per recording)."""
    rid = corpus.phones["recording_id"].astype(str).to_numpy()
    if len(rid) == 0:
        return pd.DataFrame({"recording_id": pd.Series([], dtype=object), "row_lo": pd.Series([], dtype=np.int64),
                             "row_hi": pd.Series([], dtype=np.int64)})
    change = np.flatnonzero(rid[1:] != rid[:-1]) + 1
    lo = np.concatenate([[0], change])
    hi = np.concatenate([change, [len(rid)]])
    utt = pd.DataFrame({"recording_id": rid[lo], "row_lo": lo, "row_hi": hi})
    if utt["recording_id"].duplicated().any():  # the Corpus constructor sorts phones, so this means a bug upstream
        raise ValueError("phone table rows of a recording are not contiguous")
    return utt


@dataclass(frozen=True)
class BatchPlan:
    """The fixed batches of a corpus: batch ``b`` = utterances ``b*batch_size ...`` of :func:`utterance_plan`."""

    utterances: pd.DataFrame
    batch_size: int

    @classmethod
    def of(cls, corpus: Corpus, batch_size: int) -> BatchPlan:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return cls(utterance_plan(corpus), batch_size)

    @property
    def n_utterances(self) -> int:
        return len(self.utterances)

    @property
    def n_batches(self) -> int:
        return (self.n_utterances + self.batch_size - 1) // self.batch_size

    def members(self, b: int) -> range:
        """Utterance indices of batch ``b``."""
        return range(b * self.batch_size, min((b + 1) * self.batch_size, self.n_utterances))

    def batch(self, b: int) -> pd.DataFrame:
        return self.utterances.iloc[b * self.batch_size:(b + 1) * self.batch_size]

    def unfinished(self, done: Container[int], batches: Iterable[int] | None = None) -> list[int]:
        """The batches (of ``batches``, default all) with an utterance not in ``done``. The journal lists
        utterances, so a resume with another batch_size never skips unfinished work."""
        bs = range(self.n_batches) if batches is None else batches
        return [b for b in bs if not all(i in done for i in self.members(b))]

    def n_utterances_in(self, batches: Iterable[int]) -> int:
        return sum(len(self.members(b)) for b in batches)


def phone_times(corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(start, end)`` of every phone row (<NA> -> NaN)."""
    ph = corpus.phones
    return (ph["start"].to_numpy(dtype=np.float64, na_value=np.nan),
            ph["end"].to_numpy(dtype=np.float64, na_value=np.nan))


# ---------------------------------------------------------------------------------------------- one batch
@dataclass(frozen=True)
class BatchJob:
    """What turns a batch of utterances into stored rows: the encoder and every setting that decides the numbers.

    ``read`` (audio) and ``embed`` (forward + pool + write) are separate so the Ray backend can run them in
    different processes; :meth:`run` does both."""

    encoder: Encoder
    layers: list[str]
    dims: dict[str, int]
    pooling: str
    fp16: bool
    on_audio_error: str

    def read(self, batch: pd.DataFrame, sources: Mapping[str, AudioSource], sink: RowSink,
             stats: dict[str, Any]) -> tuple[list[np.ndarray], list[Any]]:
        """Read one batch's audio: ``(waves, utterance rows)`` of the usable ones. A recording that cannot be used
        (unreadable, NaN/inf samples, digital silence, shorter than one encoder frame) gets NaN rows and a problem
        - or, for a bad file (all but the last), raises naming the file when ``on_audio_error="raise"``."""
        from phonefair.corpus.audio import AudioError, read_audio

        waves: list[np.ndarray] = []
        ok: list[Any] = []
        for u in batch.itertuples(index=False):
            src = sources.get(u.recording_id)
            try:
                if src is None:
                    raise DataError(f"recording_id {u.recording_id!r} of the phone table is not in the recordings "
                                    f"table")
                x = read_audio(src.path, target_sr=_SR, channel=src.channel, mix=src.mix)  # NaN/inf: AudioError
                if not np.any(x):  # phones embedded from nothing: as unusable as an unreadable file
                    raise AudioError(f"{src.path}: all samples are zero (digital silence)")
            except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the file
                where = src.path if src is not None else "<no recording row>"
                if self.on_audio_error == "raise":
                    raise with_context(exc, f"recording {u.recording_id!r} ({where}): {exc}") from exc
                self._nan_rows(sink, u, stats, where, "audio_path", str(exc))
                continue
            if self.encoder.num_frames(len(x)) == 0:
                self._nan_rows(sink, u, stats, src.path, "duration",
                               f"{len(x)} samples at 16 kHz is shorter than one encoder frame")
                continue
            waves.append(x)
            ok.append(u)
        return waves, ok

    def embed(self, waves: Sequence[np.ndarray], ok: Sequence[Any], sink: RowSink, starts: Any, ends: Any,
              sources: Mapping[str, AudioSource], stats: dict[str, Any], timings: dict[str, float]) -> float:
        """Forward + pool + write the read utterances of one batch; returns the seconds of audio processed.

        ``starts`` / ``ends`` are indexed with global phone rows (``starts[lo:hi]``)."""
        done_s = 0.0
        # models that cannot be padded run one utterance at a time anyway: handle each utterance completely
        # before the next, so only one utterance's hidden states are ever held in memory
        subs = [list(range(len(waves)))] if self.encoder.can_pad else [[i] for i in range(len(waves))]
        for sub in subs:
            if not sub:
                continue
            tf = time.perf_counter()
            results = self.encoder.frames_batch([waves[i] for i in sub])
            timings["forward"] += time.perf_counter() - tf
            for i, fr in zip(sub, results, strict=True):
                u = ok[i]
                self._pool_and_write(sink, u, len(waves[i]), fr, starts[u.row_lo:u.row_hi], ends[u.row_lo:u.row_hi],
                                     sources[u.recording_id].path, stats, timings)
                done_s += len(waves[i]) / _SR
            del results
        return done_s

    def run(self, batch: pd.DataFrame, sources: Mapping[str, AudioSource], starts: Any, ends: Any, sink: RowSink,
            stats: dict[str, Any], timings: dict[str, float]) -> float:
        """:meth:`read` then :meth:`embed`; returns the seconds of audio processed."""
        t0 = time.perf_counter()
        waves, ok = self.read(batch, sources, sink, stats)
        timings["audio_read"] += time.perf_counter() - t0
        return self.embed(waves, ok, sink, starts, ends, sources, stats, timings)

    def _pool_and_write(self, sink: RowSink, u: Any, n_samples: int, fr: Mapping[str, np.ndarray],
                        s: np.ndarray, e: np.ndarray, path: Path, stats: dict[str, Any],
                        timings: dict[str, float]) -> None:
        tp = time.perf_counter()
        n_fr = self.encoder.num_frames(n_samples)
        if n_samples > getattr(self.encoder, "max_samples", np.inf):
            stats["n_chunked"] += 1
        for layer in self.layers:
            if fr[layer].shape[0] != n_fr:
                raise RuntimeError(f"{self.encoder!r} returned {fr[layer].shape[0]} frames for {n_samples} samples, "
                                   f"expected {n_fr}")
        s, e = np.asarray(s, dtype=np.float64), np.asarray(e, dtype=np.float64)
        untimed = ~(np.isfinite(s) & np.isfinite(e))
        if untimed.any():  # cannot place these phones in time: NaN rows + a problem, never a silent guess
            stats["problems"].append(problem(path, "start/end", f"{int(untimed.sum())} phone(s) with "
                                             f"missing/non-finite times", u, rows=_rows(u, untimed)))
        past, partial = audio_end_masks(s, e, n_samples / _SR)
        past &= ~untimed
        if past.any():  # beyond the audio: clamping would give every such phone the last frame's vector
            k = int(np.flatnonzero(past)[0])
            stats["n_phones_past_end"] += int(past.sum())
            stats["problems"].append(problem(
                path, "end", f"{int(past.sum())} phone(s) lie past the end of the audio ({n_samples / _SR:.3f} s; "
                f"{PAST_END_RULE}), first [{s[k]:.3f}, {e[k]:.3f}] s", u, rows=_rows(u, past)))
        stats["n_phones_truncated"] += int((partial & ~untimed).sum())
        bad = untimed | past
        stats["n_nan_rows"] += int(bad.sum())
        s, e = np.where(bad, 0.0, s), np.where(bad, 0.0, e)
        lo, hi, clamped = pooling_ranges(s, e, n_fr, self.pooling, self.encoder.grid)
        stats["n_phones_clamped"] += int(clamped[~bad].sum())
        pooled = pool_layers({k: fr[k] for k in self.layers}, lo, hi)
        for v in pooled.values():
            v[bad] = np.nan
            if self.fp16:  # |x| > 65504 would be stored as inf: count it rather than let it pass unnoticed
                stats["n_float16_overflow"] += int((np.abs(v) > _FP16_MAX).sum())
        tw = time.perf_counter()
        for layer in self.layers:
            sink.write_rows(layer, int(u.row_lo), pooled[layer])
        timings["pooling"] += tw - tp
        timings["writing"] += time.perf_counter() - tw
        stats["audio_seconds"] += n_samples / _SR

    def _nan_rows(self, sink: RowSink, u: Any, stats: dict[str, Any], path: Any, field: str, message: str) -> None:
        """The whole recording is unusable: NaN rows (never zeros) and one problem naming the file."""
        for layer, d in self.dims.items():
            sink.write_rows(layer, int(u.row_lo), np.full((int(u.row_hi) - int(u.row_lo), d), np.nan, np.float32))
        stats["n_nan_rows"] += int(u.row_hi - u.row_lo)
        stats["problems"].append(problem(path, field, message, u))


def _rows(u: Any, mask: np.ndarray) -> np.ndarray:
    return int(u.row_lo) + np.flatnonzero(mask)


def problem(path: Any, field: str, message: str, u: Any, *, rows: np.ndarray | None = None) -> dict[str, Any]:
    """A problems-table row for utterance ``u``: all its rows, or ``rows`` (global phone rows), stored as NaN."""
    if rows is None:
        action = f"rows {int(u.row_lo)}..{int(u.row_hi) - 1} stored as NaN"
    else:
        shown = ", ".join(str(int(r)) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        action = f"row(s) {shown} stored as NaN"
    return {"severity": "error", "file": str(path), "field": field,
            "message": f"recording {u.recording_id}: {message}", "action": action}


def with_context(exc: Exception, message: str) -> Exception:
    """The same exception type with the recording named (RuntimeError if the type cannot be rebuilt)."""
    try:
        return type(exc)(message)
    except Exception:  # noqa: BLE001 - exception types with other constructor signatures
        return RuntimeError(message)


# ---------------------------------------------------------------------------------------------- drivers
def crash_point() -> tuple[int, str] | None:
    """The :data:`CRASH_ENV` test hook: ``(k, "write" | "commit")`` or None."""
    v = os.environ.get(CRASH_ENV)
    if not v:
        return None
    k, _, point = v.partition(":")
    return int(k), point or "write"


def write_batches(job: BatchJob, plan: BatchPlan, batches: Sequence[int], w: StoreWriter, *,
                  sources: Mapping[str, AudioSource], starts: np.ndarray, ends: np.ndarray,
                  commit_every_s: float, timings: dict[str, float], sink: RowSink | None = None,
                  bar: Any = None, postfix: Any = None) -> None:
    """Run ``batches`` in order in this process: rows go to ``sink`` (default ``w``), and ``w``'s journal gets a
    commit at least every ``commit_every_s`` seconds and after the last batch. ``bar``: a tqdm bar to advance;
    ``postfix(audio_seconds_done)``: its text."""
    crash = crash_point()
    pending: list[int] = []
    pending_stats = empty_stats()
    last_commit = time.monotonic()
    n_written = 0
    done_s = 0.0
    for b in batches:
        batch = plan.batch(b)
        done_s += job.run(batch, sources, starts, ends, sink if sink is not None else w, pending_stats, timings)
        pending.extend(plan.members(b))
        n_written += len(batch)
        if crash and crash[1] == "write" and n_written >= crash[0]:
            os._exit(77)
        if time.monotonic() - last_commit >= commit_every_s or b == batches[-1]:
            tc = time.perf_counter()
            w.commit(pending, pending_stats)
            timings["writing"] += time.perf_counter() - tc
            pending, pending_stats, last_commit = [], empty_stats(), time.monotonic()
            if crash and crash[1] == "commit" and n_written >= crash[0]:
                os._exit(77)
        if bar is not None:
            bar.update(len(batch))
            if postfix is not None:
                bar.set_postfix_str(postfix(done_s), refresh=False)


# ---------------------------------------------------------------------------------------------- setup, finish
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


@dataclass(frozen=True)
class ExtractionSetup:
    """Checked arguments shared by every driver: the encoder, the selected layers, the store key and its fields."""

    encoder: Encoder
    layers: list[str]
    key: str
    fields: dict[str, Any]
    pooling: str
    dtype: str
    on_audio_error: str

    def job(self) -> BatchJob:
        all_dims = self.encoder.layer_dims()
        return BatchJob(self.encoder, list(self.layers), {k: all_dims[k] for k in self.layers}, self.pooling,
                        self.dtype == "float16", self.on_audio_error)


def prepare(corpus: Corpus, encoder: Encoder | str | os.PathLike[str], *, layers: str | int | Sequence[str | int],
            pooling: str, dtype: str, batch_size: int, device: str, mix: bool, on_audio_error: str,
            revision: str | None) -> ExtractionSetup:
    """Check the arguments shared by every backend and resolve the encoder (a hub id / directory is loaded with
    ``load_encoder(encoder, revision=revision, layers=layers, device=device)``; weights load lazily)."""
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
    return ExtractionSetup(encoder, sel, key, fields, pooling, dtype, on_audio_error)


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
        "past_end_rule": PAST_END_RULE,
        "n_phones_past_end": stats["n_phones_past_end"],
        "n_phones_truncated": stats["n_phones_truncated"],
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


def finish_store(w: StoreWriter, setup: ExtractionSetup, corpus: Corpus, *, n_utterances: int, batch_size: int,
                 resumed: bool, n_reused: int, seconds: float, timings: dict[str, float],
                 backend: dict[str, Any] | None = None) -> EmbeddingStore:
    """Merge the journal's statistics, write problems + provenance + ``COMPLETE`` and open the store."""
    stats = merge_stats(w.batch_stats)
    problems = problems_frame(stats.pop("problems"))
    prov = store_provenance(setup.fields, setup.encoder, setup.layers, corpus, n_utterances, batch_size, stats,
                            len(problems), resumed=resumed, n_reused=n_reused, seconds=seconds, timings=timings)
    if backend is not None:
        prov["backend"] = backend
    if stats["n_float16_overflow"]:
        warnings.warn(f"{stats['n_float16_overflow']} pooled values exceed the float16 range and are stored as "
                      f"inf; use dtype='float32' for this model", RuntimeWarning, stacklevel=3)
    return w.finalize(prov, problems)


def _version() -> str:
    import phonefair

    return phonefair.__version__
