"""An :class:`~phonefair.store.EmbeddingSource` with chosen directions projected out of chosen layers.

Used by the "remove the group direction" experiment (:mod:`phonefair.probes.identity`): every later stage (phone
probes, typology) reads the projected source exactly as it would read the original, so a before/after comparison
differs only in the removed directions.

Projection: for a layer with directions ``U [D, k]`` (any basis; orthonormalised here into ``Q``), a row ``x`` becomes
``x - Q Q^T x``: its component along every direction is set to zero, everything orthogonal is unchanged. Any linear
read-out ``w`` that lies in ``span(U)`` becomes constant on the projected rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from phonefair.errors import ConfigError
from phonefair.store.base import EmbeddingSource, LayerName

__all__ = ["ProjectedEmbeddings", "orthonormal_basis"]


def orthonormal_basis(directions: np.ndarray, *, tol: float = 1e-8) -> np.ndarray:
    """An orthonormal basis ``Q [D, r]`` of the column span of ``directions [D, k]`` (``r <= k``; dependent or zero
    columns add nothing)."""
    u = np.asarray(directions, dtype=np.float64)
    if u.ndim == 1:
        u = u[:, None]
    if u.ndim != 2:
        raise ConfigError(f"directions must be a [dim, k] matrix, got shape {u.shape}")
    if u.shape[1] == 0:
        return np.zeros((u.shape[0], 0))
    q, s, _ = np.linalg.svd(u, full_matrices=False)
    keep = s > tol * max(1.0, float(s.max()))
    return q[:, keep]


class ProjectedEmbeddings:
    """``source`` with ``directions[layer]`` (``[dim, k]``, columns are directions in the layer's raw space)
    projected out of that layer's rows; layers without directions are passed through unchanged."""

    def __init__(self, source: EmbeddingSource, directions: Mapping[LayerName, np.ndarray], *,
                 label: str = "projected") -> None:
        self.source = source
        self.tokens: pd.DataFrame = source.tokens
        self.layers: list[LayerName] = list(source.layers)
        unknown = [str(k) for k in directions if str(k) not in self.layers]
        if unknown:
            raise ConfigError(f"ProjectedEmbeddings: layer(s) {unknown} not in the source; available: {self.layers}")
        self._q = {str(k): orthonormal_basis(v) for k, v in directions.items()}
        self.provenance: dict[str, Any] = {
            **dict(getattr(source, "provenance", {}) or {}),
            "projection": {"label": label,
                           "removed_directions": {k: int(q.shape[1]) for k, q in self._q.items()}},
        }

    def basis(self, layer: LayerName) -> np.ndarray:
        """The orthonormal basis ``[D, r]`` removed from ``layer`` (``r = 0`` for untouched layers)."""
        return self._q.get(str(layer), np.zeros((0, 0)))

    def read(self, layer: LayerName, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(self.source.read(layer, rows), dtype=np.float32)
        q = self._q.get(str(layer))
        if q is None or q.shape[1] == 0:
            return x
        if q.shape[0] != x.shape[1]:
            raise ConfigError(f"ProjectedEmbeddings: layer {layer!r} has dim {x.shape[1]} but its directions "
                              f"have dim {q.shape[0]}")
        qf = q.astype(np.float32)
        return x - (x @ qf) @ qf.T

    def __repr__(self) -> str:
        removed = {k: int(q.shape[1]) for k, q in self._q.items()}
        return f"ProjectedEmbeddings({self.source!r}, removed={removed})"
