"""Served worse? (accuracy gaps, pairwise attribution) and why? (random vs systematic typology, mechanisms)."""

from phonefair.analysis.served import ServedWorse, served_worse
from phonefair.analysis.typology import TABLES, TypologyResults, analyze
from phonefair.analysis.verdict import VERDICTS, headline_layer, verdict_table

__all__ = ["TABLES", "VERDICTS", "ServedWorse", "TypologyResults", "analyze", "headline_layer", "served_worse",
           "verdict_table"]
