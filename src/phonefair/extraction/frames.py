"""Frame arithmetic and phone pooling: which encoder frames belong to which phone, and how they are averaged.

The frame grids (where each encoder family's frames sit in time) are in :mod:`phonefair.encoders.frames`; the
phone rule is written in terms of a :class:`FrameGrid` so it serves every family.

Phone -> frames rule (``FRAME_RULE``): a phone ``[start, end)`` owns the frames whose centre lies in ``[start, end)``.
When no centre falls inside (phones shorter than a hop, e.g. TIMIT closures and flaps) it gets the single frame
whose centre is nearest the phone midpoint. Indices are clipped to ``[0, T)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# the frame grid belongs to the encoders; re-exported here because the phone rule is written in its terms
from phonefair.encoders.frames import (HOP, RECEPTIVE_FIELD, SAMPLE_RATE, WAV2VEC_GRID, WHISPER_GRID,  # noqa: F401
                                       FrameGrid, num_frames, whisper_num_frames)

Pooling = Literal["mean", "center", "middle_third"]
POOLINGS: tuple[str, ...] = ("mean", "center", "middle_third")

FRAME_RULE = ("frames whose centre (offset + hop*i) lies in [start, end); if none, the single frame whose centre is "
              "nearest the phone midpoint; indices clipped to [0, T)")

#: alignment may run past the audio by this much without counting as truncated (MFA snaps the last boundary to
#: the file end; rounding of times written with few digits)
END_TOLERANCE = 0.010

PAST_END_RULE = ("a phone whose midpoint (start + end) / 2 is at or after the end of the audio lies past the end: "
                 "NaN row + problem; a phone that only ends past the audio (by more than 10 ms) is pooled over "
                 "the frames inside the audio (counted as truncated)")


def audio_end_masks(start: np.ndarray, end: np.ndarray, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """``(past, truncated)`` masks of phones against an audio of ``duration`` seconds (:data:`PAST_END_RULE`).

    Why the midpoint: a phone mostly outside the audio has no frames of its own, and clamping it to the last
    frame would give every such phone the same vector under different labels. Validation and extraction both use
    this function, so what ``validate`` reports as excluded is exactly what extraction stores as NaN.
    """
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        past = (start + end) / 2 >= duration
        truncated = ~past & (end > duration + END_TOLERANCE)
    return past, truncated


def _ceil_index(t: np.ndarray, grid: FrameGrid) -> np.ndarray:
    # first frame index whose centre is >= t. The small epsilon keeps times that sit exactly on a frame centre
    # (e.g. 0.0325 s) from being pushed to the next frame by binary floating point.
    return np.ceil((t - grid.offset) / grid.hop - 1e-9).astype(np.int64)


def phone_frame_ranges(start: np.ndarray, end: np.ndarray, n_frames: int, grid: FrameGrid = WAV2VEC_GRID
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised frame ranges for many phones of one utterance.

    Returns ``(lo, hi, clamped)``: frames ``lo[k] <= i < hi[k]`` belong to phone ``k`` (always at least one frame
    when ``n_frames > 0``); ``clamped[k]`` is True when the phone lies (by its midpoint) outside the audio's frames
    and was clamped to the first/last frame.
    """
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    if n_frames <= 0:
        raise ValueError("utterance has no encoder frames (audio shorter than one receptive field)")
    lo = np.clip(_ceil_index(start, grid), 0, n_frames)
    hi = np.clip(_ceil_index(end, grid), 0, n_frames)
    empty = hi <= lo
    mid = (start + end) / 2
    nearest = np.floor((mid - grid.offset) / grid.hop + 0.5).astype(np.int64)  # round half up, deterministic
    clamped = empty & ((nearest < 0) | (nearest >= n_frames))
    nearest = np.clip(nearest, 0, n_frames - 1)
    lo = np.where(empty, nearest, lo)
    hi = np.where(empty, nearest + 1, hi)
    return lo, hi, clamped


def phone_frames(start: float, end: float, n_frames: int, grid: FrameGrid = WAV2VEC_GRID) -> tuple[int, int]:
    """Frame range ``(lo, hi)`` (``hi`` exclusive) of one phone ``[start, end)`` seconds; see :data:`FRAME_RULE`."""
    lo, hi, _ = phone_frame_ranges(np.array([start]), np.array([end]), n_frames, grid)
    return int(lo[0]), int(hi[0])


def pooling_ranges(start: np.ndarray, end: np.ndarray, n_frames: int, pooling: str,
                   grid: FrameGrid = WAV2VEC_GRID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ranges actually averaged for ``pooling``.

    * ``"mean"``: every frame of the phone (:func:`phone_frame_ranges`).
    * ``"center"``: the one frame of the phone's range whose centre is nearest the phone midpoint.
    * ``"middle_third"``: the frame rule applied to the middle third of the phone in time,
      ``[start + d/3, end - d/3)``, with the same nearest-to-midpoint fallback.
    """
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    lo, hi, clamped = phone_frame_ranges(start, end, n_frames, grid)
    if pooling == "mean":
        return lo, hi, clamped
    if pooling == "center":
        mid = (start + end) / 2
        c = np.floor((mid - grid.offset) / grid.hop + 0.5).astype(np.int64)
        c = np.clip(c, lo, hi - 1)
        return c, c + 1, clamped
    if pooling == "middle_third":
        d = (end - start) / 3
        lo3, hi3, _ = phone_frame_ranges(start + d, end - d, n_frames, grid)
        return lo3, hi3, clamped
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


def _check_ranges(n_frames: int, lo: np.ndarray, hi: np.ndarray) -> None:
    if len(lo) and (lo.min() < 0 or hi.max() > n_frames or (hi <= lo).any()):
        raise ValueError(f"invalid frame ranges for {n_frames} frames")


def _segments(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame indices of all phones laid end to end, where each phone's run starts, and run lengths."""
    n = hi - lo
    starts = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
    idx = np.repeat(lo - starts, n) + np.arange(int(n.sum()))
    return idx, starts, n


def pool_layers(frames: dict[str, np.ndarray], lo: np.ndarray, hi: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`pool` for several layers of one utterance (all ``[T, D_layer]``), sharing the index arithmetic.

    Each phone's frames are gathered into one contiguous run and summed with ``np.add.reduceat``: linear in the
    number of frames, no BLAS threads, no ``[P, T]`` weight matrix (a matrix product was 1.3-8x slower on the
    2-core dev box, a float64 cumulative sum ~6x).
    """
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    if not frames:
        return {}
    n_frames = next(iter(frames.values())).shape[0]
    for name, h in frames.items():
        if h.ndim != 2 or h.shape[0] != n_frames:
            raise ValueError(f"layer {name!r}: hidden states must be [{n_frames}, D], got shape {h.shape}")
    _check_ranges(n_frames, lo, hi)
    if len(lo) == 0:
        return {k: np.zeros((0, h.shape[1]), np.float32) for k, h in frames.items()}
    idx, starts, n = _segments(lo, hi)
    inv = (1.0 / n).astype(np.float32)[:, None]
    return {k: np.add.reduceat(np.asarray(h, dtype=np.float32)[idx], starts, axis=0) * inv
            for k, h in frames.items()}


def pool(hidden: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mean of ``hidden[lo[k]:hi[k]]`` for every phone ``k``: ``[T, D] -> [P, D]`` float32."""
    if hidden.ndim != 2:
        raise ValueError(f"hidden states must be [T, D], got shape {hidden.shape}")
    return pool_layers({"x": hidden}, lo, hi)["x"]
