"""Served worse? Gaps, pairwise step-down max-T attribution, family-wise error on planted truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phonefair.analysis.served import served_worse
from phonefair.audit.design import Design
from phonefair.store.base import InMemoryEmbeddings


def planted(sizes: tuple[int, ...], effects: tuple[float, ...], *, layers: int = 3, seed: int = 0,
            sd: float = 0.05, reference: str | None = None, effect_layers: tuple[int, ...] | None = None
            ) -> tuple[Design, pd.DataFrame]:
    """Per-speaker accuracies with a planted deficit ``effects[g]`` (accuracy points) per group."""
    gen = np.random.default_rng(seed)
    spk, grp = [], []
    for g, n in enumerate(sizes):
        spk += [f"g{g}_{i:02d}" for i in range(n)]
        grp += [f"g{g}"] * n
    tokens = pd.DataFrame({"speaker": np.repeat(spk, 2), "phone": ["a", "b"] * len(spk)})
    emb = InMemoryEmbeddings(tokens, {"0": np.zeros((len(tokens), 2))})
    design = Design.build(emb, pd.Series(grp, index=spk), min_speakers=2, reference=reference, seed=seed)
    rows = []
    for layer in range(layers):
        on = effect_layers is None or layer in effect_layers
        for s, g in zip(spk, grp, strict=True):
            rows.append({"layer": str(layer), "speaker": s, "group": g,
                         "standardized_accuracy": 0.7 - (effects[int(g[1:])] if on else 0) + gen.normal(0, sd)})
    return design, pd.DataFrame(rows)


def flagged(sizes: tuple[int, ...], effects: tuple[float, ...], seed: int, **kw: object) -> set[str]:
    d, sa = planted(sizes, effects, seed=seed, **kw)  # type: ignore[arg-type]
    r = served_worse(sa, d, n_perm=199, seed=seed)
    return set(r.decisions.loc[r.decisions["served_worse"], "group"])


def test_null_family_wise_error_is_controlled_across_shapes() -> None:
    """No group differs: the probability that *any* group is called served worse is at most alpha (binomial band
    over 240 datasets of four shapes: 2, 3 balanced, 3 unbalanced 18/9/7, 5 groups)."""
    shapes = [(10, 10), (12, 12, 12), (18, 9, 7), (6, 6, 6, 6, 6)]
    hits = [bool(flagged(s, (0.0,) * len(s), seed)) for s in shapes for seed in range(60)]
    assert np.mean(hits) <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / len(hits))


def test_one_worse_group_is_named_and_innocents_are_not() -> None:
    """The group with a planted deficit is named; the others, although they look better than the mean, are not."""
    right = [flagged((12, 12, 12), (0.0, 0.0, 0.06), seed) == {"g2"} for seed in range(20)]
    assert np.mean(right) >= 0.9


def test_two_worse_groups_of_three_are_both_named() -> None:
    """With a median reference one of two affected groups would be 'the consensus'; pairwise attribution names
    both (each is worse than the unaffected group)."""
    right = [flagged((12, 12, 12), (0.08, 0.08, 0.0), seed) == {"g0", "g1"} for seed in range(20)]
    assert np.mean(right) >= 0.9


def test_unbalanced_groups_with_few_speakers() -> None:
    right = [flagged((18, 9, 7), (0.0, 0.0, 0.09), seed) == {"g2"} for seed in range(20)]
    assert np.mean(right) >= 0.9


def test_effect_in_some_layers_is_located() -> None:
    d, sa = planted((12, 12, 12), (0.0, 0.0, 0.08), layers=4, effect_layers=(2, 3), seed=1)
    r = served_worse(sa, d, n_perm=499, seed=1)
    dec = r.decisions.set_index("group")
    assert dec.loc["g2", "served_worse"]
    assert set(dec.loc["g2", "layers"].split(", ")) <= {"2", "3"} and dec.loc["g2", "peak_layer"] in {"2", "3"}


def test_reference_that_is_itself_served_worse_is_flagged_and_warned() -> None:
    """Reference mode, the reference is the affected group: the others are *better*, never blamed; the reference
    itself is named, with a warning."""
    names = []
    for seed in range(10):
        d, sa = planted((12, 12, 12), (0.07, 0.0, 0.0), reference="g0", seed=seed)
        r = served_worse(sa, d, n_perm=199, seed=seed)
        names.append(set(r.decisions.loc[r.decisions["served_worse"], "group"]))
        if "g0" in names[-1]:
            assert any("reference group 'g0' is itself served worse" in w for w in r.warnings)
    assert all("g1" not in n and "g2" not in n for n in names)
    assert np.mean(["g0" in n for n in names]) >= 0.9


def test_gap_is_against_the_other_groups_and_unbiased_under_the_null() -> None:
    gaps = []
    for seed in range(40):
        d, sa = planted((12, 12, 12), (0.0, 0.0, 0.0), seed=seed, layers=1)
        g = served_worse(sa, d, n_perm=99, seed=seed).gaps
        gaps.append(g["gap"].to_numpy())
        # definition: gap_g = mean of the other groups' accuracies − accuracy_g
        acc = g.set_index("group")["accuracy"]
        assert g.set_index("group").loc["g0", "gap"] == pytest.approx((acc["g1"] + acc["g2"]) / 2 - acc["g0"])
    assert abs(np.mean(gaps)) < 0.005  # no upward bias of a best-minus-worst gap


def test_minimum_detectable_effect_is_reported_when_nothing_is_found() -> None:
    d, sa = planted((10, 10), (0.0, 0.0), seed=3, layers=1)
    g = served_worse(sa, d, n_perm=199, seed=3).gaps
    assert (g["mde"] > 0).all() and (g["mde"] < 0.2).all()
