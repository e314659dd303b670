"""The typology's tests: adaptive speaker permutations, descriptive shift / spread tests with FDR, and the
mechanism tests (systematic vs random) of groups served worse — against planted truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phonefair.analysis import TABLES, analyze
from phonefair.analysis.served import ServedWorse
from phonefair.analysis.shift_tests import label_permutations, permutation_test
from phonefair.analysis.sufficient import SpaceStats, accumulate_layer
from phonefair.analysis.variance import phone_scale
from phonefair.audit.design import Design
from phonefair.settings import AnalysisSettings
from phonefair.synth.simulate import PRESETS, simulate

FAST = AnalysisSettings(n_perm=999, n_boot=100)


def raw_stats(sim) -> tuple[SpaceStats, Design]:  # type: ignore[no-untyped-def]
    d = Design.build(sim.embeddings, sim.groups, min_speakers=2, exclude_phones=())
    t = d.tokens
    ls = accumulate_layer(sim.embeddings, "0", t["row"].to_numpy(), t["speaker_idx"].to_numpy(),
                          t["phone_idx"].to_numpy(), d.n_speakers, len(d.phones),
                          centre=np.zeros((len(d.phones), sim.embeddings.read("0", [0]).shape[1])),
                          projections={"raw": None})
    return ls.spaces["raw"], d


def served_as(design: Design, group: str, worse_than: list[str], layers: list[str]) -> ServedWorse:
    """A served-worse decision given by hand, to test the mechanism step on its own."""
    rows = [{"group": g, "served_worse": g == group, "worse_than": ", ".join(worse_than) if g == group else "",
             "better_than": "", "layers": ", ".join(layers) if g == group else "",
             "peak_layer": layers[0] if g == group else None, "is_reference": False} for g in design.group_names]
    return ServedWorse(gaps=pd.DataFrame(), pairwise=pd.DataFrame(), decisions=pd.DataFrame(rows))


def test_label_permutations_move_whole_speakers_and_keep_sizes() -> None:
    lab = np.array([True] * 4 + [False] * 6)
    perms = label_permutations(lab, 50, np.random.default_rng(0))
    assert perms.shape == (50, 10) and (perms.sum(1) == 4).all()
    assert len({tuple(p) for p in perms}) > 40


def test_adaptive_permutation_pvalues_are_valid_and_resolve_small_p() -> None:
    """Null pairs: rejection rate at 0.05 is nominal and clearly null statistics stop after few permutations;
    a strong shift reaches p far below 1/100 when allowed enough permutations."""
    rej, used = [], []
    for seed in range(60):
        sim = simulate("null", seed=seed, dim=8)
        st, d = raw_stats(sim)
        idx = np.flatnonzero(d.speaker_group < 2)
        sub = SpaceStats(st.mean[idx], st.count[idx], st.ss[idx])
        lab = d.speaker_group[idx] == 0
        com = (sub.has[lab].sum(0) >= 2) & (sub.has[~lab].sum(0) >= 2)
        r = permutation_test(sub, lab, com, phone_scale(st), n_max=999, gen=np.random.default_rng(seed))
        rej.append(r.p_star[0] <= 0.05)
        used.append(r.n_perm[len(r.p_phone)])
    assert np.mean(rej) <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / 60)
    assert np.median(used) < 200  # most null statistics resolved early
    sim = simulate(PRESETS["shift"].with_group("C", shift=3.0), seed=1, dim=8)
    st, d = raw_stats(sim)
    idx = np.flatnonzero(d.speaker_group != 1)
    sub = SpaceStats(st.mean[idx], st.count[idx], st.ss[idx])
    lab = d.speaker_group[idx] == 2
    com = (sub.has[lab].sum(0) >= 2) & (sub.has[~lab].sum(0) >= 2)
    r = permutation_test(sub, lab, com, phone_scale(st), n_max=9999, gen=np.random.default_rng(0))
    assert r.p_star[0] < 1e-3


@pytest.fixture(scope="module")
def shift_result():
    sim = simulate(PRESETS["shift"].with_group("C", shift=2.0), seed=11, dim=12, layers=("0", "1"))
    d = Design.build(sim.embeddings, sim.groups, min_speakers=2)
    return sim, d, analyze(sim.embeddings, d, FAST, served=served_as(d, "C", ["A", "B"], ["0", "1"]), seed=0)


def test_tables_and_provenance(shift_result) -> None:
    _, _, res = shift_result
    t = res.tables()
    assert set(TABLES) <= set(t)
    for name in TABLES:
        assert t[name].attrs["provenance"]["table"] == name
    dec = t["decomposition"]
    assert {"shift_sq", "random_sq", "excess_random_sq", "share_systematic", "dim"} <= set(dec.columns)
    assert set(dec["space"]) == {"raw", "lda"} and set(dec["layer"]) == {"0", "1"}


def test_descriptive_shift_tests_flag_only_the_shifted_group(shift_result) -> None:
    _, _, res = shift_result
    st = res["shift_tests"]
    star = st[st["phone"] == "*"]
    assert star[star["group"] == "C"]["significant"].all()
    assert not star[star["group"] != "C"]["significant"].any()  # consensus: unshifted groups not blamed


def test_mechanism_of_a_shifted_group_is_systematic(shift_result) -> None:
    _, _, res = shift_result
    m = res["mechanism"].set_index("group")
    assert m.loc["C", "systematic_significant"] and not m.loc["C", "random_significant"]
    sh = res["shares"]
    assert (sh[sh["group"] == "C"]["share_systematic"] > 0.5).all()


def test_mechanism_of_a_more_variable_group_is_random() -> None:
    sim = simulate("variance", seed=4, dim=12)
    d = Design.build(sim.embeddings, sim.groups, min_speakers=2)
    res = analyze(sim.embeddings, d, FAST, served=served_as(d, "C", ["A", "B"], ["0"]), seed=0)
    m = res["mechanism"].set_index("group")
    assert m.loc["C", "random_significant"] and not m.loc["C", "systematic_significant"]


def test_shift_on_few_phones_in_random_directions_is_found() -> None:
    """Issue case 1: 4 of 24 phones shifted in random directions in 64 dims. The discriminant space keeps only
    (#phones − 1) of 64 directions of such a shift; the combined raw + LDA test still finds it."""
    sc = PRESETS["null"]
    for g in "ABC":
        sc = sc.with_group(g, n_speakers=10)
    sc = sc.with_group("C", shift=2.0, shift_phones=4 / 24)
    found = []
    for seed in range(6):
        sim = simulate(sc, seed=seed, dim=64, n_phones=24)
        d = Design.build(sim.embeddings, sim.groups, min_speakers=2)
        res = analyze(sim.embeddings, d, AnalysisSettings(n_perm=499, n_boot=50),
                      served=served_as(d, "C", ["A", "B"], ["0"]), seed=seed)
        found.append(bool(res["mechanism"].set_index("group").loc["C", "systematic_significant"]))
    assert np.mean(found) >= 5 / 6


def test_confounds_are_not_flagged() -> None:
    for name in ("count_confound", "frequency_confound"):
        sim = simulate(name, seed=3, dim=12)
        d = Design.build(sim.embeddings, sim.groups, min_speakers=2)
        res = analyze(sim.embeddings, d, FAST, seed=0)
        assert not res["shift_tests"]["significant"].any(), name
        assert not res["variance_tests"]["significant"].any(), name


def test_reference_mode_tests_against_the_reference() -> None:
    sim = simulate("shift", seed=5, dim=12)
    d = Design.build(sim.embeddings, sim.groups, min_speakers=2, reference="A")
    res = analyze(sim.embeddings, d, FAST, seed=0)
    st = res["shift_tests"]
    assert set(st["group"]) == {"B", "C"}  # the reference is not tested against itself
    star = st[(st["phone"] == "*") & (st["space"] == "raw")].set_index("group")
    assert star.loc["C", "significant"] and not star.loc["B", "significant"]


def test_p_value_floor_is_warned_about() -> None:
    sim = simulate("null", seed=1, dim=8)
    d = Design.build(sim.embeddings, sim.groups, min_speakers=2)
    res = analyze(sim.embeddings, d, AnalysisSettings(n_perm=19, n_boot=20), seed=0)
    assert any("smallest attainable p" in n for n in res.provenance["notes"])


def test_nonfinite_rows_are_skipped_and_reported() -> None:
    sim = simulate("null", seed=2, dim=6)
    x = sim.embeddings.read("0").copy()
    x[:5] = np.nan
    from phonefair.store import Embeddings

    emb = Embeddings(sim.tokens, {"0": x})
    d = Design.build(emb, sim.groups, min_speakers=2)
    res = analyze(emb, d, AnalysisSettings(n_perm=99, n_boot=20), seed=0)
    assert res["problems"]["reason"].str.contains("5 token rows hold NaN").any()


def test_label_permutations_stay_within_strata() -> None:
    lab = np.array([True, True, False, False, False, True, False, False, False, False])
    strata = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    perms = label_permutations(lab, 200, np.random.default_rng(1), strata)
    assert (perms[:, strata == 0].sum(1) == 2).all() and (perms[:, strata == 1].sum(1) == 1).all()
    assert len({tuple(p) for p in perms}) > 30


def test_omnibus_shift_is_one_ratio_pooled_over_phones_and_halves() -> None:
    """T_* = Σ_p D_p / Σ_p se_p (not the mean of per-phone ratios, whose few-speaker denominators made the test
    liberal for a noisier small group); in a cross-fitted space the sums also run over both halves."""
    from phonefair.analysis.decomposition import components, group_moments
    from phonefair.analysis.shift_tests import CrossFit, SplitPair, pair_statistics, subset
    from phonefair.analysis.typology import _layer_stats

    sim = simulate("variance", seed=4, dim=8, n_phones=6)
    d = Design.build(sim.embeddings, sim.groups, min_speakers=2)
    ls, _, _ = _layer_stats(sim.embeddings, d, "0", ["raw"], seed=0, lda_max_tokens=50_000, lda_shrinkage=0.1,
                            chunk_rows=4096, halves=None)
    st = ls.spaces["raw"]
    lab = d.speaker_group == d.group_names.index("C")
    common = np.ones(st.mean.shape[1], dtype=bool)
    obs = pair_statistics(st, lab[None], common, phone_scale(st))
    c = components(group_moments(st, np.stack([lab, ~lab])[None].astype(float)))
    D, se = c.D[0, 0, 1], c.scale[0, 0, 1]
    assert obs.t_star[0] == pytest.approx(D.sum() / se.sum())
    assert obs.t_star[0] != pytest.approx(np.mean(D / se))
    np.testing.assert_allclose(obs.t_phone[0], D / se)

    half = np.arange(d.n_speakers) % 2
    members = [np.flatnonzero(half == h) for h in (0, 1)]
    cf = CrossFit(stats=[subset(st, m) for m in members], members=members, half=half)
    idx = np.arange(d.n_speakers)
    sp = SplitPair(cf, idx, lab)(lab[None])
    parts = [pair_statistics(subset(st, m), lab[m][None], common, phone_scale(subset(st, m))) for m in members]
    assert sp.t_star[0] == pytest.approx(sum(p.d_sum[0] for p in parts) / sum(p.se_sum[0] for p in parts))


def test_cross_fitted_projection_of_a_half_ignores_that_half() -> None:
    """The LDA that projects half h is fitted on the other half only: scaling half 0's tokens by 1.7 scales half 0's
    cross-fitted speaker means by exactly 1.7 (their projection did not move; differences between speakers remove
    the per-phone centring constant), while half 1's projection, fitted on half 0, changes."""
    from phonefair.analysis.typology import _layer_stats, speaker_halves
    from phonefair.store import InMemoryEmbeddings

    sim = simulate("variance", seed=2, dim=12)
    d = Design.build(sim.embeddings, sim.groups, min_speakers=2)
    halves = speaker_halves(d, 0)
    kw = dict(seed=0, lda_max_tokens=50_000, lda_shrinkage=0.1, chunk_rows=4096, halves=halves)
    _, _, cf = _layer_stats(sim.embeddings, d, "0", ["lda"], **kw)
    X = np.array(sim.embeddings.read("0", np.arange(len(sim.embeddings.tokens))), dtype=np.float64)
    t = d.tokens
    in_half0 = np.zeros(len(X), dtype=bool)
    in_half0[t["row"].to_numpy()[halves[t["speaker_idx"].to_numpy()] == 0]] = True
    X[in_half0] *= 1.7
    _, _, cf2 = _layer_stats(InMemoryEmbeddings(sim.embeddings.tokens, {"0": X}), d, "0", ["lda"], **kw)

    def rel(st: SpaceStats) -> np.ndarray:
        return st.mean - st.mean[:1]

    np.testing.assert_allclose(rel(cf2.stats[0]), 1.7 * rel(cf.stats[0]), atol=1e-3)
    assert not np.allclose(rel(cf2.stats[1]), rel(cf.stats[1]), atol=1e-2)


def test_more_variable_group_is_not_called_shifted_beyond_the_nominal_rate() -> None:
    """Planted truth: group C only has larger speaker and token variance, no shift. A discriminant space fitted on
    the same speakers keeps the noisier group's sampling deviations and once called C shifted in ~10% of datasets at
    α = 0.05; fitted across speaker halves (cross-fitting) and with one pooled denominator (ratio of sums) the false
    'systematic' rate stays in the binomial band."""
    spaces = ("raw", "lda")
    sc = PRESETS["variance"]
    for g, n in (("A", 8), ("B", 8), ("C", 6)):
        sc = sc.with_group(g, n_speakers=n)
    p = []
    for seed in range(40):
        sim = simulate(sc, seed=100 + seed, dim=16, n_phones=10)
        d = Design.build(sim.embeddings, sim.groups, min_speakers=2)
        res = analyze(sim.embeddings, d, AnalysisSettings(n_perm=199, n_boot=20, spaces=spaces),
                      served=served_as(d, "C", ["A", "B"], ["0"]), seed=seed)
        p.append(float(res["mechanism"].set_index("group").loc["C", "p_systematic"]))
    # P(X ≥ 6 | n = 40, p = 0.05) = 0.014
    assert np.mean(np.array(p) <= 0.05) <= 5 / 40


def test_min_p_combination_is_exact_with_few_permutations() -> None:
    """The observed labelling is one of B + 1 exchangeable rows: under the null the combined p-value of
    independent components keeps its level even with few permutations. Ranking each permutation among the
    permutations only (the observed left out) rejected 8.9 % at α = 0.05 here (39 permutations, 4 components)."""
    from phonefair.analysis.mechanism import _combined

    gen = np.random.default_rng(0)
    rej = []
    for _ in range(3000):
        z = gen.normal(size=(40, 4))
        p, key, parts = _combined({("0", str(j)): z[0, j] for j in range(4)},
                                  {("0", str(j)): z[1:, j] for j in range(4)})
        rej.append(p <= 0.05)
        assert parts[key] == min(parts.values()) and min(parts.values()) <= p <= 1
    # binomial band at n = 3000: 0.05 ± 0.012 (3 SD); the discrete p (multiples of 1/40) may sit a little lower
    assert 0.03 <= np.mean(rej) <= 0.062


def test_every_mechanism_claim_of_a_run_is_one_holm_family() -> None:
    """Two groups served worse for different reasons: A shifted, C more variable. Both mechanisms of both groups
    are one family (each group's absent mechanism must not get a fresh α of its own), and the verdicts are right."""
    sc = PRESETS["variance"].with_group("A", shift=1.5)
    sim = simulate(sc, seed=3, dim=12)
    d = Design.build(sim.embeddings, sim.groups, min_speakers=2)
    rows = [{"group": g, "served_worse": g != "B", "worse_than": "B" if g != "B" else "", "better_than": "",
             "layers": "0" if g != "B" else "", "peak_layer": "0" if g != "B" else None, "is_reference": False}
            for g in d.group_names]
    served = ServedWorse(gaps=pd.DataFrame(), pairwise=pd.DataFrame(), decisions=pd.DataFrame(rows))
    m = analyze(sim.embeddings, d, FAST, served=served, seed=0)["mechanism"].set_index("group")
    raw = m[["p_systematic", "p_random"]].to_numpy(dtype=float)
    from phonefair.stats import holm
    np.testing.assert_allclose(m[["p_adj_systematic", "p_adj_random"]].to_numpy(dtype=float),
                               holm(raw.reshape(-1)).reshape(raw.shape))
    assert m.loc["A", "systematic_significant"] and not m.loc["A", "random_significant"]
    assert m.loc["C", "random_significant"] and not m.loc["C", "systematic_significant"]
