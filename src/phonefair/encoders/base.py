"""The :class:`Encoder` protocol: one waveform in, one ``[T, D]`` frame matrix per named layer out.

Layer names follow ``docs/architecture.md``: ``"0"`` … ``"L"`` are ``hidden_states[i]``, ``"cnn"`` is the CNN
feature-encoder output and ``"<L>_norm"`` (e.g. ``"24_norm"``) is the last layer after the encoder's final
LayerNorm for stable-layer-norm models. Lists of layer names are always in depth order
(``cnn``, ``0`` … ``L``, ``L_norm``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from phonefair.encoders.frames import FrameGrid
from phonefair.errors import EncoderError
from phonefair.layers import layer_sort_key, parse_layers  # noqa: F401 - re-exported for encoder modules



@runtime_checkable
class Encoder(Protocol):
    """A frame-level speech encoder."""

    name: str  # short family name, e.g. "wav2vec2", "whisper"
    model_id: str  # hub id or local directory
    revision: str | None  # resolved commit (hub) or None
    layers: list[str]  # the layers ``frames`` returns, depth order
    sample_rate: int  # input rate (16000)
    grid: FrameGrid  # frame i is centred at grid.offset + grid.hop * i seconds
    can_pad: bool  # True when zero-padded batches (with attention mask) give the same frames as one at a time

    def num_frames(self, n_samples: int) -> int:
        """How many frames ``frames`` returns for ``n_samples`` samples."""
        ...

    def frames(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        """``{layer: float32 [T, D]}`` for one mono 16 kHz waveform."""
        ...

    def frames_batch(self, waveforms: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """:meth:`frames` for several waveforms, batched where that cannot change the result."""
        ...

    def layer_dims(self) -> dict[str, int]:
        """``{layer: D}`` for every layer in :attr:`layers`."""
        ...

    def identity(self) -> dict[str, Any]:
        """Everything that determines the numbers ``frames`` returns (used in content-addressed store keys)."""
        ...

    def provenance(self) -> dict[str, Any]:
        """:meth:`identity` plus context (library versions, device, chunking)."""
        ...


def normalise_waveform(x: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance per utterance, exactly as ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``
    (``(x - mean) / sqrt(var + 1e-7)``) but on the unpadded signal, so padding never enters the statistics."""
    x = np.asarray(x, dtype=np.float32)
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)


@contextmanager
def hf_quiet() -> Iterator[None]:
    """Silence transformers' own per-load progress bars (phonefair draws its own) and restore them after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
