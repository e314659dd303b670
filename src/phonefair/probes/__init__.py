"""Cross-fitted phone probes per speaker group: the batched trainer, training populations, probe tables."""

from phonefair.probes.fit import fit_probes, resolve_device
from phonefair.probes.populations import MATCHED_KINDS, POPULATION_KINDS, Population, crossfit_populations
from phonefair.probes.results import METRICS, TABLE_NAMES, ProbeResults
from phonefair.probes.trainer import BatchedProbes, Selection, TrainerConfig, fit_batched, fit_select

__all__ = ["MATCHED_KINDS", "METRICS", "POPULATION_KINDS", "BatchedProbes", "Population", "ProbeResults",
           "Selection", "TABLE_NAMES", "TrainerConfig", "crossfit_populations", "fit_batched", "fit_probes",
           "fit_select", "resolve_device"]
