"""A small ctypes wrapper around the libespeak-ng that ships inside the ``espeakng-loader`` wheel.

Why ctypes and not a Python binding: the wheel brings both the shared library and ``espeak-ng-data`` (no system
package, no compiler), and ctypes gives direct access to espeak's **phoneme events**, which carry the exact onset
of every phone. That makes synthetic speech with *known* phone boundaries, the basis of phonefair's offline demo
corpus and of CPU end-to-end tests.

espeak-ng keeps global state (one current voice, one parameter set, one callback), so a process has **one**
synthesiser: :class:`EspeakSynth` is a process-wide singleton and every call holds a module-level lock. It is safe to
call from several threads (calls are serialised) but gives no parallelism; use processes for that.

Timing facts (checked with espeak-ng 1.52.0 from espeakng-loader 0.2.4, see ``docs/synthetic.md``):

* Each ``espeakEVENT_PHONEME`` event marks a phone **onset**; a phone ends at the next event. Events with an empty
  name mark a pause (clause boundary) and the last one marks the end of the audio.
* ``audio_position`` is the onset in whole milliseconds, *truncated* (``floor(sample / 22.05)``), so it is up to
  1 ms early. The event's ``sample`` field (documented as "internal use") is the exact onset in output samples; it
  agreed with ``audio_position`` and with the final sample count for every sentence and voice we tried. We use
  ``sample`` when it is consistent (monotone, within the audio and within 1 ms of ``audio_position``) and fall back
  to ``audio_position`` otherwise; :attr:`Synthesis.timing_source` says which one was used.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = [
    "ACCENT_VOICES",
    "VARIANTS",
    "EspeakError",
    "EspeakSynth",
    "PhoneEvent",
    "Synthesis",
    "espeak_version",
    "get_synth",
    "voice_name",
]

#: espeak-ng English accent voices (file names under ``espeak-ng-data/lang/gmw``) -> human description
ACCENT_VOICES: dict[str, str] = {
    "en-US": "General American",
    "en-GB-x-rp": "British Received Pronunciation",
    "en-GB-scotland": "Scottish English",
    "en-029": "Caribbean English",
    "en-US-nyc": "New York City English",
    "en-GB-x-gbclan": "Lancastrian English",
    "en-GB-x-gbcwmd": "West Midlands English",
}

#: voice variants (``voices/!v``) by voice family. "male"/"female" is espeak's name for a *voice family*
#: (formant scaling + pitch range), not a speaker's gender.
VARIANTS: dict[str, tuple[str, ...]] = {
    "m": ("m1", "m2", "m3", "m4", "m5", "m6", "m7"),
    "f": ("f1", "f2", "f3", "f4"),
}

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x1
_INIT_PHONEME_IPA = 0x2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EV_LIST_TERMINATED = 0
_EV_WORD = 1
_EV_PHONEME = 7
_EE_OK = 0
# espeak_TextToPhonemes phoneme mode: bit 1 = IPA output, bits 8-23 = the separator written between phonemes
_PHONEMES_IPA = 0x02
_PHONEME_SEP = ord("|") << 8
# espeak_PARAMETER enum: espeakSILENCE=0, RATE=1, VOLUME=2, PITCH=3, RANGE=4, PUNCTUATION=5, ...
_P_RATE, _P_VOLUME, _P_PITCH, _P_RANGE = 1, 2, 3, 4
#: documented ranges (speak_lib.h): rate words/min 80..450 (default 175), volume 0..200 (default 100),
#: pitch 0..100 (default 50), range 0..100 (default 50)
PARAM_LIMITS: dict[str, tuple[int, int]] = {"rate": (80, 450), "volume": (0, 200), "pitch": (0, 100),
                                            "range": (0, 100)}


class EspeakError(RuntimeError):
    """espeak-ng failed or was asked for something it does not have (unknown voice, bad parameter)."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    # layout of espeak_EVENT in speak_lib.h (espeak-ng 1.52)
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class PhoneEvent(NamedTuple):
    """One phone onset. ``label`` is espeak's IPA name (may carry ˈ ˌ ː, may be multi-segment like ``ʊɹ``);
    ``""`` marks a pause or, for the last event, the end of the audio."""

    onset_ms: float
    label: str


