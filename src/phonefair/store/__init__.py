"""Embedding stores: the protocol every analysis reads, an in-memory one and the on-disk one."""

from phonefair.store.base import EmbeddingSource, InMemoryEmbeddings, LayerName
from phonefair.store.disk import EmbeddingStore, StoreError, StoreLockedError, open_store
from phonefair.store.projected import ProjectedEmbeddings, orthonormal_basis

__all__ = ["EmbeddingSource", "EmbeddingStore", "InMemoryEmbeddings", "LayerName", "ProjectedEmbeddings",
           "StoreError", "StoreLockedError", "open_store", "orthonormal_basis"]
