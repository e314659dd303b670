"""Transcript normalisation: the words an aligner is asked to find.

The rule, applied the same way for every backend and language (``docs/align.md``):

1. Unicode NFKC, then case folding (``"Straße" -> "strasse"``, ``"HELLO" -> "hello"``).
2. Typographic apostrophes (``’ ‘ ʼ ′``) become ``'``.
3. A word is a maximal run of letters, combining marks and digits, with single apostrophes allowed *inside* it
   (``don't``, ``o'clock``). Everything else separates words: spaces, punctuation, hyphens (``well-known`` ->
   ``well known``), slashes, brackets. Apostrophes at a word's edge are dropped (``'cause`` -> ``cause``).
4. Digits are kept as written (``"42"``, ``"3rd"``). No aligner dictionary lists them, so they are pronounced by
   espeak-ng's number rules for the transcript's language (``42`` -> "forty two") like any other unknown word,
   and the word tier keeps ``42``.
"""

from __future__ import annotations

import unicodedata

__all__ = ["normalize_transcript"]

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "′": "'", "`": "'"})


def _is_word_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in ("L", "M", "N")


def normalize_transcript(text: str) -> list[str]:
    """The words of ``text`` after the normalisation in the module docstring (possibly empty)."""
    s = unicodedata.normalize("NFKC", str(text)).casefold().translate(_APOSTROPHES)
    words: list[str] = []
    cur: list[str] = []
    for i, ch in enumerate(s):
        if _is_word_char(ch):
            cur.append(ch)
        elif ch == "'" and cur and i + 1 < len(s) and _is_word_char(s[i + 1]):
            cur.append(ch)  # inside a word: don't, o'clock
        else:
            if cur:
                words.append("".join(cur))
            cur = []
    if cur:
        words.append("".join(cur))
    return words
