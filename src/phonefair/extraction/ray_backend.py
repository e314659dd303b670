"""Ray Data backend for extraction: CPU tasks read audio, a pool of (GPU or CPU) actors runs the encoder, the
driver writes the rows into the same crash-safe store (writer + journal) as :func:`~phonefair.extraction.extract`.

Pipeline (one Ray Data row = one *local batch*, batch ``b`` = utterances ``b*batch_size ...``, so each actor runs
exactly the forward passes a single-process run makes and the store is bit-identical to it)::

    from_items([batch b, ...])
      -> map_batches(_read_task, num_cpus=read_num_cpus)                       # soundfile + soxr, CPU tasks
      -> map_batches(_ExtractActor, concurrency=num_workers, num_gpus=...)     # encoder forward + pooling
      -> driver: StoreWriter.write_rows + journal commit (resumable), provenance, COMPLETE

Variable-length audio and per-utterance row blocks travel between stages as pickled numpy payloads (a binary
column), which keeps them exact and avoids Ray's ragged-tensor extension types. Ray is optional:
``pip install 'phonefair[ray]'``.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phonefair.corpus.schema import Corpus, problems_frame
from phonefair.encoders.base import Encoder
from phonefair.extraction.extract import (_empty_stats, _merge, _utterances, embed_batch, prepare, read_batch,
                                          rec_lookup, store_provenance)
from phonefair.store.disk import EmbeddingStore, StoreWriter, open_store

#: test hook: a file path; the first actor call that finds it missing creates it and kills its own process
#: (os._exit), so the engine must restart the actor and retry the batch.
RAY_CRASH_ENV = "PHONEFAIR_TEST_RAY_CRASH_MARKER"


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without ray
        raise ImportError("the Ray backend needs Ray Data: pip install 'phonefair[ray]' "
                          "(or pip install 'ray[data]>=2.40')") from exc
    return ray


@dataclass(frozen=True)
class _Utt:
    """A picklable utterance record (itertuples' namedtuples are not)."""

    recording_id: str
    row_lo: int
    row_hi: int


class _Collector:
    """A row sink that keeps ``(layer, global row, float32 values)`` for the driver to write."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, np.ndarray]] = []

    def write_rows(self, layer: str, lo: int, values: np.ndarray) -> None:
        self.rows.append((layer, int(lo), np.array(values, copy=True)))


class _Window:
    """``arr[a:b]`` for global phone rows when only rows ``[base, base+len)`` are shipped with the task."""

    def __init__(self, values: np.ndarray, base: int) -> None:
        self.values, self.base = values, base

    def __getitem__(self, s: slice) -> np.ndarray:
        return self.values[s.start - self.base:s.stop - self.base]


def _read_task(batch: dict[str, np.ndarray], *, encoder: Encoder, dims: dict[str, int], mix: bool,
               on_audio_error: str) -> dict[str, np.ndarray]:
    """CPU stage: read + resample the audio of each local batch (NaN rows/problems for unreadable files)."""
    import pandas as pd

    out = []
    for blob in batch["payload"]:
        task = pickle.loads(blob)
        sink, stats = _Collector(), _empty_stats()
        t0 = time.perf_counter()
        waves, ok = read_batch(pd.DataFrame(task["utts"]), task["rec_info"], encoder, sink, dims, mix,
                               on_audio_error, stats)
        task.update(waves=waves, ok=[_Utt(str(u.recording_id), int(u.row_lo), int(u.row_hi)) for u in ok],
                    rows=sink.rows, stats=stats, t_read=time.perf_counter() - t0)
        out.append(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
    return {"b": batch["b"], "payload": np.array(out, dtype=object)}


class _ExtractActor:
    """Holds the encoder; runs forward + pooling for whole local batches."""

    def __init__(self, encoder: Encoder, sel: list[str], pooling: str, fp16: bool, threads: int,
                 crash_marker: str | None) -> None:
        import torch

        torch.set_num_threads(max(1, threads))  # one actor per core slot: no oversubscription
        self.encoder, self.sel, self.pooling, self.fp16 = encoder, sel, pooling, fp16
        self.crash_marker = crash_marker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.crash_marker and not os.path.exists(self.crash_marker):
            Path(self.crash_marker).write_text(str(os.getpid()))
            os._exit(1)  # simulated worker death (test hook)
        out = []
        for blob in batch["payload"]:
            task = pickle.loads(blob)
            sink, stats = _Collector(), task["stats"]
            sink.rows = task["rows"]
            timings = {"audio_read": task["t_read"], "forward": 0.0, "pooling": 0.0, "writing": 0.0}
            base = task["base"]
            embed_batch(self.encoder, task["waves"], task["ok"], sink, self.sel, self.pooling,
                        _Window(task["starts"], base), _Window(task["ends"], base),  # type: ignore[arg-type]
                        task["rec_info"], stats, timings, self.fp16)
            out.append(pickle.dumps({"b": task["b"], "items": task["items"], "rows": sink.rows, "stats": stats,
                                     "timings": timings, "pid": os.getpid()}, protocol=pickle.HIGHEST_PROTOCOL))
        return {"b": batch["b"], "payload": np.array(out, dtype=object)}


def _shippable(encoder: Encoder) -> Encoder:
    """The encoder without its loaded torch module (actors load the weights themselves, on their own device)."""
    if getattr(encoder, "_model", None) is None:
        return encoder
    import copy

    enc = copy.copy(encoder)
    enc._model = None  # type: ignore[attr-defined]
    if hasattr(enc, "_cnn_out"):
        enc._cnn_out = None  # type: ignore[attr-defined]
    return enc


def extract_ray(corpus: Corpus, encoder: Encoder | str | os.PathLike[str], *, store_root: str | os.PathLike[str],
                layers: str | int | Sequence[str | int] = "all", pooling: str = "mean", dtype: str = "float16",
                batch_size: int = 8, num_workers: int = 1, num_gpus_per_worker: float = 0.0,
                cpus_per_worker: float = 1.0, read_num_cpus: float = 0.5, device: str = "cpu",
                progress: bool = True, mix: bool = False, on_audio_error: str = "raise",
                lock_timeout: float | None = None, commit_every_s: float = 10.0, revision: str | None = None,
                max_retries: int = 3, ray_address: str | None = None) -> EmbeddingStore:
    """:func:`~phonefair.extraction.extract` on a Ray cluster; same store (same key, arrays and tokens).

    ``num_workers`` encoder actors (``concurrency``), each with ``num_gpus_per_worker`` GPUs (1 on a GPU cluster;
    pass ``device="cuda"`` or an encoder loaded with it) and ``cpus_per_worker`` CPUs (also its torch thread
    count); audio is read by CPU tasks of ``read_num_cpus`` each. A worker that dies is restarted and its batch
    retried up to ``max_retries`` times (Ray ``max_restarts`` / ``max_task_retries``). The driver writes all rows
    through the store's journal, so a rerun after a driver crash resumes (also a journal left by a local run).
    Uses the running Ray runtime, else ``ray.init(address=ray_address)`` (shut down again at the end).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    encoder, sel, key, fields = prepare(corpus, encoder, layers=layers, pooling=pooling, dtype=dtype,
                                        batch_size=batch_size, device=device, mix=mix,
                                        on_audio_error=on_audio_error, revision=revision)
    done = open_store(store_root, key)
    if done is not None:
        return done
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        started = True
    try:
        return _run(ray, corpus, encoder, sel, key, fields, store_root=store_root, pooling=pooling, dtype=dtype,
                    batch_size=batch_size, num_workers=num_workers, num_gpus_per_worker=num_gpus_per_worker,
                    cpus_per_worker=cpus_per_worker, read_num_cpus=read_num_cpus, progress=progress, mix=mix,
                    on_audio_error=on_audio_error, lock_timeout=lock_timeout, commit_every_s=commit_every_s,
                    max_retries=max_retries)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, corpus: Corpus, encoder: Encoder, sel: list[str], key: str, fields: dict[str, Any], *,
         store_root: str | os.PathLike[str], pooling: str, dtype: str, batch_size: int, num_workers: int,
         num_gpus_per_worker: float, cpus_per_worker: float, read_num_cpus: float, progress: bool, mix: bool,
         on_audio_error: str, lock_timeout: float | None, commit_every_s: float,
         max_retries: int) -> EmbeddingStore:
    t_start = time.perf_counter()
    utts = _utterances(corpus)
    all_dims = encoder.layer_dims()
    dims = {k: all_dims[k] for k in sel}
    phones = corpus.phones
    starts = phones["start"].to_numpy(dtype=np.float64, na_value=np.nan)
    ends = phones["end"].to_numpy(dtype=np.float64, na_value=np.nan)
    rec_info = rec_lookup(corpus)
    n_batches = (len(utts) + batch_size - 1) // batch_size
    timings = {"audio_read": 0.0, "forward": 0.0, "pooling": 0.0, "writing": 0.0}

    with StoreWriter(store_root, key, tokens=phones, dims=dims, dtype=dtype, lock_timeout=lock_timeout) as w:
        if w.complete:
            return EmbeddingStore(w.dir)

        def members(b: int) -> range:
            return range(b * batch_size, min((b + 1) * batch_size, len(utts)))

        todo = [b for b in range(n_batches) if not all(i in w.done for i in members(b))]
        n_reused = len(utts) - sum(len(members(b)) for b in todo)
        resumed = bool(w.done)
        pids: set[int] = set()
        if todo:
            items = []
            for b in todo:
                batch = utts.iloc[b * batch_size:(b + 1) * batch_size]
                lo, hi = int(batch["row_lo"].iloc[0]), int(batch["row_hi"].iloc[-1])
                # everything a batch needs travels with it: no corpus-sized state is shipped to the workers
                task = {"b": b, "items": list(members(b)), "utts": batch.to_dict("list"), "base": lo,
                        "starts": starts[lo:hi], "ends": ends[lo:hi],
                        "rec_info": {r: rec_info[r] for r in batch["recording_id"] if r in rec_info}}
                items.append({"b": b, "payload": pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)})
            ctx = ray.data.DataContext.get_current()
            saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
            # ordered output: journal commits (and so the problems table) follow batch order, as in a local run
            ctx.execution_options.preserve_order = True
            ctx.enable_progress_bars = progress
            try:
                shipped = _shippable(encoder)
                ds = ray.data.from_items(items, override_num_blocks=len(items))
                ds = ds.map_batches(_read_task, batch_size=1, num_cpus=read_num_cpus, max_retries=max_retries,
                                    fn_kwargs={"encoder": shipped, "dims": dims, "mix": mix,
                                               "on_audio_error": on_audio_error})
                ds = ds.map_batches(_ExtractActor, batch_size=1, concurrency=num_workers,
                                    num_gpus=num_gpus_per_worker, num_cpus=cpus_per_worker,
                                    max_restarts=max_retries, max_task_retries=max_retries,
                                    fn_constructor_kwargs={"encoder": shipped, "sel": sel, "pooling": pooling,
                                                           "fp16": dtype == "float16",
                                                           "threads": int(max(1, cpus_per_worker)),
                                                           "crash_marker": os.environ.get(RAY_CRASH_ENV)})
                pending: list[int] = []
                pending_stats: list[dict[str, Any]] = []
                last_commit = time.monotonic()
                n_left = len(todo)
                for row in ds.iter_rows():
                    res = pickle.loads(row["payload"])
                    pids.add(int(res["pid"]))
                    tw = time.perf_counter()
                    for layer, lo, values in res["rows"]:
                        w.write_rows(layer, lo, values)
                    timings["writing"] += time.perf_counter() - tw
                    for k, v in res["timings"].items():
                        if k != "writing":
                            timings[k] += v
                    pending.extend(res["items"])
                    pending_stats.append(res["stats"])
                    n_left -= 1
                    if time.monotonic() - last_commit >= commit_every_s or n_left == 0:
                        tc = time.perf_counter()
                        w.commit(pending, _merge(pending_stats))
                        timings["writing"] += time.perf_counter() - tc
                        pending, pending_stats, last_commit = [], [], time.monotonic()
            finally:
                ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        missing = [i for i in range(len(utts)) if i not in w.done]
        if missing:  # never finalize a store with holes
            raise RuntimeError(f"{w.dir}: Ray returned no result for {len(missing)} utterance(s) "
                               f"(first: {missing[:5]}); rerun to resume")
        stats = _merge(w.batch_stats)
        problems = problems_frame(stats.pop("problems"))
        prov = store_provenance(fields, encoder, sel, corpus, len(utts), batch_size, stats, len(problems),
                                resumed=resumed, n_reused=n_reused, seconds=time.perf_counter() - t_start,
                                timings=timings)
        prov["backend"] = {"name": "ray", "ray_version": ray.__version__, "num_workers": num_workers,
                           "num_gpus_per_worker": num_gpus_per_worker, "cpus_per_worker": cpus_per_worker,
                           "max_retries": max_retries, "n_worker_processes": len(pids)}
        return w.finalize(prov, problems)
