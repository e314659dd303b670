"""Offline data with known truth: synthetic multi-accent speech (espeak-ng) and a planted-truth embedding simulator."""

from phonefair.synth.corpus import build_synthetic_corpus
from phonefair.synth.simulate import PRESETS, GroupParams, Scenario, Simulation, simulate

__all__ = ["PRESETS", "GroupParams", "Scenario", "Simulation", "build_synthetic_corpus", "simulate"]
