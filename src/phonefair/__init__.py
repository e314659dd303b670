"""phonefair: which speaker groups does a self-supervised speech encoder serve worse, where, and why?

From embeddings you already have (five lines)::

    import phonefair as pf
    emb = pf.Embeddings.from_numpy({"6": X6, "12": X12}, speaker=speaker_ids, phone=phone_labels)
    audit = pf.Audit(emb, groups={"spk1": "L1", "spk2": "L2", ...})
    print(audit.summary_text())       # served worse? (gap, CI) where? (layers) why? (random / systematic)
    audit.report("out")               # out/report.html + tables

From a corpus and encoders, one TOML file: ``phonefair.run("my.toml")`` (see docs/walkthrough.md). Names are
imported lazily, so ``import phonefair`` stays cheap (torch loads only when a stage needs it).
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
    "Embeddings": "phonefair.store",
    "Audit": "phonefair.audit",
    "ProbeSettings": "phonefair.settings",
    "AnalysisSettings": "phonefair.settings",
    "fit_probes": "phonefair.probes",
    "analyze": "phonefair.analysis",
    "served_worse": "phonefair.analysis",
    "compare": "phonefair.pipeline",
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
