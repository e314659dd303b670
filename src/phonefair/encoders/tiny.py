"""Tiny random-weight models of every supported family, for offline tests and the demo.

The configurations are those of REFERENCE §2.6: 3 transformer layers × 32 dims (Whisper: 2 × 32 with a 3 s window),
each under a second on CPU. ``"wav2vec2-base"`` is a randomly initialised *base-sized* wav2vec2 (12 × 768, the real
wav2vec2-base architecture) used by the benchmark. Weights are random (``torch.manual_seed(seed)``): the numbers mean
nothing, only the shapes and the code paths are real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phonefair.encoders.base import hf_quiet

FAMILIES: tuple[str, ...] = ("wav2vec2", "wav2vec2-stable", "hubert", "wavlm", "data2vec-audio", "whisper",
                             "wav2vec2-base")

_SMALL: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
                              conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
_STABLE: dict[str, Any] = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)


def tiny_model(family: str, *, seed: int = 0) -> tuple[Any, Any]:
    """``(model, feature_extractor)`` with random weights for ``family`` (see :data:`FAMILIES`), in eval mode.

    For ``"whisper"`` the model is a full ``WhisperModel`` (use ``.encoder``) and the feature extractor a
    ``WhisperFeatureExtractor`` with ``chunk_length=3`` (3 s window, 150 encoder frames). The wav2vec-style feature
    extractors set ``do_normalize`` as the real checkpoints do: False for group-norm, True for layer-norm models.
    """
    import torch
    from transformers import (Data2VecAudioConfig, Data2VecAudioModel, HubertConfig, HubertModel,
                              Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model, WavLMConfig, WavLMModel,
                              WhisperConfig, WhisperFeatureExtractor, WhisperModel)

    torch.manual_seed(seed)
    model: Any
    if family == "wav2vec2":
        model = Wav2Vec2Model(Wav2Vec2Config(**_SMALL))
    elif family == "wav2vec2-stable":
        model = Wav2Vec2Model(Wav2Vec2Config(**_SMALL, **_STABLE))
    elif family == "hubert":
        model = HubertModel(HubertConfig(**_SMALL))
    elif family == "wavlm":
        model = WavLMModel(WavLMConfig(**_SMALL, num_buckets=8, max_bucket_distance=20))
    elif family == "data2vec-audio":
        model = Data2VecAudioModel(Data2VecAudioConfig(**{**_SMALL, "num_conv_pos_embeddings": 5}))
    elif family == "wav2vec2-base":
        model = Wav2Vec2Model(Wav2Vec2Config())  # library defaults = wav2vec2-base architecture (12 × 768)
    elif family == "whisper":
        model = WhisperModel(WhisperConfig(
            d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=80, max_source_positions=150, vocab_size=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1))
        return model.eval(), WhisperFeatureExtractor(feature_size=80, chunk_length=3)
    else:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {FAMILIES}")
    # data2vec-audio has no feat_extract_norm: its CNN always uses LayerNorm and it was trained on normalised audio
    layer_norm = getattr(model.config, "feat_extract_norm", "layer") == "layer"
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=layer_norm,
                                  return_attention_mask=layer_norm)
    return model.eval(), fe


def save_tiny_model(family: str, directory: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random ``family`` checkpoint (``config.json``, ``model.safetensors``,
    ``preprocessor_config.json``) to ``directory`` and return it; loadable with ``load_encoder(directory)`` offline."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model, fe = tiny_model(family, seed=seed)
    with hf_quiet():
        model.save_pretrained(d)
        fe.save_pretrained(d)
    return d
