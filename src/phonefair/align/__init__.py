"""Forced alignment: corpora with audio + transcripts but no phone alignments (Common Voice, Fair-Speech, Speech
Accent Archive, CORAAL, ...) become phonefair corpora, offline, with the alignment's quality per speaker group.

    result = phonefair.align.align_corpus("cv-corpus/en", "cv-aligned")          # pocketsphinx, English
    corpus = result.load()                                                       # the generic TextGrid loader
    by_group, tests, warnings = result.quality_by_group(groups)                  # is the aligner fair too?

Backends: ``pocketsphinx`` (US English, its wheel ships the acoustic model and CMUdict; espeak-ng pronounces
words the dictionary lacks) and ``ctc`` (any local CTC phoneme checkpoint, any language espeak-ng speaks). See
``docs/align.md``.
"""

from phonefair.align.base import PROBLEM_KINDS, AlignedPhone, AlignedUtterance, AlignmentFailure
from phonefair.align.corpus import BACKENDS, AlignResult, BackendSpec, align_corpus, make_aligner, read_alignment_tables
from phonefair.align.evaluate import boundary_errors, summarize_errors
from phonefair.align.quality import METRICS, alignment_quality_by_group, speaker_quality
from phonefair.align.text import normalize_transcript
from phonefair.align.viterbi import CTCPath, ctc_forced_align

__all__ = ["BACKENDS", "METRICS", "PROBLEM_KINDS", "AlignResult", "AlignedPhone", "AlignedUtterance",
           "AlignmentFailure", "BackendSpec", "CTCPath", "align_corpus", "alignment_quality_by_group",
           "boundary_errors", "ctc_forced_align", "make_aligner", "normalize_transcript", "read_alignment_tables",
           "speaker_quality", "summarize_errors"]
