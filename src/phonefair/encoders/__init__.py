"""encoders stage: one :class:`Encoder` protocol, Hugging Face families, tiny random models, acoustic baselines."""

from phonefair.encoders.acoustic import AcousticEncoder
from phonefair.encoders.base import Encoder, EncoderError, parse_layers
from phonefair.encoders.hf import HFEncoder, WhisperEncoder, load_encoder
from phonefair.encoders.tiny import FAMILIES, save_tiny_model, tiny_model

__all__ = ["AcousticEncoder", "Encoder", "EncoderError", "parse_layers", "HFEncoder", "WhisperEncoder", "load_encoder",
           "FAMILIES", "save_tiny_model", "tiny_model"]
