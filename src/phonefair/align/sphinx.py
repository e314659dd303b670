"""Offline US-English forced alignment with pocketsphinx (its wheel ships the acoustic model and CMUdict).

How one utterance is aligned (checked with pocketsphinx 5.1.1, REFERENCE §8.2):

1. Words missing from CMUdict get a pronunciation from espeak-ng (IPA -> ARPABET-39 through the ``espeak_ipa`` map,
   flap ``dx`` -> ``T`` because the acoustic model has no flap) and are added with ``add_word``; a word espeak-ng
   cannot give a usable pronunciation for stops the utterance (``oov_unpronounceable``).
2. The audio becomes 16-bit PCM with 0.3 s of padding on both sides and ±30 LSB of uniform dither: pocketsphinx's
   feature extraction fails on pure digital silence (synthetic speech, zero-padded clips). The padding is removed
   from every time stamp afterwards.
3. The feature extraction is re-initialised before every utterance (``reinit_feat``): pocketsphinx carries its
   cepstral-mean estimate over from the utterances it saw before, which made an utterance's alignment depend on
   the ones aligned before it (and so on the order and on ``jobs``).
4. ``set_align_text`` + a first pass picks pronunciation variants and word boundaries; ``set_alignment`` + a
   second pass gives phones (and HMM states) at 10 ms frames.

Confidence of a phone: its Viterbi path score (emission + HMM transitions) divided by its number of frames, in
nats per 10 ms frame. Senone scores are normalised to the best senone of each frame, so 0 means "the aligned
states were the best-scoring states in every frame" and more negative means a worse acoustic match.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from phonefair.align.base import AlignedPhone, AlignedUtterance, AlignmentFailure
from phonefair.align.g2p import arpabet_from_ipa, ipa_phonemes
from phonefair.errors import ConfigError, RunError
from phonefair.rng import derive

__all__ = ["PocketsphinxAligner"]

SAMPLE_RATE = 16000
FRAME_S = 0.01  # pocketsphinx frame rate: 100 frames per second
PAD_S = 0.3
DITHER_LSB = 30
#: pocketsphinx HMMs have 3 emitting states without skips: a phone needs at least 3 frames
MIN_FRAMES_PER_PHONE = 3
#: senone scores are stored right-shifted by SENSCR_SHIFT = 10 bits (pocketsphinx hmm.h)
_SENSCR_SHIFT = 10
#: beams of the retries after a failed alignment, in order (pocketsphinx defaults: beam 1e-48, wbeam 7e-29, pbeam
#: 1e-48). Wide beams are slower and are reported, so they are a fallback, not the default. In our checks the first
#: retry rescued 2 of 32 synthetic utterances, the second MFA's 26 s ``cold_corpus`` recording.
RETRY_BEAMS: tuple[dict[str, float], ...] = ({"beam": 1e-80, "wbeam": 1e-60, "pbeam": 1e-80},
                                             {"beam": 1e-120, "wbeam": 1e-100, "pbeam": 1e-120})
_VARIANT = re.compile(r"\(\d+\)$")
_NOT_WORDS = {"<s>", "</s>", "<sil>"}


def _ps_phones(classes: list[str]) -> list[str]:
    """ARPABET-39 classes -> the acoustic model's phone names (upper case; no flap, so ``dx`` -> ``T``)."""
    return ["T" if c == "dx" else c.upper() for c in classes]


