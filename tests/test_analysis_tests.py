"""Permutation scheme, FDR control, confounds and verdicts of the typology on small simulations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phonefair.analysis import analyze
from phonefair.analysis.shift_tests import analyze_space, consensus_pvalue, speaker_permutations
from phonefair.stats import benjamini_hochberg
from phonefair.synth.simulate import GroupParams, Scenario, simulate

from phonefair.analysis.sufficient import SpaceStats, accumulate_layer

FAST = {"n_perm": 199, "n_boot": 100, "progress": False}


def stats_of(sim) -> tuple[SpaceStats, np.ndarray, list[str], list[str]]:  # type: ignore[no-untyped-def]
    """Raw-space speaker-phone statistics and speaker group indices of a simulation (layer "0")."""
    tok = sim.tokens
    spk, ph = sorted(tok["speaker"].unique()), sorted(tok["phone"].unique())
    dim = sim.embeddings.read("0", [0]).shape[1]
    ls = accumulate_layer(sim.embeddings, "0", np.arange(len(tok)), pd.Index(spk).get_indexer(tok["speaker"]),
                          pd.Index(ph).get_indexer(tok["phone"]), len(spk), len(ph),
                          centre=np.zeros((len(ph), dim)), projections={"raw": None})
    names = sorted(sim.groups.unique())
    return ls.spaces["raw"], np.array([names.index(sim.groups[s]) for s in spk]), names, ph


@pytest.fixture(scope="module")
def results() -> dict[str, object]:
    return {sc: analyze(simulate(sc, seed=11).embeddings, simulate(sc, seed=11).groups, **FAST)
            for sc in ("null", "shift", "variance", "both", "count_confound", "frequency_confound")}


def verdicts(res) -> dict[str, str]:  # type: ignore[no-untyped-def]
    v = res.tables()["verdict"]
    return dict(zip(v["group"], v["verdict"], strict=True))


@pytest.mark.parametrize(("scenario", "expected_c"), [
    ("null", "no detectable disadvantage"),
    ("shift", "systematic-dominant"),
    ("variance", "random-dominant"),
    ("both", "both"),
    ("count_confound", "no detectable disadvantage"),
    ("frequency_confound", "no detectable disadvantage"),
])
def test_verdict_names_the_planted_type(results, scenario: str,  # type: ignore[no-untyped-def]
                                        expected_c: str) -> None:
    v = verdicts(results[scenario])
    assert v["C"] == expected_c
    assert v["A"] == v["B"] == "no detectable disadvantage"  # the unshifted groups are never blamed


def test_confounds_not_flagged_by_any_test(results) -> None:  # type: ignore[no-untyped-def]
    for sc in ("count_confound", "frequency_confound"):
        t = results[sc].tables()
        assert not t["shift_tests"]["significant"].any(), sc
        assert not t["variance_tests"]["significant"].any(), sc


def test_shift_flags_only_group_c_phones(results) -> None:  # type: ignore[no-untyped-def]
    st = results["shift"].tables()["shift_tests"]
    sig = st[st["significant"]]
    assert set(sig["group"]) == {"C"}
    assert (sig["phone"] != "*").sum() >= 5  # most of C's 10 shifted phones found


def test_speaker_permutations_keep_speakers_and_group_sizes() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    perms = speaker_permutations(labels, 50, np.random.default_rng(0))
    assert perms.shape == (50, 7)
    assert (perms.sum(1) == 3).all()  # group sizes kept: a label per speaker, shuffled between speakers
    assert len({tuple(p) for p in perms}) > 10


def test_permutation_is_between_speakers_not_tokens() -> None:
    """Strong speaker effects, few speakers, no group difference: a token-level shuffle would reject almost
    always (tokens of one speaker are correlated); the speaker-level test stays at its level."""
    sc = Scenario(groups={g: GroupParams(n_speakers=6, speaker_sd=1.5, noise_sd=0.3, tokens_per_phone=20)
                          for g in ("A", "B")}, n_phones=4, dim=6)
    rejections = 0
    for seed in range(12):
        st, labels, _, _ = stats_of(simulate(sc, seed=seed))
        r = analyze_space(st, labels, 2, ref=0, n_perm=99, n_boot=10, seed=seed, level=0.95)
        rejections += int(r.p_star[1] <= 0.05)
    assert rejections <= 3


def test_reference_mode_recovers_magnitude_and_tests_against_reference() -> None:
    sim = simulate("shift", seed=4)
    res = analyze(sim.embeddings, sim.groups, reference="A", spaces=("raw",), **FAST)
    dec = res.tables()["decomposition"].set_index(["group", "phone"])
    lo, hi = dec.loc[("C", "*"), ["shift_ci_low", "shift_ci_high"]]
    assert dec.loc[("C", "*"), "shift_sq"] == pytest.approx(2.25, abs=0.5)
    assert lo < 2.25 < hi
    assert np.isnan(dec.loc[("A", "*"), "shift_sq"])
    st = res.tables()["shift_tests"]
    assert "A" not in set(st["group"])  # the reference is not tested against itself
    assert st[(st["group"] == "C") & (st["phone"] == "*")]["significant"].item()
    assert verdicts(res)["C"] == "systematic-dominant"


def test_bh_across_phones_groups_and_layers() -> None:
    sim = simulate("sparse_shift", seed=2, layers=("0", "1"), layer_shift=(0.5, 1.0))
    st = analyze(sim.embeddings, sim.groups, spaces=("raw",), **FAST).tables()["shift_tests"]
    fam = st[st["phone"] != "*"]
    assert set(fam["layer"]) == {"0", "1"}
    q, _ = benjamini_hochberg(fam["p_value"].to_numpy(), 0.05)
    np.testing.assert_allclose(fam["q_value"].to_numpy(), q)  # one family over layers × groups × phones
    q_layer0, _ = benjamini_hochberg(fam[fam["layer"] == "0"]["p_value"].to_numpy(), 0.05)
    assert not np.allclose(fam[fam["layer"] == "0"]["q_value"].to_numpy(), q_layer0)  # not per layer
    omni = st[st["phone"] == "*"]
    q_o, _ = benjamini_hochberg(omni["p_value"].to_numpy(), 0.05)
    np.testing.assert_allclose(omni["q_value"].to_numpy(), q_o)
    assert (st["significant"] == (st["q_value"] <= 0.05)).all()


def test_consensus_pvalue_intersection_union() -> None:
    # 3 groups: g must differ from both others → the larger pairwise p
    assert consensus_pvalue(np.array([0.001, 0.4]), 3) == pytest.approx(0.4)
    assert consensus_pvalue(np.array([0.001, 0.01]), 3) == pytest.approx(0.01)
    # 5 groups: K = 3 of 4 others, Bonferroni over G − K = 2
    assert consensus_pvalue(np.array([0.001, 0.002, 0.01, 0.9]), 5) == pytest.approx(0.02)


def test_null_false_positive_rate_small_sweep() -> None:
    """A small version of bench/calibrate_typology.py: the reference-mode omnibus test on null data rejects at
    about the nominal rate (the full ≥200-dataset sweep lives in the script)."""
    sc = Scenario(groups={g: GroupParams(n_speakers=8) for g in ("A", "B")}, n_phones=5, dim=8)
    p = []
    for seed in range(40):
        st, labels, _, _ = stats_of(simulate(sc, seed=1000 + seed))
        p.append(analyze_space(st, labels, 2, ref=0, n_perm=99, n_boot=5, seed=seed, level=0.95).p_star[1])
    rate = np.mean(np.array(p) <= 0.05)
    assert rate <= 0.15  # binomial(40, 0.05): P(X >= 7) < 0.02
    assert 0.3 < np.mean(p) < 0.7  # roughly uniform
