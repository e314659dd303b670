"""What every alignment backend returns, and how it says that an utterance cannot be aligned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["PROBLEM_KINDS", "AlignedPhone", "AlignedUtterance", "Aligner", "AlignmentFailure"]

#: the ``kind`` column of the alignment problems table -> what it means
PROBLEM_KINDS: dict[str, str] = {
    "oov_g2p": "word not in the aligner's dictionary; pronunciation generated with espeak-ng (utterance kept)",
    "oov_partial": "part of a word's espeak-ng pronunciation has no token in the model's vocabulary (skipped)",
    "oov_unpronounceable": "a word has no usable pronunciation (utterance skipped)",
    "empty_transcript": "no words after text normalisation (utterance skipped)",
    "retried_wide_beam": "pocketsphinx needed its retry with wider beams (utterance kept; its alignment is less "
                         "certain)",
    "no_alignment": "the aligner found no path through the audio for the transcript (utterance skipped)",
    "audio_unreadable": "the audio file is missing, corrupt, empty or has several channels (utterance skipped)",
    "audio_silent": "the audio is (nearly) digital silence (utterance skipped)",
    "audio_too_short": "the audio is too short for the transcript (utterance skipped)",
    "audio_clipping": "many samples at full scale (utterance kept)",
    "internal_error": "an unexpected error while aligning (utterance skipped, retried on a rerun)",
    "bad_input": "an input row without audio path, transcript or a usable speaker id (utterance skipped)",
    "metadata": "a problem in the speaker table (conflicting values, rows without a speaker), as the loader reports it",
    "duplicate": "a second utterance with the same output name (utterance skipped)",
}


@dataclass(frozen=True)
class AlignedPhone:
    """One aligned phone: times in seconds on the utterance's own time line."""

    start: float
    end: float
    label: str  # the backend's phone label (ARPABET for pocketsphinx, the checkpoint's token for CTC)
    word_index: int  # position of its word in the normalised transcript
    confidence: float  # backend-specific (see docs/align.md): higher = better


@dataclass
class AlignedUtterance:
    """A backend's result for one utterance: speech phones in time order, their words, and notes (problems that
    did not stop the alignment, e.g. an out-of-vocabulary word pronounced by espeak-ng)."""

    phones: list[AlignedPhone]
    words: list[str]  # the normalised transcript
    notes: list[dict[str, Any]] = field(default_factory=list)  # {"kind", "severity", "message"}


class AlignmentFailure(Exception):
    """An utterance that cannot be aligned; ``kind`` is a key of :data:`PROBLEM_KINDS`."""

    def __init__(self, kind: str, message: str, notes: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.notes = notes or []


class Aligner(Protocol):
    """A forced-alignment backend; one instance per process (it may hold a decoder or a model)."""

    name: str
    #: phonefair phone scheme of the labels it writes (``phonefair.corpus.phonesets.SCHEMES``)
    phone_scheme: str

    def identity(self) -> dict[str, Any]:
        """Everything that changes its output (model, version, language, settings): part of the resume key."""
        ...

    def align(self, audio: np.ndarray, words: list[str]) -> AlignedUtterance:
        """Align 16 kHz mono float audio to the normalised ``words``; raise :class:`AlignmentFailure` if impossible."""
        ...
