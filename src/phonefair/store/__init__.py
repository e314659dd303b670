"""Embedding stores: the protocol every analysis reads, an in-memory one, the on-disk one, and a projected view."""

from phonefair.store.base import EmbeddingSource, InMemoryEmbeddings, LayerName
from phonefair.store.disk import EmbeddingStore, StoreError, StoreLockedError, open_store
from phonefair.store.projected import ProjectedEmbeddings, orthonormal_basis

#: the public name of in-memory phone-token embeddings (``phonefair.Embeddings.from_numpy(...)``)
Embeddings = InMemoryEmbeddings

__all__ = ["EmbeddingSource", "EmbeddingStore", "Embeddings", "InMemoryEmbeddings", "LayerName",
           "ProjectedEmbeddings", "StoreError", "StoreLockedError", "open_store", "orthonormal_basis"]
