"""Fake result tables that follow the result-table contract: for tests, docs and previewing the report
without running a pipeline. The numbers are random and mean nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["example_tables"]


def example_tables(*, groups: tuple[str, ...] = ("a", "b", "c"), layers: tuple[str, ...] = ("0", "1", "2", "3"),
                   speakers_per_group: int = 4, phones: tuple[str, ...] = ("aa", "iy", "s", "t"),
                   seed: int = 0) -> dict[str, pd.DataFrame]:
    """One encoder's worth of contract-shaped tables (probe and typology), filled with random numbers."""
    rng = np.random.default_rng(seed)
    prov = {"seed": seed, "example": True}
    speakers = [(f"{g}{i}", g) for g in groups for i in range(speakers_per_group)]
    rows = []
    for layer in layers:
        for kind, tg in [("pooled", pd.NA)] + [(k, g) for k in ("group", "leave_out") for g in groups]:
            for test in groups:
                for metric in ("accuracy", "balanced_accuracy"):
                    est = float(rng.uniform(0.4, 0.9))
                    rows.append(dict(layer=layer, train_kind=kind, train_group=tg, test_group=test, metric=metric,
                                     estimate=est, ci_low=est - 0.05, ci_high=est + 0.05, seed_sd=0.01,
                                     n_test_speakers=speakers_per_group, n_test_tokens=100, n_train_tokens=300,
                                     n_train_speakers=3 * speakers_per_group))
    probe_accuracy = pd.DataFrame(rows)
    benefit = pd.DataFrame([dict(layer=layer, group=g, delta=(d := float(rng.normal(0, 0.03))), ci_low=d - 0.02,
                                 ci_high=d + 0.02, p_value=0.2, q_value=0.3, significant=bool(abs(d) > 0.04),
                                 seed_sd=0.01, acc_in_group=0.7 + d, acc_pooled=0.7)
                            for layer in layers for g in groups])
    gap = pd.DataFrame([dict(layer=layer, overall_accuracy=0.5 + 0.1 * i, overall_error=0.5 - 0.1 * i,
                             best_group=groups[0], worst_group=groups[-1], gap=0.1, gap_ci_low=0.05,
                             gap_ci_high=0.15, ratio=0.85) for i, layer in enumerate(layers)])
    transfer = pd.DataFrame([dict(layer=layer, train_group=a, test_group=b, accuracy=(x := float(rng.uniform(.4, .9))),
                                  ci_low=x - .05, ci_high=x + .05)
                             for layer in layers for a in groups for b in groups])
    speaker_accuracy = pd.DataFrame([dict(layer=layer, speaker=s, group=g, accuracy=float(rng.uniform(.4, .9)),
                                          balanced_accuracy=float(rng.uniform(.4, .9)), n_tokens=50)
                                     for layer in layers for s, g in speakers])
    phone_accuracy = pd.DataFrame([dict(layer=layer, group=g, phone=p, accuracy=float(rng.uniform(.3, 1)),
                                        n_tokens=20, top_confusion=phones[(j + 1) % len(phones)])
                                   for layer in layers for g in groups for j, p in enumerate(phones)])
    dec_rows, tests = [], []
    for layer in layers:
        for space in ("raw", "lda"):
            for g in groups:
                for p in ("*",) + phones:
                    sh, b, w = rng.uniform(0, 1, 3)
                    tot = sh + b + w
                    dec_rows.append(dict(layer=layer, space=space, group=g, phone=p, shift_sq=sh, shift_ci_low=sh / 2,
                                         shift_ci_high=sh * 1.5, between_speaker_var=b, within_speaker_var=w,
                                         share_systematic=sh / tot, share_random=(b + w) / tot,
                                         n_speakers=speakers_per_group, n_tokens=40))
                    tests.append(dict(layer=layer, space=space, group=g, phone=p, effect=sh, p_value=0.01,
                                      q_value=0.04, significant=True))
    speaker_variance = pd.DataFrame([dict(layer=layer, space=space, speaker=s, group=g,
                                          variance=float(rng.uniform(1, 3)), n_tokens=50)
                                     for layer in layers for space in ("raw", "lda") for s, g in speakers])
    variance_accuracy = pd.DataFrame([dict(layer=layer, space=space, rho=-0.3, ci_low=-0.6, ci_high=0.1,
                                           n_speakers=len(speakers), rank_agreement=0.33)
                                      for layer in layers for space in ("raw", "lda")])
    verdicts = ("random-dominant", "systematic-dominant", "both", "no detectable disadvantage")
    verdict = pd.DataFrame([dict(layer=layer, group=g, verdict=verdicts[j % 4], accuracy_gap=0.05,
                                 accuracy_gap_ci_low=0.01, accuracy_gap_ci_high=0.09, shift_sq=0.2,
                                 variance_ratio=1.3, in_group_benefit=0.01,
                                 evidence=f"example evidence for <{g}> & co")
                            for layer in layers for j, g in enumerate(groups)])
    out = dict(probe_accuracy=probe_accuracy, in_group_benefit=benefit, group_gap=gap, transfer=transfer,
               speaker_accuracy=speaker_accuracy, phone_accuracy=phone_accuracy,
               decomposition=pd.DataFrame(dec_rows), shift_tests=pd.DataFrame(tests),
               speaker_variance=speaker_variance, variance_accuracy=variance_accuracy, verdict=verdict)
    for t in out.values():
        t.attrs["provenance"] = dict(prov)
    return out
