"""The audit design: validated once, groups in any form, stratified folds, explicit exclusions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phonefair.audit.design import Design, as_groups
from phonefair.errors import DataError
from phonefair.store import Embeddings


def emb(n_per_group: dict[str, int], phones: tuple[str, ...] = ("a", "b", "sil")) -> tuple[Embeddings, dict[str, str]]:
    spk = [(f"{g}{i}", g) for g, n in n_per_group.items() for i in range(n)]
    speaker = np.repeat([s for s, _ in spk], len(phones))
    phone = np.tile(phones, len(spk))
    e = Embeddings.from_numpy({6: np.zeros((len(speaker), 3)), 12: np.ones((len(speaker), 3))},
                              speaker=speaker, phone=phone)
    return e, dict(spk)


def test_groups_as_series_dict_or_table_are_the_same() -> None:
    e, g = emb({"A": 3, "B": 3})
    table = pd.DataFrame({"speaker": list(g), "accent": list(g.values())})
    designs = [Design.build(e, x, min_speakers=2) for x in (g, pd.Series(g), (table, "accent"))]
    assert all(list(d.speakers) == list(designs[0].speakers) for d in designs)
    assert designs[0].group_names == ["A", "B"]
    assert e.layers == ["6", "12"]  # integer layer names are strings, in depth order


def test_exclusions_are_reported_never_silent() -> None:
    e, g = emb({"A": 5, "B": 5, "C": 2})
    g = {**g, "ghost": "A"}  # a speaker with a group but no tokens
    d = Design.build(e, g, min_speakers=3)
    assert d.group_names == ["A", "B"]
    reasons = " ".join(d.problems["reason"])
    assert "group 'C' has 2 speaker(s) < min_speakers=3" in reasons
    assert "speaker has a group but no tokens" in reasons
    assert "phone in exclude_phones" in reasons and "sil" not in set(d.tokens["phone"])
    assert "no group" in " ".join(Design.build(e, {k: v for k, v in g.items() if k != "A0"},
                                               min_speakers=3).problems["reason"])


def test_folds_are_stratified_and_cover_every_speaker_once() -> None:
    e, g = emb({"A": 11, "B": 7, "C": 4})
    d = Design.build(e, g, min_speakers=2, folds=5, repeats=2, seed=3)
    assert d.folds.shape == (2, 22)
    for r in range(2):
        sizes = np.bincount(d.folds[r], minlength=5)
        assert sizes.max() - sizes.min() <= 1
        for gi in range(3):  # each group spread over the folds as evenly as its size allows
            per = np.bincount(d.folds[r][d.speaker_group == gi], minlength=5)
            assert per.max() - per.min() <= 1
    assert not np.array_equal(d.folds[0], d.folds[1])  # a repeat deals new folds
    again = Design.build(e, g, min_speakers=2, folds=5, repeats=2, seed=3)
    np.testing.assert_array_equal(d.folds, again.folds)  # seeded


def test_pilot_design_warns_and_impossible_designs_fail_clearly() -> None:
    e, g = emb({"A": 2, "B": 3})
    d = Design.build(e, g, min_speakers=2)
    assert d.warnings and "pilot-sized" in d.warnings[0]
    with pytest.raises(DataError, match="need at least 2 groups with >= min_speakers=5"):
        Design.build(e, g, min_speakers=5)
    with pytest.raises(DataError, match="reference group 'Z' is not among the analysed groups"):
        Design.build(e, g, min_speakers=2, reference="Z")
    with pytest.raises(DataError, match="need at least 2 groups"):
        Design.build(e, {s: "A" for s in g}, min_speakers=2)  # everyone in one group
    with pytest.raises(DataError, match="speaker ids must be unique"):
        as_groups(pd.Series(["A", "B"], index=["s1", "s1"]))
    with pytest.raises(DataError, match="expected a pandas Series"):
        as_groups(["A", "B"])  # type: ignore[arg-type]
