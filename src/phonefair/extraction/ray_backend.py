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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from phonefair.corpus.schema import Corpus
from phonefair.encoders.base import Encoder
from phonefair.extraction.loop import (BatchJob, BatchPlan, ExtractionSetup, audio_sources, empty_stats,
                                       finish_store, merge_stats, new_timings, phone_times, prepare)
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


def _read_task(batch: dict[str, np.ndarray], *, job: BatchJob) -> dict[str, np.ndarray]:
    """CPU stage: read + resample the audio of each local batch (NaN rows/problems for unusable files)."""
    import pandas as pd

    out = []
    for blob in batch["payload"]:
        task = pickle.loads(blob)
        sink, stats = _Collector(), empty_stats()
        t0 = time.perf_counter()
        waves, ok = job.read(pd.DataFrame(task["utts"]), task["sources"], sink, stats)
        task.update(waves=waves, ok=[_Utt(str(u.recording_id), int(u.row_lo), int(u.row_hi)) for u in ok],
                    rows=sink.rows, stats=stats, t_read=time.perf_counter() - t0)
        out.append(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
    return {"b": batch["b"], "payload": np.array(out, dtype=object)}


class _ExtractActor:
    """Holds the encoder; runs forward + pooling for whole local batches."""

    def __init__(self, job: BatchJob, threads: int, crash_marker: str | None) -> None:
        import torch

        torch.set_num_threads(max(1, threads))  # one actor per core slot: no oversubscription
        self.job = job
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
            timings = {**new_timings(), "audio_read": task["t_read"]}
            base = task["base"]
            self.job.embed(task["waves"], task["ok"], sink, _Window(task["starts"], base),
                           _Window(task["ends"], base), task["sources"], stats, timings)
            out.append(pickle.dumps({"b": task["b"], "items": task["items"], "rows": sink.rows, "stats": stats,
                                     "timings": timings, "pid": os.getpid()}, protocol=pickle.HIGHEST_PROTOCOL))
        return {"b": batch["b"], "payload": np.array(out, dtype=object)}


def _shippable(job: BatchJob) -> BatchJob:
    """The job with an encoder that holds no loaded torch module (actors load the weights themselves, on their own
    device)."""
    unloaded = getattr(job.encoder, "unloaded", None)
    return replace(job, encoder=unloaded()) if callable(unloaded) else job


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
    setup = prepare(corpus, encoder, layers=layers, pooling=pooling, dtype=dtype, batch_size=batch_size,
                    device=device, mix=mix, on_audio_error=on_audio_error, revision=revision)
    done = open_store(store_root, setup.key)
    if done is not None:
        return done
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        started = True
    try:
        return _run(ray, corpus, setup, store_root=store_root, batch_size=batch_size, num_workers=num_workers,
                    num_gpus_per_worker=num_gpus_per_worker, cpus_per_worker=cpus_per_worker,
                    read_num_cpus=read_num_cpus, progress=progress, mix=mix, lock_timeout=lock_timeout,
                    commit_every_s=commit_every_s, max_retries=max_retries)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, corpus: Corpus, setup: ExtractionSetup, *, store_root: str | os.PathLike[str], batch_size: int,
         num_workers: int, num_gpus_per_worker: float, cpus_per_worker: float, read_num_cpus: float, progress: bool,
         mix: bool, lock_timeout: float | None, commit_every_s: float, max_retries: int) -> EmbeddingStore:
    t_start = time.perf_counter()
    job = setup.job()
    plan = BatchPlan.of(corpus, batch_size)
    starts, ends = phone_times(corpus)
    sources = audio_sources(corpus, mix=mix)
    timings = new_timings()

    with StoreWriter(store_root, setup.key, tokens=corpus.phones, dims=job.dims, dtype=setup.dtype,
                     lock_timeout=lock_timeout) as w:
        if w.complete:
            return EmbeddingStore(w.dir)
        todo = plan.unfinished(w.done)
        n_reused = plan.n_utterances - plan.n_utterances_in(todo)
        resumed = bool(w.done)
        pids: set[int] = set()
        if todo:
            items = []
            for b in todo:
                batch = plan.batch(b)
                lo, hi = int(batch["row_lo"].iloc[0]), int(batch["row_hi"].iloc[-1])
                # everything a batch needs travels with it: no corpus-sized state is shipped to the workers
                task = {"b": b, "items": list(plan.members(b)), "utts": batch.to_dict("list"), "base": lo,
                        "starts": starts[lo:hi], "ends": ends[lo:hi],
                        "sources": {r: sources[r] for r in batch["recording_id"] if r in sources}}
                items.append({"b": b, "payload": pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)})
            ctx = ray.data.DataContext.get_current()
            saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
            # ordered output: journal commits (and so the problems table) follow batch order, as in a local run
            ctx.execution_options.preserve_order = True
            ctx.enable_progress_bars = progress
            try:
                shipped = _shippable(job)
                ds = ray.data.from_items(items, override_num_blocks=len(items))
                ds = ds.map_batches(_read_task, batch_size=1, num_cpus=read_num_cpus, max_retries=max_retries,
                                    fn_kwargs={"job": shipped})
                ds = ds.map_batches(_ExtractActor, batch_size=1, concurrency=num_workers,
                                    num_gpus=num_gpus_per_worker, num_cpus=cpus_per_worker,
                                    max_restarts=max_retries, max_task_retries=max_retries,
                                    fn_constructor_kwargs={"job": shipped, "threads": int(max(1, cpus_per_worker)),
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
                        w.commit(pending, merge_stats(pending_stats))
                        timings["writing"] += time.perf_counter() - tc
                        pending, pending_stats, last_commit = [], [], time.monotonic()
            finally:
                ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        missing = [i for i in range(plan.n_utterances) if i not in w.done]
        if missing:  # never finalize a store with holes
            raise RuntimeError(f"{w.dir}: Ray returned no result for {len(missing)} utterance(s) "
                               f"(first: {missing[:5]}); rerun to resume")
        backend = {"name": "ray", "ray_version": ray.__version__, "num_workers": num_workers,
                   "num_gpus_per_worker": num_gpus_per_worker, "cpus_per_worker": cpus_per_worker,
                   "max_retries": max_retries, "n_worker_processes": len(pids)}
        return finish_store(w, setup, corpus, n_utterances=plan.n_utterances, batch_size=batch_size,
                            resumed=resumed, n_reused=n_reused, seconds=time.perf_counter() - t_start,
                            timings=timings, backend=backend)
