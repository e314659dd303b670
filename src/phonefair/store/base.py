"""What every later stage reads: phone-token embeddings, one matrix per layer, rows aligned with a token table.

Two implementations share this protocol: the on-disk, memory-mapped :class:`phonefair.store.disk.EmbeddingStore`
written by extraction, and :class:`InMemoryEmbeddings` (used by the planted-truth simulator and by tests).
Probes and the typology analysis accept either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

#: A layer name. ``"0"`` … ``"L"`` are the encoder's hidden states (``hidden_states[i]``); ``"cnn"`` is the
#: convolutional feature encoder output; ``"L_norm"``-style names mark post-final-norm variants. Stores list
#: their layers in depth order in :attr:`EmbeddingSource.layers`.
LayerName = str


@runtime_checkable
class EmbeddingSource(Protocol):
    """Row-aligned phone embeddings.

    ``tokens`` has at least ``speaker`` and ``phone`` (and, from a corpus, every phone-table column); row ``i``
    of ``read(layer)`` is the embedding of ``tokens.iloc[i]``.
    """

    tokens: pd.DataFrame
    layers: list[LayerName]
    provenance: dict[str, Any]

    def read(self, layer: LayerName, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 array ``[len(rows), dim]`` (all rows when ``rows`` is None). Must not load other layers."""
        ...


class InMemoryEmbeddings:
    """An :class:`EmbeddingSource` held in memory (simulations, tests, embeddings computed elsewhere).

    ``phonefair.Embeddings`` is this class; :meth:`from_numpy` is the convenient way in.
    """

    def __init__(self, tokens: pd.DataFrame, arrays: Mapping[LayerName | int, np.ndarray],
                 provenance: dict[str, Any] | None = None) -> None:
        from phonefair.errors import DataError
        from phonefair.layers import layer_order

        self.tokens = tokens.reset_index(drop=True)
        # layer names are strings everywhere (``6`` and ``"6"`` are the same layer); kept in depth order
        self._arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
        if not self._arrays:
            raise DataError("embeddings: no layer given")
        for name, a in self._arrays.items():
            if a.ndim != 2 or a.shape[0] != len(self.tokens):
                raise DataError(f"layer {name!r}: expected shape [{len(self.tokens)}, dim] (one row per token), "
                                f"got {a.shape}")
        self.layers = layer_order(self._arrays)
        self.provenance = dict(provenance or {})

    @classmethod
    def from_numpy(cls, layers: Mapping[LayerName | int, np.ndarray] | np.ndarray, *, speaker: Sequence[Any],
                   phone: Sequence[Any], provenance: dict[str, Any] | None = None, **columns: Sequence[Any]
                   ) -> InMemoryEmbeddings:
        """Phone-token embeddings from arrays: ``layers`` is ``{layer: [n_tokens, dim]}`` (or one array, layer
        ``"0"``); ``speaker`` and ``phone`` label every row; other keyword columns (``recording_id``, ``start``,
        ...) are kept in the token table."""
        arrays = {"0": layers} if isinstance(layers, np.ndarray) else dict(layers)
        tokens = pd.DataFrame({"speaker": np.asarray(speaker).astype(str), "phone": np.asarray(phone).astype(str),
                               **{k: np.asarray(v) for k, v in columns.items()}})
        return cls(tokens, arrays, provenance={"source": "Embeddings.from_numpy", **(provenance or {})})

    def read(self, layer: LayerName, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        try:
            a = self._arrays[str(layer)]
        except KeyError:
            raise KeyError(f"no layer {layer!r}; available: {self.layers}") from None
        out = a if rows is None else a[np.asarray(rows)]
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        dim = next(iter(self._arrays.values())).shape[1] if self._arrays else 0
        return f"InMemoryEmbeddings({len(self.tokens)} tokens, layers={self.layers}, dim={dim})"
