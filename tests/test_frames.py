"""Frame formula, phone -> frame rule and pooling (hand-computed examples, brute-force references)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phonefair.extraction.frames import (WAV2VEC_GRID, WHISPER_GRID, num_frames, phone_frame_ranges, phone_frames,
                                         pool, pool_layers, pooling_ranges, whisper_num_frames)


def _cascade(n: int) -> int:
    for k, s in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2), strict=True):
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


def test_num_frames_formula_matches_conv_cascade() -> None:
    assert [num_frames(n) for n in (0, 399, 400, 719, 720, 16000, 16399, 16400, 48000)] == \
        [0, 0, 1, 1, 2, 49, 50, 51, 149]
    for n in range(0, 20000, 7):
        assert num_frames(n) == _cascade(n), n


def test_phone_frames_hand_computed() -> None:
    # frame centres: 0.0125, 0.0325, 0.0525, 0.0725, 0.0925, ...
    assert phone_frames(0.0, 0.1, 10) == (0, 5)  # centres 0.0125..0.0925 inside [0, 0.1)
    assert phone_frames(0.0325, 0.0725, 10) == (1, 3)  # start on a centre is inside, end on a centre is outside
    assert phone_frames(0.033, 0.073, 10) == (2, 4)
    # 10 ms phone with no centre inside [0.035, 0.045): nearest centre to midpoint 0.04 is 0.0325 (frame 1)
    assert phone_frames(0.035, 0.045, 10) == (1, 2)
    # midpoint 0.043 -> nearest centre 0.0525 (frame 2)
    assert phone_frames(0.038, 0.048, 10) == (2, 3)
    # range clipped to the available frames
    assert phone_frames(0.15, 0.5, 10) == (7, 10)


def test_phone_frames_past_end_is_clamped_and_flagged() -> None:
    lo, hi, clamped = phone_frame_ranges(np.array([0.0, 0.5, 0.19]), np.array([0.05, 0.6, 0.195]), 10)
    assert lo.tolist() == [0, 9, 9] and hi.tolist() == [2, 10, 10]
    assert clamped.tolist() == [False, True, False]  # 0.19-0.195: nearest centre 0.1925 = frame 9 exists


def test_phone_frames_brute_force() -> None:
    rng = np.random.default_rng(0)
    n = 40
    starts = rng.uniform(0, 0.8, 500)
    ends = starts + rng.uniform(0.0, 0.2, 500)
    lo, hi, _ = phone_frame_ranges(starts, ends, n)
    centres = WAV2VEC_GRID.centres(n)
    for s, e, a, b in zip(starts, ends, lo, hi, strict=True):
        inside = np.flatnonzero((centres >= s) & (centres < e))
        if len(inside):
            assert (a, b) == (inside[0], inside[-1] + 1)
        else:
            assert b == a + 1 and a == int(np.argmin(np.abs(centres - (s + e) / 2)))


def test_pool_mean_equals_loop_and_other_poolings() -> None:
    rng = np.random.default_rng(1)
    h = rng.standard_normal((30, 5)).astype(np.float32)
    s = np.array([0.0, 0.1, 0.205, 0.3])
    e = np.array([0.1, 0.205, 0.21, 0.45])
    lo, hi, _ = pooling_ranges(s, e, 30, "mean")
    got = pool(h, lo, hi)
    ref = np.stack([h[a:b].mean(0) for a, b in zip(lo, hi, strict=True)])
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    assert (lo.tolist(), hi.tolist()) == ([0, 5, 10, 15], [5, 10, 11, 22])
    # center: frame nearest the midpoint (0.05 -> frame 2 (0.0525); 0.375 -> frame 18 (0.3725))
    clo, chi, _ = pooling_ranges(s, e, 30, "center")
    assert clo.tolist()[0] == 2 and clo.tolist()[3] == 18 and (chi - clo == 1).all()
    # middle third of [0.3, 0.45) is [0.35, 0.4): centres 0.3525, 0.3725, 0.3925 -> frames 17..19
    mlo, mhi, _ = pooling_ranges(s, e, 30, "middle_third")
    assert (mlo[3], mhi[3]) == (17, 20)
    with pytest.raises(ValueError, match="unknown pooling"):
        pooling_ranges(s, e, 30, "max")


def test_pool_layers_overlapping_and_unsorted_ranges() -> None:
    rng = np.random.default_rng(2)
    h = {"0": rng.standard_normal((50, 6)).astype(np.float32), "cnn": rng.standard_normal((50, 3)).astype(np.float32)}
    lo = np.array([10, 0, 3, 3, 49, 20])  # overlapping, unsorted, shared fallback frames, last frame
    hi = np.array([12, 5, 4, 4, 50, 45])
    got = pool_layers(h, lo, hi)
    for k in h:
        ref = np.stack([h[k][a:b].mean(0) for a, b in zip(lo, hi, strict=True)])
        np.testing.assert_allclose(got[k], ref, atol=1e-6)
    assert pool_layers(h, np.array([], int), np.array([], int))["0"].shape == (0, 6)
    with pytest.raises(ValueError, match="hidden states"):
        pool_layers({"0": h["0"], "1": h["0"][:10]}, lo, hi)


def test_pool_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError):
        pool(np.zeros((3, 2), np.float32), np.array([2]), np.array([4]))
    with pytest.raises(ValueError, match="no encoder frames"):
        phone_frame_ranges(np.array([0.0]), np.array([0.1]), 0)


def test_whisper_frames_real_audio_only() -> None:
    # frame i is centred at 320 i samples: real iff 320 i < N
    for n in (1, 320, 321, 16000, 16001, 47999, 48000, 100000):
        expected = sum(1 for i in range(150) if 320 * i < n)
        assert whisper_num_frames(n, 150) == expected == min(math.ceil(n / 320), 150)
    assert WHISPER_GRID.centres(3).tolist() == pytest.approx([0.0, 0.02, 0.04])