class PocketsphinxAligner:
    """Forced aligner for English on pocketsphinx's bundled US-English model; writes ARPABET phones."""

    name = "pocketsphinx"
    phone_scheme = "arpabet"

    def __init__(self, *, language: str = "en-US", seed: int = 0) -> None:
        if not language.casefold().startswith("en"):
            raise ConfigError(f"backend 'pocketsphinx' aligns English only (its acoustic model is US English), got "
                              f"language={language!r}; use backend='ctc' with a phoneme model for that language")
        try:
            import pocketsphinx
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise RunError("pocketsphinx is not installed: pip install 'pocketsphinx>=5.0'") from exc
        self.language = language
        self.seed = seed
        self.version = getattr(pocketsphinx, "__version__", None) or _dist_version("pocketsphinx")
        self._pocketsphinx = pocketsphinx
        self._decoder = self._new_decoder()
        self._retry: list[Any] = [None] * len(RETRY_BEAMS)  # decoders with wider beams, created on first need
        # one score unit = 2**SENSCR_SHIFT logmath units; logmath base 1.0001 by default
        self._nats_per_unit = float(self._decoder.get_logmath().log_to_ln(1)) * 2 ** _SENSCR_SHIFT
        self._generated: dict[str, str] = {}  # word -> pronunciation added from espeak-ng in this process

    def _new_decoder(self, **beams: float) -> Any:
        # bestpath=False: the best-path rescoring can end pass 1 on a one-frame fake </s>, after which pass 2 fails
        # to reach its final state (pocketsphinx issue #339 / PR #354); the command-line aligner disables it too
        d = self._pocketsphinx.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", bestpath=False, **beams)
        for word, phones in getattr(self, "_generated", {}).items():
            d.add_word(word, phones, True)
        return d

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "pocketsphinx": self.version, "model": "bundled en-us + cmudict-en-us",
                "bestpath": False, "retry_beams": list(RETRY_BEAMS),
                "g2p": "espeak-ng en-US", "pad_s": PAD_S, "dither_lsb": DITHER_LSB, "seed": self.seed}

    # ------------------------------------------------------------------ dictionary
    def _pronounce(self, words: list[str]) -> tuple[int, list[dict[str, Any]]]:
        """Make every word known to the decoder; returns (number of phones of the first variants, notes)."""
        notes: list[dict[str, Any]] = []
        bad: list[str] = []
        n_phones = 0
        for w in dict.fromkeys(words):
            known = self._decoder.lookup_word(w)
            if known is None:
                ipa = ipa_phonemes(w, "en-US")
                classes, unknown = arpabet_from_ipa(ipa)
                if unknown or not classes:
                    why = (f"espeak-ng phonemes {' '.join(ipa)} include {unknown} with no ARPABET class" if unknown
                           else "espeak-ng gives no phonemes")
                    bad.append(f"{w!r} ({why})")
                    continue
                known = " ".join(_ps_phones(classes))
                for d in (self._decoder, *self._retry):
                    if d is not None:
                        d.add_word(w, known, True)
                self._generated[w] = known
            if w in self._generated:
                notes.append({"kind": "oov_g2p", "severity": "warning",
                              "message": f"word {w!r} is not in CMUdict; pronunciation from espeak-ng: "
                                         f"{self._generated[w]}"})
            n_phones += len(known.split()) * words.count(w)
        if bad:
            raise AlignmentFailure("oov_unpronounceable", f"no pronunciation for {', '.join(bad)}", notes)
        return n_phones, notes

    # ------------------------------------------------------------------ alignment
    def _pcm(self, audio: np.ndarray) -> bytes:
        pad = np.zeros(round(PAD_S * SAMPLE_RATE))
        x = np.concatenate([pad, np.asarray(audio, dtype=np.float64) * 32767.0, pad])
        rng = derive(self.seed, "pocketsphinx-dither", len(audio))
        x = x + rng.integers(-DITHER_LSB, DITHER_LSB + 1, size=len(x))
        return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()

    @staticmethod
    def _decode(d: Any, pcm: bytes) -> None:
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()

    def _two_pass(self, d: Any, words: list[str], pcm: bytes) -> Any:
        """Pass 1 (word boundaries, pronunciation variants) and pass 2 (phones); the alignment or a reason."""
        try:
            # feature extraction keeps state between utterances (the cepstral-mean estimate and its running
            # sums): a fresh front end per utterance makes the result independent of what this process aligned
            # before (order, --jobs, resume). It costs about a millisecond.
            d.reinit_feat()
            d.set_align_text(" ".join(words))
            self._decode(d, pcm)
            if d.hyp() is None:
                return "no path for the transcript (pass 1)"
            d.set_alignment()
            self._decode(d, pcm)
            alignment = d.get_alignment()
        except RuntimeError as exc:
            return str(exc)
        return alignment if alignment is not None else "no phone alignment (pass 2)"

    def align(self, audio: np.ndarray, words: list[str]) -> AlignedUtterance:
        n_phones, notes = self._pronounce(words)
        duration = len(audio) / SAMPLE_RATE
        if duration / FRAME_S < MIN_FRAMES_PER_PHONE * n_phones:
            raise AlignmentFailure("audio_too_short", f"{duration:.3f} s of audio for {n_phones} phones (the "
                                   f"acoustic model needs >= {MIN_FRAMES_PER_PHONE * FRAME_S * 1000:.0f} ms per "
                                   f"phone)", notes)
        pcm = self._pcm(audio)
        alignment = self._two_pass(self._decoder, words, pcm)
        reasons: list[str] = []
        for k, beams in enumerate(RETRY_BEAMS):
            if not isinstance(alignment, str):
                break
            reasons.append(alignment)
            if self._retry[k] is None:
                self._retry[k] = self._new_decoder(**beams)
            alignment = self._two_pass(self._retry[k], words, pcm)
        if isinstance(alignment, str):
            raise AlignmentFailure("no_alignment", f"pocketsphinx: {'; '.join([*reasons, alignment])} (default "
                                   f"beams, then wider beams {list(RETRY_BEAMS)})", notes)
        if reasons:
            notes = [*notes, {"kind": "retried_wide_beam", "severity": "info",
                              "message": f"default beams failed ({reasons[0]}); aligned with wider beams "
                                         f"{RETRY_BEAMS[len(reasons) - 1]}"}]
        phones: list[AlignedPhone] = []
        k = -1
        for w in alignment:
            name = _VARIANT.sub("", w.name)
            if name in _NOT_WORDS or name.startswith("["):
                continue
            k += 1
            if k >= len(words) or name != words[k]:
                raise AlignmentFailure("no_alignment", f"pocketsphinx returned word {name!r} at position {k}, "
                                       f"expected {words[k] if k < len(words) else 'no more words'!r}", notes)
            for p in w:
                if p.name == "SIL" or p.duration <= 0:
                    continue
                start = max(0.0, p.start * FRAME_S - PAD_S)
                end = min(duration, (p.start + p.duration) * FRAME_S - PAD_S)
                if end <= start:
                    raise AlignmentFailure("no_alignment", f"phone {p.name} of word {name!r} was placed in the "
                                           f"padding outside the audio", notes)
                phones.append(AlignedPhone(start=round(start, 6), end=round(end, 6), label=p.name, word_index=k,
                                           confidence=float(p.score) * self._nats_per_unit / p.duration))
        if k + 1 != len(words):
            raise AlignmentFailure("no_alignment", f"pocketsphinx aligned {k + 1} of {len(words)} words", notes)
        if not phones or not all(math.isfinite(p.confidence) for p in phones):
            raise AlignmentFailure("no_alignment", "pocketsphinx returned no usable phones", notes)
        return AlignedUtterance(phones=phones, words=list(words), notes=notes)


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"
