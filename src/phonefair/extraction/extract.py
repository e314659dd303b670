"""``extract``: corpus + encoder -> a content-addressed, resumable on-disk :class:`EmbeddingStore`, in this process.

The batch loop itself (utterance plan, audio read, forward pass, pooling, stats) is
:mod:`phonefair.extraction.loop`, shared with the Ray and static-shard drivers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from phonefair.corpus.schema import Corpus
from phonefair.encoders.base import Encoder
from phonefair.extraction.loop import (CRASH_ENV, BatchPlan, audio_sources, finish_store, new_timings, phone_times,
                                       prepare, write_batches)
from phonefair.store.disk import EmbeddingStore, StoreWriter, open_store

__all__ = ["CRASH_ENV", "extract"]


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
    including phones with ``phone`` <NA>. Multi-channel audio follows the recordings table (``channel`` picks one,
    ``mix`` averages them; ``mix=True`` here also mixes recordings with neither set).

    Rows that cannot be embedded are NaN (never zeros, never a guess) with a row in ``store.problems``:
    phones past the end of the audio (:data:`~phonefair.extraction.frames.PAST_END_RULE`; phones only partly
    past it are pooled over the frames inside and counted in provenance ``n_phones_truncated``), phones with
    non-finite times, recordings shorter than one encoder frame, and - with ``on_audio_error="skip"`` -
    recordings whose audio cannot be read or holds NaN/inf samples (``"raise"`` stops with an error naming the
    file).
    """
    setup = prepare(corpus, encoder, layers=layers, pooling=pooling, dtype=dtype, batch_size=batch_size,
                    device=device, mix=mix, on_audio_error=on_audio_error, revision=revision)
    done = open_store(store_root, setup.key)
    if done is not None:
        return done
    encoder = setup.encoder
    job = setup.job()
    plan = BatchPlan.of(corpus, batch_size)
    starts, ends = phone_times(corpus)
    timings = new_timings()
    t_start = time.perf_counter()
    with StoreWriter(store_root, setup.key, tokens=corpus.phones, dims=job.dims, dtype=dtype,
                     lock_timeout=lock_timeout) as w:
        if w.complete:  # another process finished it while we waited for the lock
            return EmbeddingStore(w.dir)
        todo = plan.unfinished(w.done)
        n_reused = plan.n_utterances - plan.n_utterances_in(todo)
        resumed = bool(w.done)  # a journal from an interrupted run was found
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=plan.n_utterances, unit="utt", desc=f"extract {Path(encoder.model_id).name}",
                       initial=n_reused)
        total_h = corpus.hours
        write_batches(job, plan, todo, w, sources=audio_sources(corpus, mix=mix), starts=starts, ends=ends,
                      commit_every_s=commit_every_s, timings=timings, bar=bar,
                      postfix=lambda done_s: f"audio {done_s / 3600:.3f} h (corpus {total_h:.3f} h)")
        if bar is not None:
            bar.close()
        return finish_store(w, setup, corpus, n_utterances=plan.n_utterances, batch_size=batch_size,
                            resumed=resumed, n_reused=n_reused, seconds=time.perf_counter() - t_start,
                            timings=timings)
