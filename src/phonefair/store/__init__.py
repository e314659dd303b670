"""Embedding stores: the protocol every analysis reads, an in-memory one and the on-disk one."""

from phonefair.store.base import EmbeddingSource, InMemoryEmbeddings, LayerName
from phonefair.store.disk import EmbeddingStore, StoreError, StoreLockedError, open_store

#: the public name of in-memory phone-token embeddings (``phonefair.Embeddings.from_numpy(...)``)
Embeddings = InMemoryEmbeddings

__all__ = ["EmbeddingSource", "Embeddings", "EmbeddingStore", "InMemoryEmbeddings", "LayerName", "StoreError",
           "StoreLockedError", "open_store"]
