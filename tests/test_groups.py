"""Speaker groups, exclusions and speaker-disjoint splits."""

from __future__ import annotations

import pandas as pd
import pytest

from phonefair.corpus.schema import Corpus, CorpusError
from phonefair.groups import GroupSpec, apply_split, assign_groups, group_summary, split_speakers


def speakers() -> pd.DataFrame:
    rows = []
    for i in range(24):
        rows.append({"speaker": f"s{i:02d}", "gender": "female" if i % 2 else "male",
                     "age": 20 + i * 2.5, "dialect": ["dr1", "dr2", "dr3"][i % 3] if i < 21 else "dr8"})
    rows.append({"speaker": "nomd", "gender": None, "age": None, "dialect": "dr1"})
    return pd.DataFrame(rows)


def test_single_attribute_and_missing_values_are_reported():
    a = assign_groups(speakers(), GroupSpec(attributes=("gender",)))
    assert set(a.groups.unique()) == {"male", "female"}
    assert "nomd" not in a.groups.index
    row = a.excluded.set_index("speaker").loc["nomd"]
    assert "missing" in row["reason"]


def test_small_groups_excluded_with_reason():
    a = assign_groups(speakers(), GroupSpec(attributes=("dialect",), min_speakers=5))
    assert "dr8" not in set(a.groups)  # 3 speakers
    ex = a.excluded.dropna(subset=["group"])
    assert set(ex["group"]) == {"dr8"} and ex["reason"].str.contains("min_speakers=5").all()
    assert "dr8" in set(a.all_groups)


def test_intersection_bins_and_mapping():
    spec = GroupSpec(attributes=("gender", "age"), bins={"age": [0, 40, 200]}, min_speakers=1)
    a = assign_groups(speakers(), spec)
    assert a.groups["s00"] == "male × [0,40)"
    assert a.groups["s23"] == "female × [40,200)"
    merged = assign_groups(speakers(), GroupSpec(attributes=("dialect",), mapping={"dialect": {"dr8": "dr1"}}))
    assert merged.groups["s21"] == "dr1"


def test_unknown_attribute_and_reference_errors():
    with pytest.raises(CorpusError, match="'accent' is not a speaker-table column"):
        assign_groups(speakers(), "accent")
    with pytest.raises(CorpusError, match="reference group 'dr9' does not exist"):
        assign_groups(speakers(), GroupSpec(attributes=("dialect",), reference="dr9"))
    with pytest.raises(CorpusError, match="is excluded"):
        assign_groups(speakers(), GroupSpec(attributes=("dialect",), reference="dr8"))


def test_split_is_speaker_disjoint_stratified_and_seeded():
    a = assign_groups(speakers(), GroupSpec(attributes=("dialect",)))
    s1 = split_speakers(a.groups, test_fraction=0.3, seed=7)
    s2 = split_speakers(a.groups, test_fraction=0.3, seed=7)
    s3 = split_speakers(a.groups, test_fraction=0.3, seed=8)
    pd.testing.assert_series_equal(s1, s2)
    assert not s1.equals(s3)
    for g in a.labels:
        sides = s1[a.groups == g].value_counts()
        assert sides["test"] >= 2 and sides["train"] >= 2
    with pytest.raises(CorpusError, match="cannot split"):
        split_speakers(pd.Series(["g", "g", "g"], index=["a", "b", "c"]), test_fraction=0.5)


def test_group_summary_counts_and_apply_split():
    spk = speakers()
    phones = pd.DataFrame({"recording_id": [f"r{i}" for i in range(25) for _ in range(3)],
                           "speaker": [s for s in spk["speaker"] for _ in range(3)],
                           "start": [0.0, 0.1, 0.2] * 25, "end": [0.1, 0.2, 0.3] * 25,
                           "phone_raw": ["aa", "iy", "s"] * 25, "phone": ["aa", "iy", "s"] * 25})
    rec = pd.DataFrame({"recording_id": [f"r{i}" for i in range(25)], "speaker": spk["speaker"],
                        "audio_path": [f"r{i}.wav" for i in range(25)], "duration": 0.3})
    corpus = Corpus(phones=phones, speakers=spk, recordings=rec)
    a = assign_groups(corpus, GroupSpec(attributes=("dialect",)))
    summ = group_summary(corpus, a).set_index("group")
    assert summ.loc["dr8", "speakers"] == 3 and not summ.loc["dr8", "included"]
    assert summ.loc["dr1", "phones"] == 3 * summ.loc["dr1", "speakers"]
    assert "min_speakers" in summ.loc["dr8", "reason"]
    split = split_speakers(a.groups, seed=0)
    c2 = apply_split(corpus, split)
    assert c2.phones.loc[c2.phones.speaker == "s21", "split"].isna().all()  # dr8: not in inference
    assert set(c2.phones["split"].dropna()) == {"train", "test"}
