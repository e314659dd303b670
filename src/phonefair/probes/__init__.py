"""Per-group phoneme probes: batched PyTorch trainer, size-matched training populations, cross-group matrices,
in-group benefit and speaker-clustered confidence intervals. See docs/probes.md."""

from phonefair.probes.fit import DEFAULT_L2_GRID, fit_probes
from phonefair.probes.populations import POPULATION_KINDS, Population, build_populations
from phonefair.probes.results import COLUMNS, TABLE_NAMES, ProbeResults
from phonefair.probes.trainer import BatchedProbes, Selection, TrainerConfig, fit_batched, fit_select

__all__ = ["COLUMNS", "DEFAULT_L2_GRID", "POPULATION_KINDS", "TABLE_NAMES", "BatchedProbes", "Population",
           "ProbeResults", "Selection", "TrainerConfig", "build_populations", "fit_batched", "fit_probes",
           "fit_select"]
