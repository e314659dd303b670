"""Acoustic feature "encoders": log-mel and MFCC frames on the wav2vec frame grid, as a baseline ("layer −1").

An :class:`AcousticEncoder` implements the :class:`~phonefair.encoders.base.Encoder` protocol, so its features go
through exactly the same extraction, store, probes, typology and report as a neural encoder. Each feature set is
a "layer" (a non-hierarchical layer name, placed at relative depth −0.15 by :func:`phonefair.layers.relative_depth`):

* ``"logmel"``: ``n_mels`` (80) log-mel band energies in dB;
* ``"mfcc"``: ``n_mfcc`` (13) cepstral coefficients c0 … c12 with their deltas and delta-deltas (39 values).

Frame ``i`` is computed from samples ``[320 i, 320 i + 400)`` (25 ms Hann window, 20 ms hop, no centre padding), so
an utterance of ``N`` samples has ``floor((N - 400) / 320) + 1`` frames centred at ``0.0125 + 0.02 i`` s: the
wav2vec-style grid (:data:`~phonefair.encoders.frames.WAV2VEC_GRID`). Phones are therefore pooled over exactly the
frames a wav2vec-style encoder's are.

Definitions (every parameter is in :meth:`AcousticEncoder.identity`; docs/baselines.md has the derivations):

1. gain: the waveform is made zero-mean, unit-variance per utterance (as the layer-norm wav2vec models' input),
   so a speaker's recording level does not shift every band;
2. power spectrum: ``|rfft(hann_periodic(400) · frame, n=512)|²`` (``transformers.audio_utils.spectrogram``);
3. mel: ``n_mels`` triangular filters on the Slaney mel scale, ``fmin`` … ``fmax`` Hz, Slaney area normalisation
   (``transformers.audio_utils.mel_filter_bank``; the filter bank of Whisper and librosa);
4. log: ``10 log10(max(E, 1e-10))``, then floored at ``top_db`` dB below the utterance's maximum (librosa's
   ``power_to_db(top_db=80)``);
5. MFCC: ``scipy.fft.dct(logmel, type=2, norm="ortho")[:n_mfcc]`` (librosa's ``mfcc``);
6. deltas: the HTK regression ``Δc_t = Σ_{n=1..W} n (c_{t+n} − c_{t−n}) / (2 Σ n²)`` with ``W = delta_width`` (2)
   and edge frames repeated (``scipy.signal.savgol_filter(deriv=1, polyorder=1, mode="nearest")``, which is that
   formula); delta-deltas are the deltas of the deltas;
7. ``cmn`` (default off): per-utterance mean normalisation of every output dimension (cepstral mean
   normalisation). Off because it is a compensation step, like an encoder's learned normalisation: it removes
   part of the speaker and channel information whose inheritance the baseline is there to measure (on the demo
   corpus it changes MFCC probe accuracy by about one point, within the noise; docs/baselines.md).

Why deltas and not a ±k context window: deltas are the classic, fixed-size way to give each frame its neighbours'
trend (Δ spans ±2 frames, ΔΔ ±4) without multiplying the dimension by ``2k + 1``; a baseline should be the standard
front end speech systems start from, not a tuned one, and a wider probe input would also mix a capacity effect into
the comparison. A ±4-frame window of the 13 MFCCs (117 values) reached 0.714-0.727 phone accuracy on the demo corpus
against 0.676-0.708 for MFCC + Δ + ΔΔ (docs/baselines.md): a small gain for three times the dimension.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from phonefair.encoders.base import normalise_waveform, parse_layers
from phonefair.encoders.frames import HOP, RECEPTIVE_FIELD, SAMPLE_RATE, WAV2VEC_GRID, FrameGrid, num_frames
from phonefair.errors import ConfigError, EncoderError

__all__ = ["ACOUSTIC_MODEL", "FEATURE_SETS", "AcousticEncoder", "is_acoustic", "load_acoustic"]

#: the ``model`` string that selects the acoustic baseline in ``load_encoder`` and ``[[encoders]]``
ACOUSTIC_MODEL = "acoustic"
#: feature sets ("layers") an :class:`AcousticEncoder` can return, in layer order
FEATURE_SETS: tuple[str, ...] = ("logmel", "mfcc")
#: bump when the computation changes in a way the parameters do not capture (it is part of the store key)
FEATURES_VERSION = 1

N_FFT = 512  # next power of two above the 400-sample window


def is_acoustic(model: object) -> bool:
    """True when ``model`` names the acoustic baseline (exactly ``"acoustic"``; a directory would be ``./acoustic``)."""
    return isinstance(model, str) and model.strip() == ACOUSTIC_MODEL


class AcousticEncoder:
    """Log-mel and MFCC features as an :class:`~phonefair.encoders.base.Encoder` (see the module docstring).

    ``layers``: ``"all"`` or a selection of :data:`FEATURE_SETS` (``"mfcc"``, ``["logmel", "mfcc"]``,
    ``"logmel,mfcc"``).
    """

    name = "acoustic"
    model_id = ACOUSTIC_MODEL
    revision: str | None = None
    sample_rate = SAMPLE_RATE
    grid: FrameGrid = WAV2VEC_GRID
    can_pad = True  # every utterance is computed on its own, so batching cannot change a number

    def __init__(self, layers: str | Sequence[str] = "all", *, n_mels: int = 80, n_mfcc: int = 13,
                 delta_width: int = 2, fmin: float = 0.0, fmax: float = SAMPLE_RATE / 2, top_db: float = 80.0,
                 cmn: bool = False) -> None:
        if not 1 <= n_mels <= N_FFT // 2:
            raise ConfigError(f"acoustic encoder: n_mels must be in [1, {N_FFT // 2}], got {n_mels}")
        if not 1 <= n_mfcc <= n_mels:
            raise ConfigError(f"acoustic encoder: n_mfcc must be in [1, n_mels={n_mels}], got {n_mfcc}")
        if delta_width < 1:
            raise ConfigError(f"acoustic encoder: delta_width must be >= 1, got {delta_width}")
        if not 0 <= fmin < fmax <= SAMPLE_RATE / 2:
            raise ConfigError(f"acoustic encoder: need 0 <= fmin < fmax <= {SAMPLE_RATE / 2} Hz, got {fmin}, {fmax}")
        if not top_db > 0:
            raise ConfigError(f"acoustic encoder: top_db must be > 0, got {top_db}")
        try:
            self.layers = parse_layers(layers, list(FEATURE_SETS))
        except ValueError as exc:
            raise ConfigError(f"acoustic encoder: {exc}") from None
        self.n_mels, self.n_mfcc, self.delta_width = int(n_mels), int(n_mfcc), int(delta_width)
        self.fmin, self.fmax, self.top_db, self.cmn = float(fmin), float(fmax), float(top_db), bool(cmn)
        from transformers.audio_utils import mel_filter_bank, window_function

        self._window = window_function(RECEPTIVE_FIELD, "hann", periodic=True)
        with warnings.catch_warnings():  # an empty filter is reported below as a ConfigError instead
            warnings.simplefilter("ignore", UserWarning)
            self._mel = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=self.n_mels,
                                        min_frequency=self.fmin, max_frequency=self.fmax, sampling_rate=SAMPLE_RATE,
                                        norm="slaney", mel_scale="slaney")
        if (self._mel.sum(axis=0) == 0).any():  # too many bands for the frequency range: some see no FFT bin
            raise ConfigError(f"acoustic encoder: n_mels={n_mels} is too many for {fmin}-{fmax} Hz at n_fft="
                              f"{N_FFT}: some mel filters contain no FFT bin")

    def num_frames(self, n_samples: int) -> int:
        return num_frames(n_samples)

    def layer_dims(self) -> dict[str, int]:
        dims = {"logmel": self.n_mels, "mfcc": 3 * self.n_mfcc}
        return {k: dims[k] for k in self.layers}

    def frames(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(waveform, dtype=np.float32)
        if x.ndim != 1:
            raise EncoderError(f"acoustic encoder: expected a mono 1-D waveform, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise EncoderError("acoustic encoder: waveform contains NaN or inf samples")
        if self.num_frames(len(x)) == 0:
            raise EncoderError(f"acoustic encoder: {len(x)} samples is too short for one 25 ms frame")
        logmel = self._logmel(x)
        out: dict[str, np.ndarray] = {}
        if "logmel" in self.layers:
            out["logmel"] = logmel
        if "mfcc" in self.layers:
            out["mfcc"] = self._mfcc(logmel)
        if self.cmn:
            out = {k: v - v.mean(axis=0, keepdims=True) for k, v in out.items()}
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}

    def frames_batch(self, waveforms: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [self.frames(w) for w in waveforms]

    def _logmel(self, x: np.ndarray) -> np.ndarray:
        """``[T, n_mels]`` dB log-mel energies of a gain-normalised waveform (steps 1-4 of the module docstring)."""
        from transformers.audio_utils import spectrogram

        spec = spectrogram(normalise_waveform(x), self._window, frame_length=RECEPTIVE_FIELD, hop_length=HOP,
                           fft_length=N_FFT, power=2.0, center=False, mel_filters=self._mel, mel_floor=1e-10,
                           log_mel="dB", reference=1.0, min_value=1e-10, db_range=self.top_db, dtype=np.dtype(np.float64))
        return np.asarray(spec, dtype=np.float64).T

    def _mfcc(self, logmel: np.ndarray) -> np.ndarray:
        """``[T, 3 n_mfcc]``: c0 … c(n_mfcc-1), their deltas, their delta-deltas (steps 5-6)."""
        from scipy.fft import dct
        from scipy.signal import savgol_filter

        c = dct(logmel, type=2, norm="ortho", axis=1)[:, : self.n_mfcc]
        win = 2 * self.delta_width + 1

        def delta(a: np.ndarray) -> np.ndarray:
            # least-squares slope over 2W+1 frames = the HTK regression; "nearest" repeats edge frames (any T >= 1)
            return savgol_filter(a, win, polyorder=1, deriv=1, axis=0, mode="nearest")

        d1 = delta(c)
        return np.concatenate([c, d1, delta(d1)], axis=1)

    def identity(self) -> dict[str, Any]:
        """Every parameter that changes the numbers (part of the content-addressed store key)."""
        return {
            "family": self.name,
            "model_id": self.model_id,
            "features_version": FEATURES_VERSION,
            "gain": "zero-mean unit-variance per utterance",
            "window": "hann periodic",
            "frame_length": RECEPTIVE_FIELD,
            "hop_length": HOP,
            "n_fft": N_FFT,
            "power": 2.0,
            "n_mels": self.n_mels,
            "fmin": self.fmin,
            "fmax": self.fmax,
            "mel_scale": "slaney",
            "mel_norm": "slaney",
            "log": "10*log10(max(E, 1e-10)), floored at top_db below the utterance maximum",
            "top_db": self.top_db,
            "n_mfcc": self.n_mfcc,
            "dct": "type 2, orthonormal",
            "delta_width": self.delta_width,
            "delta_edges": "nearest",
            "cmn": self.cmn,
            "transformers_major": int(_version("transformers").split(".")[0]),
        }

    def provenance(self) -> dict[str, Any]:
        return {**self.identity(), "layers": list(self.layers), "layer_dims": self.layer_dims(),
                "frame_grid": self.grid.as_dict(), "device": "cpu (numpy)",
                "batching": "one utterance at a time (no padding)",
                "transformers_version": _version("transformers"), "scipy_version": _version("scipy"),
                "numpy_version": np.__version__}

    def __repr__(self) -> str:
        return f"AcousticEncoder(layers={self.layers}, n_mels={self.n_mels}, n_mfcc={self.n_mfcc}, cmn={self.cmn})"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def load_acoustic(layers: str | int | Sequence[str | int] = "all", *, revision: str | None = None,
                  **options: Any) -> AcousticEncoder:
    """The acoustic baseline as ``load_encoder("acoustic", layers=...)`` builds it; ``options`` go to
    :class:`AcousticEncoder` (defaults are the documented baseline). Acoustic features have no weights, hence no
    ``revision``."""
    if revision is not None:
        raise ConfigError(f"model {ACOUSTIC_MODEL!r} (acoustic features) has no revision; got revision={revision!r}")
    if isinstance(layers, int) or (not isinstance(layers, str) and any(isinstance(x, int) for x in layers)):
        raise ConfigError(f"acoustic encoder: layers are feature-set names {list(FEATURE_SETS)} or 'all', "
                          f"got {layers!r}")
    return AcousticEncoder(layers, **options)  # type: ignore[arg-type]
