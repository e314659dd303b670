"""Where encoder frames sit in time: the frame grid of each encoder family and its exact frame counts.

All wav2vec-style encoders (wav2vec 2.0, XLS-R, MMS, HuBERT, WavLM, data2vec-audio) share one convolutional
front end (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2), so at 16 kHz frame ``i`` covers samples
``[320 i, 320 i + 400)`` (hop 20 ms, receptive field 25 ms, centre ``0.02 i + 0.0125`` s) and an utterance of ``N``
samples has ``floor((N - 400) / 320) + 1`` frames (none when ``N < 400``). The Whisper encoder has the same 20 ms hop
with centred frames (centre ``0.02 i`` s). The phone -> frame rule that uses these grids is in
:mod:`phonefair.extraction.frames`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SAMPLE_RATE", "RECEPTIVE_FIELD", "HOP", "FrameGrid", "WAV2VEC_GRID", "WHISPER_GRID", "num_frames",
           "whisper_num_frames"]

SAMPLE_RATE = 16000
#: receptive field and hop of the wav2vec-style CNN, in samples at 16 kHz
RECEPTIVE_FIELD = 400
HOP = 320


@dataclass(frozen=True)
class FrameGrid:
    """Where encoder frames sit in time: frame ``i`` is centred at ``offset + hop * i`` seconds."""

    hop: float = HOP / SAMPLE_RATE  # 0.02 s
    offset: float = (RECEPTIVE_FIELD / 2) / SAMPLE_RATE  # 0.0125 s

    def centres(self, n_frames: int) -> np.ndarray:
        return self.offset + self.hop * np.arange(n_frames)

    def as_dict(self) -> dict[str, float]:
        return {"hop_s": self.hop, "offset_s": self.offset}


WAV2VEC_GRID = FrameGrid()
WHISPER_GRID = FrameGrid(hop=HOP / SAMPLE_RATE, offset=0.0)


def num_frames(n_samples: int) -> int:
    """Number of wav2vec-style CNN frames for ``n_samples`` samples at 16 kHz: ``floor((N-400)/320)+1``, 0 if N<400."""
    if n_samples < RECEPTIVE_FIELD:
        return 0
    return (n_samples - RECEPTIVE_FIELD) // HOP + 1




def whisper_num_frames(n_samples: int, max_frames: int) -> int:
    """Whisper encoder frames that carry real audio: frame ``i`` (centre ``320 i`` samples) is real iff its centre
    lies inside the audio, ``320 i < N``, so ``T = ceil(N / 320)``, capped at the window's ``max_frames``.

    This matches the feature extractor's own attention mask (mel frame ``j`` is real iff ``160 j < N``, and encoder
    frame ``i`` is centred on mel frame ``2 i``).
    """
    return min(math.ceil(n_samples / HOP), max_frames)
