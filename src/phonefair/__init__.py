"""phonefair: phone-level random vs systematic error of self-supervised speech encoders, per speaker group.

The pipeline, one function per stage (DataFrame in, DataFrame out)::

    corpus = phonefair.load_corpus("timit", "/data/TIMIT")                 # Corpus: phones / speakers / recordings
    groups = phonefair.assign_groups(corpus, phonefair.GroupSpec(attributes=("dialect",))).groups
    store = phonefair.extract(corpus, "facebook/wav2vec2-base", store_root="stores")
    probes = phonefair.fit_probes(store, groups)                             # .tables(): accuracy, in-group benefit…
    typology = phonefair.analyze(store, groups, probe_results=probes)      # .tables(): decomposition, verdict…

or all of it from a TOML configuration: ``phonefair.run("my.toml")`` (see docs/walkthrough.md).
Names are imported lazily, so ``import phonefair`` stays cheap (torch loads only when a stage needs it).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "Corpus": "phonefair.corpus.schema",
    "CorpusError": "phonefair.corpus.schema",
    "load_corpus": "phonefair.corpus",
    "align_corpus": "phonefair.align",
    "validate_corpus": "phonefair.corpus.validate",
    "GroupSpec": "phonefair.groups",
    "assign_groups": "phonefair.groups",
    "split_speakers": "phonefair.groups",
    "build_synthetic_corpus": "phonefair.synth.corpus",
    "simulate": "phonefair.synth.simulate",
    "load_encoder": "phonefair.encoders",
    "extract": "phonefair.extraction",
    "EmbeddingStore": "phonefair.store",
    "InMemoryEmbeddings": "phonefair.store",
    "fit_probes": "phonefair.probes",
    "analyze": "phonefair.analysis",
    "finetune": "phonefair.finetune",
    "compare_audits": "phonefair.finetune",
    "load_config": "phonefair.config",
    "run": "phonefair.pipeline",
    "demo": "phonefair.pipeline",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'phonefair' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
