"""The acoustic baseline encoder: features against an independent numpy computation, frame counts and grid
alignment against the wav2vec convention (and a real wav2vec2 forward pass), extraction into a store, and probes /
typology running on its string-named feature sets ("logmel", "mfcc") on synthetic speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair.corpus.audio import read_audio
from phonefair.corpus.schema import Corpus
from phonefair.encoders import AcousticEncoder, Encoder, load_encoder
from phonefair.encoders.frames import WAV2VEC_GRID, num_frames
from phonefair.errors import ConfigError, EncoderError
from phonefair.extraction import extract

SR = 16000


# ------------------------------------------------------------------ an independent reference computation
def _slaney_hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-12) / 1000) / np.log(6.4))


def _slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))


def reference_logmel(x: np.ndarray, n_mels: int = 80, fmin: float = 0.0, fmax: float = 8000.0,
                     top_db: float = 80.0) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel written out from its definition (no transformers/scipy): (logmel [T, n_mels], band centres in Hz)."""
    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    t = (len(x) - 400) // 320 + 1
    frames = np.stack([x[320 * i: 320 * i + 400] for i in range(t)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * hann, n=512)) ** 2  # [T, 257]
    pts = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(fmin), _slaney_hz_to_mel(fmax), n_mels + 2))
    freqs = np.arange(257) * SR / 512
    bank = np.zeros((257, n_mels))
    for m in range(n_mels):
        lo, c, hi = pts[m: m + 3]
        tri = np.maximum(0.0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
        bank[:, m] = tri * 2.0 / (hi - lo)  # Slaney: constant area
    db = 10 * np.log10(np.maximum(power @ bank, 1e-10))
    return np.maximum(db, db.max() - top_db), pts[1:-1]


def reference_mfcc(logmel: np.ndarray, n_mfcc: int = 13, width: int = 2) -> np.ndarray:
    """DCT-II (orthonormal) by its matrix, then HTK regression deltas with repeated edge frames, twice."""
    n = logmel.shape[1]
    k, j = np.arange(n_mfcc)[:, None], np.arange(n)[None, :]
    dct = np.sqrt(2 / n) * np.cos(np.pi * k * (2 * j + 1) / (2 * n))
    dct[0] /= np.sqrt(2)
    c = logmel @ dct.T

    def delta(a: np.ndarray) -> np.ndarray:
        p = np.concatenate([np.repeat(a[:1], width, 0), a, np.repeat(a[-1:], width, 0)])
        t = len(a)
        num = sum(w * (p[width + w: width + w + t] - p[width - w: width - w + t]) for w in range(1, width + 1))
        return num / (2 * sum(w * w for w in range(1, width + 1)))

    d1 = delta(c)
    return np.concatenate([c, d1, delta(d1)], axis=1)


def _speechlike(n: int, seed: int = 0) -> np.ndarray:
    """A gliding two-formant tone with noise and a silent gap: band energies change from frame to frame."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = np.sin(2 * np.pi * (300 + 400 * t) * t) + 0.5 * np.sin(2 * np.pi * (1800 - 300 * t) * t)
    x = x * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(n)
    x[n // 3: n // 3 + 1600] = 0.0  # 100 ms of digital silence: exercises the top_db floor
    return x.astype(np.float32)


# ------------------------------------------------------------------ features
def test_is_an_encoder_with_string_feature_sets() -> None:
    enc = load_encoder("acoustic")
    assert isinstance(enc, AcousticEncoder) and isinstance(enc, Encoder)
    assert enc.layers == ["logmel", "mfcc"]
    assert enc.layer_dims() == {"logmel": 80, "mfcc": 39}
    assert load_encoder("acoustic", layers="mfcc").layers == ["mfcc"]
    assert enc.grid == WAV2VEC_GRID


@pytest.mark.parametrize("n", [400, 1040, 24_000 + 137])
def test_logmel_and_mfcc_match_reference(n: int) -> None:
    x = _speechlike(n)
    got = AcousticEncoder().frames(x)
    ref, _ = reference_logmel(x)
    assert got["logmel"].dtype == np.float32 and got["logmel"].shape == ref.shape
    np.testing.assert_allclose(got["logmel"], ref, atol=2e-3)  # dB
    np.testing.assert_allclose(got["mfcc"], reference_mfcc(ref.astype(np.float64)), atol=2e-2)


def test_non_default_parameters_match_reference() -> None:
    x = _speechlike(12_000, seed=1)
    enc = AcousticEncoder(n_mels=40, n_mfcc=20, delta_width=3, fmin=50.0, fmax=7000.0, top_db=60.0)
    got = enc.frames(x)
    ref, _ = reference_logmel(x, n_mels=40, fmin=50.0, fmax=7000.0, top_db=60.0)
    np.testing.assert_allclose(got["logmel"], ref, atol=2e-3)
    np.testing.assert_allclose(got["mfcc"], reference_mfcc(ref, n_mfcc=20, width=3), atol=2e-2)
    assert enc.layer_dims() == {"logmel": 40, "mfcc": 60}


def test_tone_peaks_in_its_band_and_gain_does_not_matter() -> None:
    t = np.arange(8000) / SR
    x = np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    enc = AcousticEncoder()
    lm = enc.frames(x)["logmel"]
    _, centres = reference_logmel(x)
    assert set(lm.argmax(1)) == {int(np.argmin(np.abs(centres - 1000.0)))}
    for k, v in enc.frames(100 * x).items():  # per-utterance gain normalisation: the level does not matter
        np.testing.assert_allclose(v, enc.frames(x)[k], atol=1e-3)


def test_cmn_removes_the_utterance_mean() -> None:
    x = _speechlike(16_000)
    plain, cmn = AcousticEncoder().frames(x), AcousticEncoder(cmn=True).frames(x)
    for k in plain:
        np.testing.assert_allclose(cmn[k].mean(0), 0.0, atol=1e-3)
        np.testing.assert_allclose(cmn[k], plain[k] - plain[k].mean(0), atol=1e-3)


# ------------------------------------------------------------------ frame grid
def test_frame_counts_follow_the_wav2vec_formula() -> None:
    enc = AcousticEncoder()
    for n in [400, 401, 719, 720, 721, 1039, 1040, 16_000, 16_321]:
        t = enc.num_frames(n)
        assert t == num_frames(n) == (n - 400) // 320 + 1
        assert {v.shape[0] for v in enc.frames(_speechlike(n)).values()} == {t}
    assert enc.num_frames(399) == 0
    with pytest.raises(EncoderError, match="too short"):
        enc.frames(np.zeros(399, np.float32))


def test_frame_counts_equal_a_real_wav2vec2_forward_pass() -> None:
    import torch

    from phonefair.encoders.tiny import tiny_model

    model, _ = tiny_model("wav2vec2")
    enc = AcousticEncoder()
    for n in [400, 719, 720, 5_000, 16_321]:
        with torch.inference_mode():
            t = model(torch.zeros(1, n)).last_hidden_state.shape[1]
        assert enc.frames(_speechlike(n))["logmel"].shape[0] == t


@pytest.mark.parametrize("p", [5_000, 5_150, 9_900])  # not at a window edge, where the Hann weight is ~0
def test_a_click_lights_exactly_the_frames_whose_window_holds_it(p: int) -> None:
    x = np.zeros(16_000, np.float32)
    x[p], x[p + 1] = 1.0, -1.0  # a zero-mean doublet: gain normalisation leaves the rest of the signal at 0
    lm = AcousticEncoder().frames(x)["logmel"]
    floor = lm.min()
    lit = set(np.flatnonzero((lm > floor + 1.0).any(1)).tolist())
    assert lit == {i for i in range(len(lm)) if 320 * i <= p + 1 and p < 320 * i + 400}
    centres = WAV2VEC_GRID.centres(len(lm))
    assert all(abs(centres[i] - p / SR) <= 0.0125 for i in lit)  # the grid puts those frames around the click


def test_bad_settings_and_input_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="not available"):
        AcousticEncoder(layers="cnn")
    with pytest.raises(ConfigError, match="feature-set names"):
        load_encoder("acoustic", layers=3)
    with pytest.raises(ConfigError, match="no revision"):
        load_encoder("acoustic", revision="main")
    with pytest.raises(ConfigError, match="n_mfcc"):
        AcousticEncoder(n_mfcc=100)
    with pytest.raises(ConfigError, match="no FFT bin"):
        AcousticEncoder(n_mels=200)
    with pytest.raises(EncoderError, match="NaN"):
        AcousticEncoder().frames(np.full(800, np.nan, np.float32))
    with pytest.raises(EncoderError, match="mono"):
        AcousticEncoder().frames(np.zeros((2, 800), np.float32))


def test_survives_pickling_for_ray_actors() -> None:
    import pickle

    enc = AcousticEncoder(n_mels=40)
    x = _speechlike(8_000)
    clone = pickle.loads(pickle.dumps(enc))
    for k, v in enc.frames(x).items():
        np.testing.assert_array_equal(clone.frames(x)[k], v)


def test_identity_names_every_parameter() -> None:
    base = AcousticEncoder().identity()
    for kw in ({"n_mels": 40}, {"n_mfcc": 12}, {"delta_width": 3}, {"fmin": 20.0}, {"fmax": 7600.0},
               {"top_db": 60.0}, {"cmn": True}):
        assert AcousticEncoder(**kw).identity() != base, kw
    assert AcousticEncoder(layers="mfcc").identity() == base  # the selection is keyed separately (store layers)
    prov = AcousticEncoder().provenance()
    assert prov["frame_grid"] == WAV2VEC_GRID.as_dict() and prov["layer_dims"] == {"logmel": 80, "mfcc": 39}


# ------------------------------------------------------------------ extraction
def _toy_corpus(root: Path) -> Corpus:
    recs, phones = [], []
    rng = np.random.default_rng(0)
    for i, dur in enumerate((0.9, 1.3, 0.7)):
        path = root / f"u{i}.wav"
        sf.write(path, _speechlike(int(dur * SR), seed=i), SR, subtype="FLOAT")
        recs.append({"recording_id": f"u{i}", "speaker": f"s{i % 2}", "audio_path": str(path),
                     "sampling_rate": SR, "num_channels": 1, "duration": dur})
        s = 0.03
        while s < dur - 0.05:
            e = min(s + float(rng.uniform(0.01, 0.15)), dur)
            phones.append({"recording_id": f"u{i}", "speaker": f"s{i % 2}", "start": s, "end": e,
                           "phone_raw": "a", "phone": "aa"})
            s = e
    return Corpus(phones=pd.DataFrame(phones), speakers=pd.DataFrame({"speaker": ["s0", "s1"]}),
                  recordings=pd.DataFrame(recs), name="toy")


def test_extract_writes_phone_means_of_the_frames(tmp_path: Path) -> None:
    corpus = _toy_corpus(tmp_path)
    store = extract(corpus, "acoustic", store_root=tmp_path / "stores", dtype="float32", progress=False)
    assert store.layers == ["logmel", "mfcc"] and store.dims == {"logmel": 80, "mfcc": 39}
    enc = AcousticEncoder()
    for layer in store.layers:
        ref = []
        for rid, ph in corpus.phones.groupby("recording_id", sort=False):
            fr = enc.frames(read_audio(corpus.audio_path(str(rid))))[layer]
            c = WAV2VEC_GRID.centres(len(fr))
            for s, e in zip(ph["start"], ph["end"], strict=True):
                idx = np.flatnonzero((c >= s) & (c < e))
                idx = idx if len(idx) else [int(np.argmin(np.abs(c - (s + e) / 2)))]
                ref.append(fr[idx].mean(0))
        np.testing.assert_allclose(store.read(layer), np.stack(ref), atol=1e-4)
    assert store.provenance["encoder"]["family"] == "acoustic"
    # the same features find the same store; another parameter makes another one
    again = extract(corpus, AcousticEncoder(), store_root=tmp_path / "stores", dtype="float32", progress=False)
    assert again.key == store.key
    other = extract(corpus, AcousticEncoder(n_mels=40), store_root=tmp_path / "stores", dtype="float32",
                    progress=False)
    assert other.key != store.key and other.dims["logmel"] == 40


# ------------------------------------------------------------------ probes and typology on synthetic speech
@pytest.fixture(scope="module")
def synth_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, pd.Series]:
    from phonefair.synth.corpus import build_synthetic_corpus

    d = tmp_path_factory.mktemp("synth")
    corpus = build_synthetic_corpus(d / "corpus", accents=["en-US", "en-GB-scotland"], speakers_per_group=2,
                                    families=("m", "f"), sentences_per_speaker=3, seed=0, progress=False)
    store = extract(corpus, "acoustic", store_root=d / "stores", dtype="float32", progress=False)
    groups = corpus.speakers.set_index("speaker")["accent"].astype(str)
    return store, groups


def test_phone_probe_on_acoustic_features_beats_chance(synth_store: tuple[object, pd.Series]) -> None:
    from phonefair.audit.design import Design
    from phonefair.probes import fit_probes
    from phonefair.settings import ProbeSettings

    store, groups = synth_store
    d = Design.build(store, groups, min_speakers=2, folds=2)
    res = fit_probes(store, d, ProbeSettings(populations=(), l2_grid=(1e-2,), threads=1))
    sa = res["speaker_accuracy"]
    acc = sa.groupby("layer")["accuracy"].mean()
    assert list(acc.index) == ["logmel", "mfcc"]
    counts = d.tokens["phone"].value_counts(normalize=True)
    majority = float(counts.max())
    for layer in ("logmel", "mfcc"):
        assert acc[layer] > 2.5 * majority, (layer, acc[layer])


def test_typology_runs_on_feature_set_names(synth_store: tuple[object, pd.Series]) -> None:
    from phonefair.analysis import analyze
    from phonefair.audit.design import Design
    from phonefair.settings import AnalysisSettings

    store, groups = synth_store
    res = analyze(store, Design.build(store, groups, min_speakers=2), AnalysisSettings(n_perm=19, n_boot=19))
    for name, df in res.tables().items():
        if "layer" in df.columns and len(df) and name != "problems":
            assert set(df["layer"].astype(str)) <= {"logmel", "mfcc"}, name
    assert set(res.tables()["variance_tests"]["layer"].astype(str)) == {"logmel", "mfcc"}
