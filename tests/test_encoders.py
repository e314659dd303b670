"""Encoders: every family as a tiny random checkpoint saved to disk and reloaded offline; layer semantics."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, WhisperFeatureExtractor

from phonefair.encoders import EncoderError, load_encoder, parse_layers, save_tiny_model
from phonefair.encoders.base import normalise_waveform
from phonefair.extraction.frames import num_frames

FAMILIES = ["wav2vec2", "wav2vec2-stable", "hubert", "wavlm", "data2vec-audio", "whisper"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {f: save_tiny_model(f, root / f, seed=0) for f in FAMILIES}


def _wave(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n) + 0.01).astype(np.float32)


def _direct(d: Path, x: np.ndarray, normalize: bool) -> object:
    m = AutoModel.from_pretrained(d).eval()
    xin = normalise_waveform(x) if normalize else x
    with torch.inference_mode():
        return m(torch.from_numpy(xin)[None], output_hidden_states=True)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "whisper"])
def test_wav2vec_family_matches_direct_forward(family: str, model_dirs: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder(model_dirs[family], include_cnn=True)
    stable = family == "wav2vec2-stable"
    assert enc.layers == ["cnn", "0", "1", "2", "3"] + (["3_norm"] if stable else [])
    x = _wave(16000 + 123)
    got = enc.frames(x)
    assert not enc.model.training  # eval(): no SpecAugment / LayerDrop
    normalize = family in ("wav2vec2-stable", "data2vec-audio")  # layer-norm checkpoints normalise, as saved
    assert enc.identity()["normalize"] is normalize
    ref = _direct(model_dirs[family], x, normalize)
    assert len(ref.hidden_states) == 3 + 1
    t = num_frames(len(x))
    for i in range(4):
        assert got[str(i)].shape == (t, 32)
        np.testing.assert_allclose(got[str(i)], ref.hidden_states[i][0].numpy(), atol=1e-5)
    assert got["cnn"].shape == (t, 32)
    if getattr(ref, "extract_features", None) is not None:
        np.testing.assert_allclose(got["cnn"], ref.extract_features[0].numpy(), atol=1e-5)
    else:  # HuBERT returns no extract_features: the hook must give the same LayerNorm-ed CNN output
        m = AutoModel.from_pretrained(model_dirs[family]).eval()
        with torch.inference_mode():
            cnn = m.feature_extractor(torch.from_numpy(x)[None]).transpose(1, 2)
            cnn = m.feature_projection.layer_norm(cnn)
        np.testing.assert_allclose(got["cnn"], cnn[0].numpy(), atol=1e-5)
    last, lhs = ref.hidden_states[-1][0].numpy(), ref.last_hidden_state[0].numpy()
    if stable:  # transformers 5: hidden_states[-1] is before the final LayerNorm, "<L>_norm" after it
        np.testing.assert_allclose(got["3_norm"], lhs, atol=1e-5)
        assert np.abs(got["3_norm"] - got["3"]).max() > 1e-2
    else:  # post-LN: the last hidden state already is last_hidden_state
        np.testing.assert_allclose(last, lhs, atol=1e-6)


def test_layer_subset_and_final_norm_options(model_dirs: dict[str, Path]) -> None:
    full = load_encoder(model_dirs["wav2vec2-stable"]).frames(_wave(9000))
    sub = load_encoder(model_dirs["wav2vec2-stable"], layers="1,L_norm")
    assert sub.layers == ["1", "3_norm"]
    got = sub.frames(_wave(9000))
    np.testing.assert_allclose(got["1"], full["1"], atol=1e-6)
    np.testing.assert_allclose(got["3_norm"], full["3_norm"], atol=1e-6)
    assert load_encoder(model_dirs["wav2vec2-stable"], final_norm=False).layers == ["0", "1", "2", "3"]
    assert load_encoder(model_dirs["wav2vec2"], device="auto").device == ("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    with pytest.raises(ValueError, match="post-LN"):
        load_encoder(model_dirs["wav2vec2"], final_norm=True)
    with pytest.raises(ValueError, match="not available"):
        load_encoder(model_dirs["wav2vec2"], layers="7")


def test_parse_layers() -> None:
    av = ["cnn", "0", "1", "2", "3", "4", "4_norm"]
    assert parse_layers("all", av) == av
    assert parse_layers("0-2,4", av) == ["0", "1", "2", "4"]
    assert parse_layers([4, "cnn", "-1", "L_norm"], av) == ["cnn", "4", "4_norm"]
    assert parse_layers(2, av) == ["2"]
    for bad in ("9", "3-1", "", "x"):
        with pytest.raises(ValueError):
            parse_layers(bad, av)


def test_group_norm_runs_one_at_a_time_and_layer_norm_pads_safely(model_dirs: dict[str, Path]) -> None:
    xs = [_wave(8000, 1), _wave(12000, 2), _wave(8000, 3)]
    for family in ("wav2vec2", "data2vec-audio", "wav2vec2-stable"):
        enc = load_encoder(model_dirs[family])
        single = [enc.frames(x) for x in xs]
        enc.n_forward_calls = 0
        batched = enc.frames_batch(xs)
        # group-norm and data2vec: padding leaks, so only equal lengths share a forward pass (2 calls);
        # layer-norm models pad with an attention mask (1 call)
        assert enc.n_forward_calls == (1 if family == "wav2vec2-stable" else 2)
        for s, b in zip(single, batched, strict=True):
            for k in enc.layers:
                np.testing.assert_allclose(b[k], s[k], atol=1e-4)


def test_normalisation_falls_back_to_feat_extract_norm(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    for family, expected in (("wav2vec2", False), ("wav2vec2-stable", True)):
        d = tmp_path / family
        shutil.copytree(model_dirs[family], d)
        (d / "preprocessor_config.json").unlink()
        prov = load_encoder(d).provenance()
        assert prov["normalize"] is expected and prov["normalize_source"].startswith("feat_extract_norm")


def test_whisper_encoder_frames(model_dirs: dict[str, Path]) -> None:
    enc = load_encoder(model_dirs["whisper"], include_cnn=True)
    assert enc.layers == ["cnn", "0", "1", "2"] and enc.grid.offset == 0.0
    n = 16000 + 5  # 1 s of a 3 s window
    x = _wave(n)
    got = enc.frames(x)
    t = math.ceil(n / 320)
    assert t == 51 and all(v.shape == (t, 32) for v in got.values())
    full = AutoModel.from_pretrained(model_dirs["whisper"]).get_encoder().eval()
    feats = WhisperFeatureExtractor(feature_size=80, chunk_length=3)(x, sampling_rate=16000,
                                                                      return_tensors="pt").input_features
    with torch.inference_mode():
        ref = full(feats, output_hidden_states=True)
    assert len(ref.hidden_states) == 3 and ref.hidden_states[0].shape[1] == 150
    for i in range(3):
        np.testing.assert_allclose(got[str(i)], ref.hidden_states[i][0, :t].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["2"], ref.last_hidden_state[0, :t].numpy(), atol=1e-6)  # post-LN already


def test_whisper_real_frames_match_feature_extractor_mask() -> None:
    """T = ceil(N/320) is the encoder-side view of HF's own mel attention mask (mel frame j real iff 160 j < N)."""
    fe = WhisperFeatureExtractor(feature_size=80, chunk_length=3)
    for n in (1, 160, 161, 320, 321, 16000, 16005, 47999, 48000):
        mask = fe(np.full(n, 0.1, np.float32), sampling_rate=16000, return_attention_mask=True,
                  return_tensors="np")["attention_mask"]
        mel_real = int(mask.sum())
        assert mel_real == math.ceil(n / 160)
        assert math.ceil(mel_real / 2) == math.ceil(n / 320)  # encoder frame i is centred on mel frame 2 i