@dataclass(frozen=True)
class Synthesis:
    """Result of :meth:`EspeakSynth.synthesize`.

    Unpacks like the tuple ``(samples, events, sample_rate)``; the other fields are extras.
    """

    samples: np.ndarray  # int16, mono, at ``sample_rate`` (22050 Hz for espeak-ng)
    events: list[PhoneEvent]
    sample_rate: int
    words: list[str | None] = field(default_factory=list)  # parallel to ``events``: the word each phone is in
    timing_source: str = "sample"  # "sample" (exact) or "audio_position" (ms, truncated)
    voice: str = ""
    params: dict[str, int] = field(default_factory=dict)

    def __iter__(self) -> Iterator[object]:
        return iter((self.samples, self.events, self.sample_rate))

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.samples) / self.sample_rate


def voice_name(accent: str, variant: str | None = None) -> str:
    """espeak voice string, e.g. ``voice_name("en-US", "m3") == "en-US+m3"``."""
    return accent if not variant else f"{accent}+{variant}"


_LOCK = threading.RLock()
_INSTANCE: EspeakSynth | None = None


class EspeakSynth:
    """The process-wide espeak-ng synthesiser (synchronous mode, IPA phoneme events).

    ``EspeakSynth()`` always returns the same object: espeak-ng has one global state per process.
    """

    _initialised: bool

    def __new__(cls) -> EspeakSynth:
        global _INSTANCE
        with _LOCK:
            if _INSTANCE is None:
                inst = super().__new__(cls)
                inst._initialised = False
                _INSTANCE = inst
            return _INSTANCE

    def __init__(self) -> None:
        with _LOCK:
            if self._initialised:
                return
            try:
                import espeakng_loader
            except ImportError as exc:  # pragma: no cover - it is a hard dependency
                raise EspeakError("espeakng-loader is not installed (pip install espeakng-loader)") from exc
            self.data_path: str = espeakng_loader.get_data_path()
            # A private copy of the library: we unload and reload it before every utterance (see _load) and must
            # not share the handle with anybody else in the process (dlopen of the same path is reference-counted,
            # so a shared handle would never really unload).
            self._tmpdir = tempfile.mkdtemp(prefix="phonefair-espeak-")
            self._lib_path = os.path.join(self._tmpdir, "libespeak-ng.so")
            shutil.copyfile(espeakng_loader.get_library_path(), self._lib_path)
            atexit.register(shutil.rmtree, self._tmpdir, True)
            self._libc = ctypes.CDLL(None)
            self._libc.srand.argtypes = [ctypes.c_uint]
            self._lib: ctypes.CDLL | None = None
            self._chunks: list[np.ndarray] = []
            self._raw_events: list[tuple[int, int, int, int, int, str]] = []
            # keep the callback object referenced for the life of the process: espeak holds a raw pointer to it
            self._callback = _CALLBACK(self._on_audio)
            self.sample_rate: int = 0
            self._load()
            self.version: str = (self._lib.espeak_Info(None) or b"").decode()  # type: ignore[union-attr]
            self._initialised = True

    def _load(self) -> ctypes.CDLL:
        """(Re)load libespeak-ng and initialise it.

        Why reload per utterance: espeak-ng keeps synthesis state in C statics that neither ``espeak_Terminate``
        nor ``espeak_Initialize`` resets (the pitch-flutter index, the automatic gain control, the glottal cycle
        counter in ``wavegen.c``), so the same text gives slightly different samples and even phone onsets on
        every call. A fresh copy of the library (dlclose + dlopen) plus fixed random seeds makes every utterance
        byte-identical, independent of what was synthesised before. It costs a few milliseconds.
        """
        if self._lib is not None:
            self._lib.espeak_Terminate()
            handle = self._lib._handle
            self._lib = None
            _ctypes.dlclose(handle)  # type: ignore[attr-defined]
        lib = ctypes.CDLL(self._lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Terminate.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(),
                                   _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA)
        if sr <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {sr}) with data path {self.data_path}")
        self.sample_rate = int(sr)
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        return lib

    # ------------------------------------------------------------------ callback
    def _on_audio(self, wav: ctypes._Pointer, n: int, ev: ctypes._Pointer) -> int:  # type: ignore[type-arg]
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.int16, copy=True))
        i = 0
        while ev[i].type != _EV_LIST_TERMINATED:
            e = ev[i]
            if e.type == _EV_PHONEME:
                name = bytes(e.id.string).split(b"\0")[0].decode("utf-8", errors="replace")
                self._raw_events.append((e.type, e.text_position, e.length, e.audio_position, e.sample, name))
            elif e.type == _EV_WORD:
                self._raw_events.append((e.type, e.text_position, e.length, e.audio_position, e.sample, ""))
            i += 1
        return 0  # 0 = continue synthesis

    # ------------------------------------------------------------------ API
    def set_voice(self, voice: str) -> None:
        """Select ``voice`` (e.g. ``"en-GB-scotland+f2"``). Raises :class:`EspeakError` if espeak does not know it
        (espeak would otherwise silently keep the previous voice)."""
        _, _, variant = voice.partition("+")
        # espeak ignores an unknown variant silently (en-US+zz9 returns 0), so check the variant file ourselves
        if "+" in voice and (not variant or not os.path.isfile(os.path.join(self.data_path, "voices", "!v",
                                                                             variant))):
            raise EspeakError(f"unknown espeak voice {voice!r}: no voice variant {variant!r} in "
                              f"{os.path.join(self.data_path, 'voices', '!v')}; variants: "
                              f"{[v for vs in VARIANTS.values() for v in vs]}")
        with _LOCK:
            lib = self._lib if self._lib is not None else self._load()
            rc = lib.espeak_SetVoiceByName(voice.encode())
            if rc != _EE_OK:
                raise EspeakError(
                    f"unknown espeak voice {voice!r} (espeak_SetVoiceByName returned {rc}); accents: "
                    f"{sorted(ACCENT_VOICES)}, variants: {[v for vs in VARIANTS.values() for v in vs]}, "
                    f"written as 'accent+variant', e.g. 'en-US+m3'")

    def _set_param(self, name: str, code: int, value: int) -> None:
        lo, hi = PARAM_LIMITS[name]
        if not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
            raise EspeakError(f"espeak parameter {name}={value!r} outside the documented range [{lo}, {hi}]")
        assert self._lib is not None  # set_voice ran first
        rc = self._lib.espeak_SetParameter(code, int(value), 0)
        if rc != _EE_OK:
            raise EspeakError(f"espeak_SetParameter({name}={value}) returned {rc}")

    def synthesize(self, text: str, voice: str = "en-US", *, rate: int = 175, pitch: int = 50, range_: int = 50,
                   volume: int = 100) -> Synthesis:
        """Synthesise ``text`` with ``voice``; returns int16 samples at 22050 Hz and the phone onset events.

        ``rate`` is words per minute (80..450), ``pitch`` the base pitch and ``range_`` the pitch range (0..100,
        relative to the voice's own pitch range), ``volume`` the amplitude (0..200, 100 = normal).
        """
        if not text.strip():
            raise EspeakError("cannot synthesise empty text")
        with _LOCK:
            self._load()  # fresh C state: byte-identical output for identical input
            self.set_voice(voice)
            # set after the voice: selecting a voice may reset the parameters
            self._set_param("rate", _P_RATE, rate)
            self._set_param("pitch", _P_PITCH, pitch)
            self._set_param("range", _P_RANGE, range_)
            self._set_param("volume", _P_VOLUME, volume)
            self._chunks, self._raw_events = [], []
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            lib = self._lib
            assert lib is not None
            # breath noise uses espeak's own generator and libc rand(): seed both for every utterance
            lib.espeak_ng_SetRandSeed(1)
            self._libc.srand(1)
            rc = lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if rc != _EE_OK:
                raise EspeakError(f"espeak_Synth returned {rc} for text {text[:60]!r} with voice {voice!r}")
            lib.espeak_Synchronize()
            chunks, raw = self._chunks, self._raw_events
            self._chunks, self._raw_events = [], []
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        events, words, source = _decode_events(raw, text, len(samples), self.sample_rate)
        return Synthesis(samples=samples, events=events, sample_rate=self.sample_rate, words=words,
                         timing_source=source, voice=voice,
                         params={"rate": int(rate), "pitch": int(pitch), "range": int(range_),
                                 "volume": int(volume)})

    def phonemize(self, text: str, voice: str = "en-US") -> list[list[str]]:
        """espeak-ng's pronunciation of ``text`` as IPA phonemes, one list per spoken word.

        Uses ``espeak_TextToPhonemes`` (IPA output, phonemes separated by ``|``): the same rules the synthesiser
        applies, including its number reading ("42" is two spoken words) and letter-by-letter spelling of
        unpronounceable strings. Stress marks (ˈ ˌ) stay attached to the phoneme they precede. ``voice`` is any
        espeak voice or language name (``"en-US"``, ``"fr"``, ``"de"``).
        """
        if not text.strip():
            return []
        with _LOCK:
            lib = self._lib if self._lib is not None else self._load()
            if not getattr(lib, "_phonemes_typed", False):
                lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
                lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
                lib._phonemes_typed = True
            self.set_voice(voice)
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            clauses: list[str] = []
            # one call per clause; espeak advances ``ptr`` and sets it to NULL after the last clause
            while ptr.value:
                out = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA | _PHONEME_SEP)
                clauses.append((out or b"").decode("utf-8", errors="replace"))
        words = [w for clause in clauses for w in clause.split()]
        return [[p for p in w.split("|") if p] for w in words]


