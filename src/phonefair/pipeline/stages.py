"""The pipeline's stages, each a small function over the :class:`~phonefair.config.RunConfig`.

:class:`StageFunctions` is the stage registry: ``run`` takes one, so a test (or a user) swaps a stage by passing
another function, never by patching module globals.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair.config import EncoderSettings, RunConfig
from phonefair.corpus.schema import Corpus
from phonefair.errors import DataError, EncoderError
from phonefair.io import write_json
from phonefair.pipeline.cache import MARKER, cache_key
from phonefair.pipeline.inputs import describe_changes, file_fingerprint, fingerprint_hash, input_fingerprints
from phonefair.store.base import EmbeddingSource

__all__ = ["Log", "StageFunctions", "DEFAULT_STAGES", "load_corpus", "validate", "prepare_corpus", "assign",
           "resolve_encoder", "extract_store", "extraction_kwargs", "device_for", "LazySource", "Prepared", "preflight",
           "single_threaded_blas"]


class Log:
    """Timestamped progress lines on stderr (silent when disabled), and the wall time of each timed stage
    (:meth:`timed`; recorded in ``provenance.json`` under ``timing_s`` whether or not lines are printed)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[phonefair {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[stage]``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t

    def timing_line(self) -> str:
        """``corpus 4.0 s, probe [x] 8.9 s, ...``: where the run's time went."""
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with numpy's BLAS on one thread. The typology and the lenses do many small matrix products;
    on two cores that other processes also use, OpenBLAS's threads made the demo's typology 3x and its lenses 2.5x
    slower in wall time than one thread (docs/usage.md, "How long the demo takes"). Torch's threads are set per
    stage (``[probes] threads``)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ---------------------------------------------------------------------------------------------- corpus
def load_corpus(cfg: RunConfig, out_dir: Path, *, progress: bool = True) -> Corpus:
    """Load the corpus named by ``[corpus]`` (``kind = "synthetic"`` builds one under ``out_dir/synth``)."""
    if cfg.corpus.kind == "synthetic":
        from phonefair.synth.corpus import build_synthetic_corpus

        options = {"seed": cfg.run.seed, **dict(cfg.corpus.options)}
        return build_synthetic_corpus(out_dir / "synth", overwrite=True, **{"progress": progress, **options})
    from phonefair.corpus import load_corpus as load

    assert cfg.corpus.root is not None  # checked by the config
    return load(cfg.corpus.kind, cfg.corpus.root, **dict(cfg.corpus.options))


def validate(corpus: Corpus, cfg: RunConfig, *, progress: bool = False
             ) -> tuple[pd.DataFrame, dict[str, Any], bool, str]:
    """``validate_corpus`` → (problems table, summary, ok, text), group sizes checked for ``[groups]``; the audio
    content is read unless ``[corpus] check_audio = "headers"``."""
    from phonefair.corpus.validate import validate_corpus

    cols = cfg.groups.columns
    group_by = cols[0] if len(cols) == 1 and cols[0] in corpus.speakers.columns else None
    rep = validate_corpus(corpus, group_by=group_by, min_speakers_per_group=cfg.groups.min_speakers,
                          decode_audio=cfg.corpus.check_audio == "content", progress=progress)
    return rep.problems, dict(rep.summary), bool(rep.ok), rep.to_text()


def with_audio_fingerprints(corpus: Corpus) -> Corpus:
    """The recordings table with each audio file's fingerprint (extraction stores are keyed by it)."""
    rec = corpus.recordings.copy()
    rec["audio_fingerprint"] = [file_fingerprint(corpus.audio_path(r)) for r in rec["recording_id"]]
    return corpus.with_tables(recordings=rec)


@dataclass
class Prepared:
    """What every later stage (fine-tuning included) starts from."""

    corpus: Corpus
    fingerprint: str
    validation: dict[str, Any]
    inputs_changed: str | None
    ran: bool


def prepare_corpus(cfg: RunConfig, out: Path, log: Log, stages: StageFunctions) -> Prepared:
    """The corpus stage: reuse ``out/corpus`` when neither the settings nor any input file changed."""
    inputs = {} if cfg.corpus.kind == "synthetic" else input_fingerprints(cfg.corpus.root, cfg.corpus.options,
                                                                           exclude=out)
    key = cache_key("corpus", cfg.corpus.to_dict(), cfg.corpus.kind == "synthetic" and cfg.run.seed,
                    fingerprint_hash(inputs))
    cdir, cmark = out / "corpus", out / "corpus" / MARKER
    previous = json.loads(cmark.read_text()) if cmark.is_file() else None
    if previous is not None and previous.get("key") == key:
        log(f"corpus: cached ({cdir})")
        corpus = Corpus.load(cdir)
        return Prepared(corpus, corpus.fingerprint(), previous.get("validation", {}), None, False)
    changed = None
    if previous is not None:
        old_inputs = previous.get("inputs", {})
        changed = describe_changes(old_inputs, inputs) if old_inputs != inputs else "corpus settings changed"
        log(f"corpus: reloading ({changed})")
    else:
        log(f"corpus: loading {cfg.corpus.kind} from {cfg.corpus.root or out / 'synth'}")
    cmark.unlink(missing_ok=True)
    corpus = with_audio_fingerprints(stages.load_corpus(cfg, out, progress=log.enabled))
    problems, vsummary, ok, text = stages.validate(corpus, cfg, progress=log.enabled)
    if corpus.phones.empty:
        raise DataError(f"corpus has no phone tokens:\n{text}")
    if not ok and cfg.corpus.strict:
        raise DataError(f"corpus failed validation ([corpus] strict = true):\n{text}")
    if not ok:  # reported skips: the run goes on, the report lists them
        n_err = int((problems["severity"] == "error").sum()) if "severity" in problems else len(problems)
        log(f"corpus: {n_err} problem(s) of severity 'error' (items excluded); see tables/problems.csv")
    corpus = corpus.with_tables(problems=problems) if problems is not corpus.problems else corpus
    corpus.save(cdir)
    val = {"summary": vsummary, "text": text}
    write_json(cmark, {"stage": "corpus", "key": key, "validation": val, "inputs": inputs})
    return Prepared(corpus, corpus.fingerprint(), val, changed, True)


def assign(corpus: Corpus, cfg: RunConfig) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame]:
    """(groups: speaker → label, excluded speakers, group summary) for ``[groups]``."""
    from phonefair import groups as G

    a = G.assign_groups(corpus.speakers, cfg.groups)
    if a.groups.empty:
        reasons = a.excluded["reason"].value_counts()
        why = "; ".join(f"{n} speaker(s): {r}" for r, n in reasons.head(3).items())
        raise DataError(f"no speaker group is usable ([groups] {cfg.groups.name}, min_speakers = "
                        f"{cfg.groups.min_speakers}): {why}")
    return a.groups.rename(cfg.groups.name), a.excluded, G.group_summary(corpus, a)


def preflight(corpus: Corpus, cfg: RunConfig, out_dir: Path) -> tuple[list[str], list[str]]:
    """Everything that would fail later, checked before any expensive step: the audit design (group sizes, the
    reference, folds; pilot-sized groups are warnings) and every encoder (model found, layers, device).
    Returns ``(errors, warnings)``, each a list of sentences naming the setting or group."""
    from phonefair.audit.design import Design

    errors: list[str] = []
    warnings: list[str] = []
    try:
        groups, _, _ = assign(corpus, cfg)
        d = Design.build(_TokensOnly(corpus.phones), groups, reference=cfg.groups.reference,
                         min_speakers=cfg.groups.min_speakers, exclude_phones=cfg.probes.exclude_phones,
                         folds=cfg.probes.folds, repeats=cfg.probes.repeats, seed=cfg.run.seed)
        warnings += d.warnings
        if d.n_folds > d.n_speakers:
            errors.append(f"[probes] folds = {cfg.probes.folds}: only {d.n_speakers} speakers are analysed")
    except Exception as exc:  # noqa: BLE001 - every failure becomes one sentence of the report
        errors.append(f"[groups]: {exc}")
    for enc in cfg.encoders:
        try:
            resolve_encoder(enc, cfg, out_dir)  # loads the model's configuration, not its weights
        except Exception as exc:  # noqa: BLE001
            errors.append(f"[[encoders]] {enc.name}: {exc}")
    return errors, warnings


class _TokensOnly:
    """An embedding source with tokens and no vectors (the design needs only the token table)."""

    def __init__(self, tokens: pd.DataFrame) -> None:
        self.tokens = tokens
        self.layers: list[str] = []
        self.provenance: dict[str, Any] = {}

    def read(self, layer: str, rows: Any = None) -> np.ndarray:  # pragma: no cover - never called
        raise RuntimeError("a token-only source has no vectors")


# ---------------------------------------------------------------------------------------------- encoders
def device_for(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; a CUDA request without CUDA is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EncoderError(f"device {name!r} requested but CUDA is not available on this machine")
    return name


def tiny_model_dir(family: str, out_dir: Path, seed: int) -> Path:
    """``out/models/tiny-<family>``, written to a temporary folder and renamed, so a half-written model is never
    taken for a finished one."""
    from phonefair.encoders.tiny import save_tiny_model

    d = out_dir / "models" / f"tiny-{family}"
    done = d / "COMPLETE"
    if done.is_file():
        return d
    tmp = d.with_name(f".{d.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_tiny_model(family, tmp, seed=seed)
        (tmp / "COMPLETE").write_text("ok\n")
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
        try:
            os.replace(tmp, d)
        except OSError:  # a concurrent run finished it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def resolve_encoder(enc: EncoderSettings, cfg: RunConfig, out_dir: Path) -> Any:
    """An ``[[encoders]]`` entry → an :class:`~phonefair.encoders.Encoder` (weights load lazily, so a cached store
    never loads the model)."""
    from phonefair.encoders import load_encoder

    model = enc.model
    if model.startswith("tiny:"):
        model = str(tiny_model_dir(model.split(":", 1)[1], out_dir, cfg.run.seed))
    return load_encoder(model, revision=enc.revision, device=device_for(enc.device), layers=enc.layers,
                        dtype=enc.compute_dtype)


def extract_store(corpus: Corpus, enc: EncoderSettings, cfg: RunConfig, out_dir: Path, progress: bool
                  ) -> EmbeddingSource:
    """One encoder's phone embeddings (store under ``out_dir/stores``), locally or on Ray; both give the same
    content-addressed store."""
    encoder = resolve_encoder(enc, cfg, out_dir)
    kw = dict(progress=progress, **extraction_kwargs(enc, cfg, out_dir))
    x = cfg.extraction
    if x.backend == "ray":
        from phonefair.extraction.ray_backend import extract_ray

        return extract_ray(corpus, encoder, num_workers=x.num_workers, num_gpus_per_worker=x.num_gpus_per_worker,
                           device=device_for(enc.device), ray_address=x.ray_address, **kw)
    from phonefair.extraction import extract
    from phonefair.probes.fit import torch_threads

    # torch's threads as for the probes: every core on an idle machine, one when other processes keep the cores
    # busy (the tiny demo model's small convolutions took 26 s on two contended threads instead of 2 s)
    if device_for(enc.device) != "cpu":
        return extract(corpus, encoder, **kw)
    with torch_threads(0):
        return extract(corpus, encoder, **kw)


def extraction_kwargs(enc: EncoderSettings, cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """The settings every extraction driver (local, Ray, shards) and the store key share."""
    return dict(store_root=out_dir / "stores", layers=enc.layers, pooling=enc.pooling, dtype=enc.dtype,
                batch_size=enc.batch_size, on_audio_error=cfg.extraction.on_audio_error)


class LazySource:
    """An :class:`~phonefair.store.EmbeddingSource` whose token table is the corpus's phone table (known without
    extracting) and whose vectors are extracted — or found in the content-addressed store — on the first read."""

    def __init__(self, tokens: pd.DataFrame, opener: Callable[[], EmbeddingSource]) -> None:
        self.tokens = tokens
        self._opener = opener
        self._source: EmbeddingSource | None = None

    @property
    def source(self) -> EmbeddingSource:
        if self._source is None:
            self._source = self._opener()
            if len(self._source.tokens) != len(self.tokens):
                raise DataError(f"the extracted store has {len(self._source.tokens)} token rows, the corpus "
                                f"{len(self.tokens)}: the store does not belong to this corpus")
        return self._source

    @property
    def opened(self) -> bool:
        return self._source is not None

    @property
    def layers(self) -> list[str]:
        return list(self.source.layers)

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(getattr(self.source, "provenance", {}) or {})

    def read(self, layer: str, rows: Any = None) -> np.ndarray:
        return self.source.read(layer, rows)


def _write_report(*args: Any, **kwargs: Any) -> Path:
    from phonefair.report import write_report

    return write_report(*args, **kwargs)


@dataclass
class StageFunctions:
    """The stage registry ``run`` calls (swap any of them to test or extend the pipeline)."""

    load_corpus: Callable[..., Corpus] = load_corpus
    validate: Callable[..., tuple[pd.DataFrame, dict[str, Any], bool, str]] = validate
    extract: Callable[..., EmbeddingSource] = field(default=None)  # type: ignore[assignment]
    probes: Callable[[Any, str], Any] = field(default=None)  # type: ignore[assignment]
    analyze: Callable[[Any, str], tuple[Any, Any]] = field(default=None)  # type: ignore[assignment]
    report: Callable[..., Path] | None = None

    def __post_init__(self) -> None:
        if self.extract is None:
            self.extract = extract_store
        if self.probes is None:
            self.probes = lambda audit, enc: audit.probes(enc)
        if self.analyze is None:
            self.analyze = lambda audit, enc: (audit.served(enc), audit.typology(enc))
        if self.report is None:
            self.report = _write_report


DEFAULT_STAGES = StageFunctions()
