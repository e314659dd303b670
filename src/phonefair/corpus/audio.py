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

from phonefair.errors import DataError

__all__ = ["TARGET_SR", "AudioError", "AudioInfo", "audio_content_problems", "audio_info", "audio_problems",
           "read_audio", "read_samples"]

#: the sampling rate every encoder in phonefair expects
TARGET_SR = 16000

#: |x| at or above this counts as clipped
CLIP_LEVEL = 0.999


class AudioError(DataError):
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


def read_samples(path: str | os.PathLike[str], *, channel: int | None = None, mix: bool = False,
                 start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int]:
    """``(float32 mono samples, native sampling rate)`` of ``path``, as stored: no resampling and no check of the
    values (:func:`audio_content_problems` reports NaN / inf / silence; :func:`read_audio` refuses them).

    ``start`` / ``end`` (seconds) read a segment. Multi-channel audio: ``channel`` picks one (0-based),
    ``mix=True`` averages all; with neither, :class:`AudioError` explains the choice. A missing, corrupt or empty
    file (or an empty segment) raises :class:`AudioError` naming the file.
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
    return np.ascontiguousarray(y, dtype=np.float32), sr


def read_audio(path: str | os.PathLike[str], *, target_sr: int = TARGET_SR, channel: int | None = None,
               mix: bool = False, start: float | None = None, end: float | None = None) -> np.ndarray:
    """Read ``path`` as float32 mono at ``target_sr`` (soundfile + soxr HQ).

    Arguments as :func:`read_samples`. Audio with NaN or infinite samples raises :class:`AudioError` naming the
    file (the resampler would smear them over the whole signal).
    """
    y, sr = read_samples(path, channel=channel, mix=mix, start=start, end=end)
    if not np.all(np.isfinite(y)):
        raise AudioError(f"{os.fspath(path)}: audio contains NaN or infinite samples")
    if sr != target_sr:
        y = soxr.resample(y, sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    return y


def audio_problems(path: str | os.PathLike[str], samples: np.ndarray, *, clip_fraction: float = 1e-3,
                   silence_rms: float = 1e-4) -> list[dict[str, Any]]:
    """Quality problems of decoded ``samples`` as problem dicts (keys of ``PROBLEM_COLUMNS``).

    Reports: empty audio (error), non-finite samples (error), digital silence - every sample zero - (error: the
    recording's phones would be embedded from nothing), clipping when more than ``clip_fraction`` of the samples
    have ``|x| >= 0.999`` (warning), and near-silence when the RMS is below ``silence_rms`` (warning).
    """
    x = np.asarray(samples)
    finite = np.isfinite(x)
    xf = np.where(finite, x, 0.0)
    return _content_problems(os.fspath(path), n=int(x.size), n_nonfinite=int(x.size - finite.sum()),
                             n_clipped=int(np.sum(np.abs(xf) >= CLIP_LEVEL)),
                             sumsq=float(np.sum(np.square(xf, dtype=np.float64))), any_nonzero=bool(np.any(xf)),
                             clip_fraction=clip_fraction, silence_rms=silence_rms)


def audio_content_problems(path: str | os.PathLike[str], *, channel: int | None = None, mix: bool = True,
                           block_seconds: float = 60.0, clip_fraction: float = 1e-3,
                           silence_rms: float = 1e-4) -> list[dict[str, Any]]:
    """:func:`audio_problems` of a file, decoded in blocks of ``block_seconds`` (flat memory on hour-long files)
    with the recording's channel policy (``channel``, else ``mix``). An unreadable file gives one error row."""
    p = os.fspath(path)
    try:
        info = audio_info(p)
        if info.num_channels > 1 and channel is None and not mix:
            raise AudioError(f"{p}: {info.num_channels} channels and no channel policy (channel / mix)")
        if channel is not None and not 0 <= channel < info.num_channels:
            raise AudioError(f"{p}: channel={channel} out of range (file has {info.num_channels} channel(s))")
        n = n_nonfinite = n_clipped = 0
        sumsq, any_nonzero = 0.0, False
        block = max(1, int(block_seconds * info.sampling_rate))
        for x in sf.blocks(p, blocksize=block, dtype="float32", always_2d=True):
            y = x[:, channel] if channel is not None else x.mean(axis=1)
            finite = np.isfinite(y)
            yf = np.where(finite, y, 0.0)
            n += y.size
            n_nonfinite += int(y.size - finite.sum())
            n_clipped += int(np.sum(np.abs(yf) >= CLIP_LEVEL))
            sumsq += float(np.sum(np.square(yf, dtype=np.float64)))
            any_nonzero = any_nonzero or bool(np.any(yf))
    except AudioError as exc:
        return [{"severity": "error", "file": p, "line": None, "field": "audio", "message": str(exc),
                 "action": "recording unusable"}]
    except Exception as exc:  # noqa: BLE001 - libsndfile errors on corrupt data mid-file
        return [{"severity": "error", "file": p, "line": None, "field": "audio",
                 "message": f"{p}: cannot decode audio: {exc}", "action": "recording unusable"}]
    return _content_problems(p, n=n, n_nonfinite=n_nonfinite, n_clipped=n_clipped, sumsq=sumsq,
                             any_nonzero=any_nonzero, clip_fraction=clip_fraction, silence_rms=silence_rms)


def _content_problems(p: str, *, n: int, n_nonfinite: int, n_clipped: int, sumsq: float, any_nonzero: bool,
                      clip_fraction: float, silence_rms: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(severity: str, message: str, action: str) -> None:
        out.append({"severity": severity, "file": p, "line": None, "field": "audio", "message": message,
                    "action": action})

    excluded = "recording excluded (its phones are stored as NaN)"
    if n == 0:
        add("error", "audio is empty (0 samples)", excluded)
        return out
    if n_nonfinite:
        add("error", f"audio contains NaN or infinite samples ({n_nonfinite} of {n})", excluded)
        return out
    if not any_nonzero:
        add("error", "silent audio: all samples are zero (digital silence)", excluded)
        return out
    if n_clipped / n > clip_fraction:
        add("warning", f"clipping: {n_clipped / n:.2%} of samples have |x| >= {CLIP_LEVEL}", "kept")
    rms = float(np.sqrt(sumsq / n))
    if rms < silence_rms:
        add("warning", f"silent audio: RMS {rms:.2e} < {silence_rms:g}", "kept")
    return out
