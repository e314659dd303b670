"""Corpus stage: loaders, phone-set normalisation, audio reading and validation."""

from phonefair.corpus.schema import Corpus, CorpusError

__all__ = ["Corpus", "CorpusError"]
