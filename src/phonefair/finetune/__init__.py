"""Fairness fine-tuning of speech encoders (phone CTC, adversarial and domain-enhancing objectives). The
before/after audit is :mod:`phonefair.audit.compare`. See ``docs/finetune.md``."""

from phonefair.finetune.data import (VOCAB, GroupBalancedSampler, UniformSampler, Utterance, UtteranceSet,
                                     build_utterances)
from phonefair.finetune.evaluate import edit_distance, greedy_decode, per_by_group
from phonefair.finetune.objectives import CTCHead, GroupClassifier, WeightSchedule, grad_reverse
from phonefair.finetune.train import (OBJECTIVES, FinetuneConfig, FinetuneResult, evaluate_per, finetune,
                                      finetune_variants)

__all__ = ["OBJECTIVES", "VOCAB", "CTCHead", "FinetuneConfig", "FinetuneResult", "GroupBalancedSampler",
           "GroupClassifier", "UniformSampler", "Utterance", "UtteranceSet", "WeightSchedule", "build_utterances",
           "edit_distance", "evaluate_per", "finetune", "finetune_variants", "grad_reverse",
           "greedy_decode", "per_by_group"]
