"""Reading audio: any format libsndfile knows (WAV 16/24/32-bit/float, FLAC, OGG, MP3, NIST SPHERE), resampled
to 16 kHz mono float32 with soxr (HQ). No torchaudio.

Multi-channel files need an explicit policy: pick a ``channel`` or ``mix=True`` (average); silently taking channel
0 would hide a second speaker or a reference microphone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import soxr

__all__ = ["TARGET_SR", "AudioError", "AudioInfo", "audio_info", "audio_problems", "read_audio"]

#: the sampling rate every encoder in phonefair expects
TARGET_SR = 16000

#: |x| at or above this counts as clipped
CLIP_LEVEL = 0.999


class AudioError(ValueError):
    """Audio that cannot be read or used as asked. The message names the file."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts about an audio file (native rate, before resampling)."""

    sampling_rate: int
    num_channels: int
    num_frames: int
    duration: float  # seconds
    subtype: str  # libsndfile subtype, e.g. "PCM_16", "PCM_24", "FLOAT", "MPEG_LAYER_III"


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Header information of an audio file; :class:`AudioError` (naming the file) if it is missing or unreadable."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise AudioError(f"{p}: audio file does not exist")
    try:
        info = sf.info(p)
    except Exception as exc:  # libsndfile raises LibsndfileError / RuntimeError / TypeError on garbage
        raise AudioError(f"{p}: cannot read audio header: {exc}") from exc
    frames = int(info.frames)
    sr = int(info.samplerate)
    if sr <= 0:
        raise AudioError(f"{p}: invalid sampling rate {sr}")
    # soundfile reports a huge sentinel for formats without a frame count (some MP3s); decode to count then.
    if frames < 0 or frames >= 2**62:
        frames = int(_decode(p).shape[0])
    return AudioInfo(sampling_rate=sr, num_channels=int(info.channels), num_frames=frames,
                     duration=frames / sr, subtype=str(info.subtype))


def _decode(p: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    try:
        x, _ = sf.read(p, dtype="float32", always_2d=True, start=start, stop=stop)
    except Exception as exc:
        raise AudioError(f"{p}: cannot decode audio: {exc}") from exc
    return x


def read_audio(path: str | os.PathLike[str], *, target_sr: int = TARGET_SR, channel: int | None = None,
               mix: bool = False, start: float | None = None, end: float | None = None) -> np.ndarray:
    """Read ``path`` as float32 mono at ``target_sr`` (soundfile + soxr HQ).

    ``start`` / ``end`` (seconds, native time line) read a segment. Multi-channel audio: ``channel`` picks one
    (0-based), ``mix=True`` averages all; with neither, :class:`AudioError` explains the choice. A missing,
    corrupt or empty file (or an empty segment) raises :class:`AudioError` naming the file.
    """
    p = os.fspath(path)
    info = audio_info(p)
    if info.num_channels > 1 and channel is None and not mix:
        raise AudioError(f"{p}: {info.num_channels} channels; pass channel=<0..{info.num_channels - 1}> to pick one "
                         f"or mix=True to average them (corpus loaders: mix=True / a 'channel' column)")
    if channel is not None and not 0 <= channel < info.num_channels:
        raise AudioError(f"{p}: channel={channel} out of range (file has {info.num_channels} channel(s))")
    sr = info.sampling_rate
    a = 0 if start is None else int(round(start * sr))
    b = info.num_frames if end is None else int(round(end * sr))
    if a < 0 or (start is not None and end is not None and end < start):
        raise AudioError(f"{p}: invalid segment start={start} end={end}")
    if a >= info.num_frames and info.num_frames > 0:
        raise AudioError(f"{p}: segment start {start} s is past the end of the audio ({info.duration:.3f} s)")
    b = min(b, info.num_frames)
    x = _decode(p, a, b)
    if x.shape[0] == 0:
        raise AudioError(f"{p}: no samples" + ("" if start is None and end is None else f" in [{start}, {end}]"))
    if channel is not None:
        y = x[:, channel]
    else:
        y = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    y = np.ascontiguousarray(y, dtype=np.float32)
    if not np.all(np.isfinite(y)):
        raise AudioError(f"{p}: audio contains NaN or infinite samples")
    if sr != target_sr:
        y = soxr.resample(y, sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    return y


def audio_problems(path: str | os.PathLike[str], samples: np.ndarray, *, clip_fraction: float = 1e-3,
                   silence_rms: float = 1e-4) -> list[dict[str, Any]]:
    """Quality problems of decoded ``samples`` as problem dicts (keys of ``PROBLEM_COLUMNS``).

    Reports: empty audio (error), non-finite samples (error), clipping when more than ``clip_fraction`` of the
    samples have ``|x| >= 0.999`` (warning), and digital silence when the RMS is below ``silence_rms`` (warning).
    """
    p = os.fspath(path)
    x = np.asarray(samples)
    out: list[dict[str, Any]] = []

    def add(severity: str, message: str, action: str) -> None:
        out.append({"severity": severity, "file": p, "line": None, "field": "audio", "message": message,
                    "action": action})

    if x.size == 0:
        add("error", "audio is empty (0 samples)", "skipped recording")
        return out
    if not np.all(np.isfinite(x)):
        add("error", "audio contains NaN or infinite samples", "skipped recording")
        return out
    frac = float(np.mean(np.abs(x) >= CLIP_LEVEL))
    if frac > clip_fraction:
        add("warning", f"clipping: {frac:.2%} of samples have |x| >= {CLIP_LEVEL}", "kept")
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms < silence_rms:
        add("warning", f"silent audio: RMS {rms:.2e} < {silence_rms:g}", "kept")
    return out
