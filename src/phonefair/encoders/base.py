"""The :class:`Encoder` protocol: one waveform in, one ``[T, D]`` frame matrix per named layer out.

Layer names follow ``docs/architecture.md``: ``"0"`` … ``"L"`` are ``hidden_states[i]``, ``"cnn"`` is the CNN
feature-encoder output and ``"<L>_norm"`` (e.g. ``"24_norm"``) is the last layer after the encoder's final
LayerNorm for stable-layer-norm models. Lists of layer names are always in depth order
(``cnn``, ``0`` … ``L``, ``L_norm``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # runtime import would be circular (extraction imports encoders)
    from phonefair.extraction.frames import FrameGrid


class EncoderError(RuntimeError):
    """A model could not be loaded or run. The message says what was tried and how to fix it."""


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


def layer_sort_key(name: str) -> tuple[int, int]:
    if name == "cnn":
        return (0, 0)
    if name.isdigit():
        return (1, int(name))
    m = re.fullmatch(r"(\d+)_norm", name)
    if m:
        return (2, int(m.group(1)))
    return (3, 0)


def parse_layers(spec: str | int | Sequence[str | int], available: Sequence[str]) -> list[str]:
    """Resolve a layer selection against the ``available`` layer names (depth order).

    ``"all"`` -> every available layer; an int or digit string -> that hidden state; ``"0-4,8"`` -> ranges
    (inclusive) and single layers; ``"cnn"``, ``"L_norm"`` (alias of ``"<L>_norm"``) and ``"-1"`` (the last
    hidden state) are accepted; a list may mix all of these. Unknown layers raise ``ValueError`` listing what exists.
    """
    avail = list(available)
    numeric = sorted(int(a) for a in avail if a.isdigit())
    last = numeric[-1] if numeric else None
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return sorted(avail, key=layer_sort_key)
    items: list[str | int]
    if isinstance(spec, (int, np.integer)):
        items = [int(spec)]
    elif isinstance(spec, str):
        items = [p.strip() for p in spec.split(",") if p.strip()]
    else:
        items = []
        for s in spec:
            items.extend([p.strip() for p in s.split(",") if p.strip()] if isinstance(s, str) else [int(s)])
    if not items:
        raise ValueError(f"empty layer selection {spec!r}; available: {avail}")
    out: list[str] = []
    for it in items:
        names: list[str]
        if isinstance(it, int) or re.fullmatch(r"-?\d+", str(it)):
            i = int(it)
            if i < 0 and last is not None:
                i = last + 1 + i
            names = [str(i)]
        elif m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", str(it)):
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError(f"layer range {it!r} is descending")
            names = [str(i) for i in range(a, b + 1)]
        elif it == "L_norm" and last is not None:
            names = [f"{last}_norm"]
        else:
            names = [str(it)]
        for n in names:
            if n not in avail:
                raise ValueError(f"layer {n!r} (from selection {spec!r}) is not available; available: {avail}")
            if n not in out:
                out.append(n)
    return sorted(out, key=layer_sort_key)


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
