"""The random-vs-systematic error typology of phone embeddings (see ``docs/typology.md``).

``analyze(source, groups, ...)`` → :class:`TypologyResults` with tidy tables: ``decomposition``, ``shift_tests``,
``pairwise_shift``, ``speaker_variance``, ``variance_accuracy``, ``verdict`` (+ ``variance_tests``,
``gap_attribution``, ``problems``).
"""

from phonefair.analysis.typology import TypologyResults, analyze, load

__all__ = ["TypologyResults", "analyze", "load"]
