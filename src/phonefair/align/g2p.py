"""Pronunciations from espeak-ng (grapheme-to-phoneme) for words an aligner's dictionary lacks, and for every word
of the CTC backend.

espeak-ng is already phonefair's synthesiser (``phonefair.synth.espeak``); its ``espeak_TextToPhonemes`` gives the
same IPA phonemes the synthesiser speaks. Words are phonemised one at a time (cached per process), so a word's
pronunciation does not depend on its neighbours: like a pronouncing dictionary, it ignores cross-word effects such
as French liaison.
"""

from __future__ import annotations

import functools

from phonefair.corpus.phonesets import UnknownPhoneError, map_label
from phonefair.errors import ConfigError

__all__ = ["STRESS_MARKS", "arpabet_from_ipa", "ipa_phonemes", "strip_stress"]

#: espeak's stress marks, written before the stressed phoneme
STRESS_MARKS = ("ˈ", "ˌ")


def strip_stress(phoneme: str) -> str:
    """``"ˈoʊ" -> "oʊ"``; also drops espeak's trailing ``-`` (a syllable-boundary mark in some languages)."""
    for mark in STRESS_MARKS:
        phoneme = phoneme.replace(mark, "")
    return phoneme.rstrip("-")


@functools.lru_cache(maxsize=100_000)
def ipa_phonemes(word: str, language: str) -> tuple[str, ...]:
    """espeak-ng's IPA phonemes for ``word`` in ``language`` (an espeak voice such as ``"en-US"``, ``"fr"``), stress
    marks attached; ``()`` when espeak says nothing. Numbers are read out (``"42"`` gives the phonemes of "forty
    two"). Raises :class:`ConfigError` for a language espeak-ng does not have."""
    from phonefair.synth.espeak import EspeakError, get_synth

    try:
        spoken = get_synth().phonemize(word, language)
    except EspeakError as exc:
        raise ConfigError(f"language {language!r}: espeak-ng has no such voice ({exc})") from exc
    # "(ko)" ... "(en-us)": espeak's language-switch marks around a foreign stretch are not phonemes
    return tuple(p for w in spoken for p in w if strip_stress(p) and not (p.startswith("(") and p.endswith(")")))


def arpabet_from_ipa(phonemes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """espeak IPA phonemes -> ``(ARPABET-39 classes, labels with no class)`` through the ``espeak_ipa`` phone map
    (``phonefair/data/phonemaps/espeak_ipa.tsv``; multi-segment labels such as ``ɔːɹ`` give two classes, pauses and
    deleted labels give none)."""
    classes: list[str] = []
    unknown: list[str] = []
    for p in phonemes:
        try:
            targets, _ = map_label(p, "espeak_ipa")
        except UnknownPhoneError:
            unknown.append(p)
            continue
        classes.extend(t for t in targets if t != "sil")
    return classes, unknown