def test_long_audio_chunked_or_refused(model_dirs: dict[str, Path]) -> None:
    x = _wave(4 * 16000 + 77)
    w = load_encoder(model_dirs["whisper"])  # 3 s window
    out = w.frames(x)
    assert out["2"].shape == (math.ceil(len(x) / 320), 32)
    enc = load_encoder(model_dirs["wav2vec2-stable"], max_seconds=1.0, overlap_seconds=0.2)
    out = enc.frames(x)
    assert out["3"].shape[0] == num_frames(len(x))
    # the first window's own frames (all but the last 0.2 s of context) equal a direct run on that window
    first = enc.frames(x[:16000])
    keep = (16000 - 3200) // 320
    np.testing.assert_allclose(out["3"][:keep], first["3"][:keep], atol=1e-5)
    strict = load_encoder(model_dirs["wav2vec2-stable"], max_seconds=1.0, overlap_seconds=0.2, long="error")
    with pytest.raises(ValueError, match="exceeds max_seconds"):
        strict.frames(x)


def test_bad_input_and_load_errors(model_dirs: dict[str, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    enc = load_encoder(model_dirs["wav2vec2"])
    with pytest.raises(ValueError, match="too short"):
        enc.frames(np.zeros(300, np.float32))
    with pytest.raises(ValueError, match="mono"):
        enc.frames(np.zeros((2, 16000), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        enc.frames(np.full(16000, np.nan, np.float32))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError, match="snapshot_download") as ei:
        load_encoder("phonefair-test/does-not-exist-model")
    assert "HF_HUB_OFFLINE" in str(ei.value)
    with pytest.raises(EncoderError, match="snapshot_download"):  # a dotted hub id is not mistaken for a path
        load_encoder("phonefair-test/model-v1.5")
    with pytest.raises(EncoderError, match="no such model directory"):
        load_encoder(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="config.json"):
        load_encoder(tmp_path / "empty")


def test_identity_follows_weights_not_path(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    a = load_encoder(model_dirs["hubert"]).identity()
    d = tmp_path / "moved"
    shutil.copytree(model_dirs["hubert"], d)
    assert load_encoder(d).identity() == a
    other = save_tiny_model("hubert", tmp_path / "seed1", seed=1)
    assert load_encoder(other).identity()["weights_sha256"] != a["weights_sha256"]
