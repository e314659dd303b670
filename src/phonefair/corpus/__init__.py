"""Corpus stage: loaders, phone-set normalisation, audio reading and validation.

``load_corpus(kind, root, **options)`` is the one entry point the CLI and the run configuration use; each loader is
also importable on its own (``phonefair.corpus.timit.load_timit`` …).
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

from phonefair.corpus.schema import Corpus, CorpusError

#: kind -> (module, function). Imported lazily so optional dependencies stay optional.
LOADERS: dict[str, tuple[str, str]] = {
    "timit": ("phonefair.corpus.timit", "load_timit"),
    "l2arctic": ("phonefair.corpus.l2arctic", "load_l2arctic"),
    "buckeye": ("phonefair.corpus.buckeye", "load_buckeye"),
    "textgrid": ("phonefair.corpus.textgrid_corpus", "load_textgrid_corpus"),
    "lhotse": ("phonefair.corpus.lhotse_io", "load_lhotse_dir"),
    "saved": ("phonefair.corpus.schema", "Corpus.load"),
}


def _loader(kind: str) -> Any:
    if kind not in LOADERS:
        raise CorpusError(f"unknown corpus kind {kind!r}; choose one of {sorted(LOADERS)}")
    module, attr = LOADERS[kind]
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def loader_function(kind: str) -> Any:
    """The loader function of ``kind`` (its keyword parameters and annotations define ``[corpus.options]``)."""
    return _loader(kind)


def loader_options(kind: str) -> list[str]:
    """The keyword options the loader of ``kind`` accepts (what ``[corpus.options]`` may hold)."""
    params = inspect.signature(_loader(kind)).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY]


def load_corpus(kind: str, root: str | os.PathLike[str], **options: Any) -> Corpus:
    """Load a corpus of the given ``kind`` (one of :data:`LOADERS`) from ``root``."""
    obj = _loader(kind)
    if unknown := sorted(set(options) - set(loader_options(kind))):
        raise CorpusError(f"{kind} loader: unknown option(s) {unknown}; options: {loader_options(kind)}")
    if not os.path.exists(root):
        raise CorpusError(f"corpus root {os.fspath(root)!r} does not exist")
    return obj(root, **options)


__all__ = ["LOADERS", "Corpus", "CorpusError", "load_corpus", "loader_function", "loader_options"]