def _decode_events(raw: list[tuple[int, int, int, int, int, str]], text: str, n_samples: int,
                   sr: int) -> tuple[list[PhoneEvent], list[str | None], str]:
    """Phoneme events -> onsets (exact from ``sample`` when consistent) and the word each phone belongs to."""
    phon = [r for r in raw if r[0] == _EV_PHONEME]
    samples = np.array([r[4] for r in phon], dtype=np.int64)
    ms = np.array([r[3] for r in phon], dtype=np.float64)
    consistent = bool(
        len(phon) > 0
        and np.all(np.diff(samples) >= 0)
        and samples[0] >= 0 and samples[-1] <= n_samples
        and np.all(np.abs(samples * 1000.0 / sr - ms) <= 1.0 + 1e-9)
    )
    onsets = samples * 1000.0 / sr if consistent else ms
    tokens = [(m.start(), m.end(), m.group()) for m in _WORD_RE.finditer(text)]
    events: list[PhoneEvent] = []
    words: list[str | None] = []
    current: str | None = None
    k = 0
    for r in raw:
        if r[0] == _EV_WORD:
            current = _word_at(tokens, r[1] - 1)
            continue
        label = r[5]
        events.append(PhoneEvent(float(onsets[k]), label))
        words.append(current if label else None)
        k += 1
    return events, words, "sample" if consistent else "audio_position"


_WORD_RE = re.compile(r"[^\W_](?:[\w'’-]*[^\W_])?")


def _word_at(tokens: list[tuple[int, int, str]], pos: int) -> str | None:
    """The text token at 0-based character ``pos``, or the first one after it.

    espeak's WORD events give a character position and length, but for some dictionary phrases ("a while") the
    position points at the space before the word, so we snap to the enclosing or next token."""
    for start, end, tok in tokens:
        if end > pos:
            return tok
    return None


def get_synth() -> EspeakSynth:
    """The process-wide synthesiser (created on first use)."""
    return EspeakSynth()


def espeak_version() -> str:
    """espeak-ng library version string, e.g. ``"1.52.0"``."""
    return get_synth().version
