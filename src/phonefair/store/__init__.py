"""Embedding stores: the protocol every analysis reads, an in-memory one and the on-disk one."""

from phonefair.store.base import EmbeddingSource, InMemoryEmbeddings, LayerName

__all__ = ["EmbeddingSource", "InMemoryEmbeddings", "LayerName"]
