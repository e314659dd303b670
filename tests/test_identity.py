"""phonefair.probes.identity / attribution: planted group and speaker identity are found, the permutation null
holds, the direction-removal experiment closes a planted gap, tables follow their contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phonefair.errors import ConfigError, DataError
from phonefair.probes.attribution import (
    dimension_attribution,
    l1_logistic,
    lda_directions,
    phone_gap_table,
    removal_rows,
    speaker_subsamples,
)
from phonefair.probes.identity import (
    IDENTITY_COLUMNS,
    IdentityResults,
    IdentitySettings,
    balanced_accuracy,
    cell_means,
    identity_lenses,
    prepare_identity_data,
)
from phonefair.store import InMemoryEmbeddings, ProjectedEmbeddings
from phonefair.synth.identity import simulate_identity

FAST = {"n_boot": 200, "n_resamples": 10}
PLANTED_DIMS = [2, 7, 11]


@pytest.fixture(scope="module")
def planted():
    """Layer "0": strong speaker identity (groups A, B three times the spread of C, D), no group offset; layer "1":
    group identity in dims 2, 7, 11; layer "2": neither (speakers differ only by token noise)."""
    return simulate_identity(dim=16, group_dims=PLANTED_DIMS, group_norm=1.2, layers=("0", "1", "2"),
                             layer_group=(0.0, 1.0, 0.0), layer_speaker=(1.0, 0.2, 0.0),
                             speaker_sd=(0.9, 0.9, 0.3, 0.3),
                             speakers_per_group=10, n_phones=10, tokens_per_phone=4, recordings=4, seed=5)


@pytest.fixture(scope="module")
def planted_res(planted):
    st = IdentitySettings(n_perm=19, top_k=3, removal=False, **FAST)
    return identity_lenses(planted.embeddings, planted.groups, settings=st)


# ---------------------------------------------------------------------------------------- group identity
def test_planted_group_identity_found_and_absent_layer_at_chance(planted_res):
    gi = planted_res["group_identity"].set_index("layer")
    on, off = gi.loc["1"], gi.loc["2"]
    assert on["phone"] == "*" and on["chance"] == pytest.approx(0.25)
    assert on["balanced_accuracy"] > 0.6 and on["ci_low"] > on["chance"]
    assert on["p_value"] == pytest.approx(1 / 20)  # no permutation reached the observed accuracy
    assert on["balanced_accuracy"] > on["null_q95"]
    # layer 2 carries no group information: near chance, not significant
    assert off["ci_low"] < 0.25 < off["ci_high"] and off["p_value"] > 0.05
    assert planted_res.peak_layer() == "1"


def test_null_permutation_p_values_are_calibrated():
    """No group signal, repeated datasets: rejection rate at alpha = 0.1 near nominal, p-values spread over (0, 1]."""
    pooled, phone = [], []
    for rep in range(36):
        sim = simulate_identity(n_groups=3, speakers_per_group=6, n_phones=4, dim=6, layers=("0",), group_dims=(),
                                speaker_sd=0.8, tokens_per_phone=3, recordings=2, seed=1000 + rep)
        st = IdentitySettings(n_perm=19, n_folds=3, per_phone=rep % 3 == 0, speaker_identity=False,
                              attribution=False, removal=False, n_boot=20, seed=rep)
        gi = identity_lenses(sim.embeddings, sim.groups, settings=st)["group_identity"]
        pooled.append(float(gi.loc[gi["phone"] == "*", "p_value"].iloc[0]))
        phone += gi.loc[gi["phone"] != "*", "p_value"].astype(float).tolist()
    pooled_arr, phone_arr = np.array(pooled), np.array(phone)
    # P(p <= 0.1) = 2/20 exactly under exchangeability (ties only make the test conservative)
    assert (pooled_arr <= 0.1).mean() <= 0.25
    assert 0.35 <= pooled_arr.mean() <= 0.7
    assert (phone_arr <= 0.1).mean() <= 0.25 and len(phone_arr) >= 40


def test_balanced_accuracy_definition():
    # speakers 0-2 group 0, 3-4 group 1; per-speaker fraction correct
    scores = np.array([[1.0], [0.5], [0.0], [1.0], [np.nan]])
    labels = np.array([[0, 0, 0, 1, 1]])
    # group 0: mean(1, .5, 0) = .5; group 1: speaker 4 has no cell -> mean(1) = 1; balanced = .75
    assert balanced_accuracy(scores, labels, 2)[0] == pytest.approx(0.75)


def test_cells_are_speaker_phone_means_centred_on_phone_means():
    tok = pd.DataFrame({"speaker": ["a", "a", "a", "b", "b"] * 2, "phone": ["x", "x", "y", "x", "y"] * 2})
    tok.loc[5:, "speaker"] = tok.loc[5:, "speaker"].map({"a": "c", "b": "d"})  # c, d repeat a, b
    x = np.array([[1.0], [3.0], [10.0], [6.0], [20.0]] * 2, dtype=np.float32)
    emb = InMemoryEmbeddings(tok, {"0": x})
    data = prepare_identity_data(emb, pd.Series({"a": "g1", "b": "g2", "c": "g1", "d": "g2"}))
    z, mu = cell_means(data, x)
    # cells: (a,x)=2, (a,y)=10, (b,x)=6, (b,y)=20 (and the same for c, d); phone means x=4, y=15
    got = {(data.speakers[s], data.phones[p]): float(v)
           for s, p, v in zip(data.cell_speaker, data.cell_phone, z[:, 0], strict=True) if data.speakers[s] in "ab"}
    assert got == {("a", "x"): -2.0, ("a", "y"): -5.0, ("b", "x"): 2.0, ("b", "y"): 5.0}
    assert sorted(mu[:, 0].tolist()) == [4.0, 15.0]


# ---------------------------------------------------------------------------------------- attribution
def test_planted_dimensions_found_and_stable(planted_res):
    gd = planted_res["group_dimensions"]
    dims = gd[(gd["layer"] == "1") & (gd["kind"] == "dimension")].sort_values("rank")
    top = set(dims["index"].head(3))
    assert len(top & set(PLANTED_DIMS)) >= 2
    assert dims.set_index("index").loc[PLANTED_DIMS, "stability"].mean() >= 0.7
    assert dims["topk_overlap"].iloc[0] >= 0.6
    assert dims["importance"].sum() == pytest.approx(1.0)
    # the leading principal direction by group effect size loads on the planted dimensions; LDA is stable
    pca = gd[(gd["layer"] == "1") & (gd["kind"] == "pca")]
    assert pca["importance"].max() > 0.2
    lda = gd[(gd["layer"] == "1") & (gd["kind"] == "lda")].sort_values("rank")
    assert len(lda) == 3 and lda["stability"].iloc[0] > 0.8
    # layer 2 (no group signal) spreads importance: its top set is far less stable than layer 1's
    d0 = gd[(gd["layer"] == "2") & (gd["kind"] == "dimension")]
    assert d0["topk_overlap"].iloc[0] < dims["topk_overlap"].iloc[0]


def test_lda_directions_span_planted_subspace(planted):
    data = prepare_identity_data(planted.embeddings, planted.groups)
    z, _ = cell_means(data, planted.embeddings.read("1", data.rows))
    y = data.speaker_group[data.cell_speaker]
    _, raw = dimension_attribution(z, y, data.cell_speaker, speaker_subsamples(data.speaker_group, 5, 0.8, 0),
                                   layer="1", top_k=3, l1=0.2, lda_shrinkage=0.05)
    q, _ = np.linalg.qr(raw)
    inside = np.linalg.norm(q[PLANTED_DIMS], axis=0)  # length of each direction inside the planted dimensions
    assert inside.min() > 0.8


def test_l1_logistic_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d, c = 300, 6, 3
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, d))
    z[:, :2] += np.eye(c)[y][:, :2] * 1.5
    alpha = 0.02
    w = l1_logistic(z, y, np.ones((1, n)), alpha, c, max_iter=20000, tol=1e-9)[0]
    sk = LogisticRegression(C=1 / (alpha * n), l1_ratio=1.0, solver="saga", max_iter=20000, tol=1e-10).fit(z, y)
    # same objective (mean CE + alpha ||W||_1 = C * sum CE + ||W||_1 with C = 1 / (alpha n)): same weights
    assert np.abs(w - sk.coef_.T).max() < 0.01
    assert ((np.abs(w).sum(1) > 1e-6) == (np.abs(sk.coef_.T).sum(1) > 1e-6)).all()


def test_lda_recovers_a_single_discriminant():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 200)
    z = rng.normal(size=(400, 5))
    z[:, 3] += 2.0 * y
    v, ratio = lda_directions(z, y, shrinkage=0.0)
    assert v.shape == (5, 1) and abs(v[3, 0]) > 0.99 and ratio[0] > 0.5


# ---------------------------------------------------------------------------------------- speaker identity
def test_planted_speaker_identity_per_group(planted_res):
    si = planted_res["speaker_identity"]
    l0 = si[si["layer"] == "0"].set_index("group")
    chance = 1 / 40
    assert l0.loc["*", "chance"] == pytest.approx(chance)
    # groups A, B have 3x the speaker spread of C, D: more identifiable, with paired CIs excluding 0
    for g in ("A", "B"):
        assert l0.loc[g, "diff_ci_low"] > 0
    for g in ("C", "D"):
        assert l0.loc[g, "diff_ci_high"] < 0
        assert l0.loc[g, "ci_low"] > chance  # still identifiable
    assert l0.loc["*", "n_test_tokens"] == l0.loc[["A", "B", "C", "D"], "n_test_tokens"].sum()
    # layer 1 carries a fifth of the speaker effect: much harder
    assert si[si["layer"] == "1"].set_index("group").loc["*", "accuracy"] < l0.loc["*", "accuracy"] / 2


# ---------------------------------------------------------------------------------------- direction removal
def test_removing_planted_group_directions_closes_planted_gap():
    """Group C realises its phones differently exactly in the group dimensions: it is served worst, and projecting
    the group (LDA) directions out closes the gap; the control (random directions orthogonal to them) removes no
    group identity."""
    sim = simulate_identity(dim=8, phone_sep=1.0, speaker_sd=0.3, speakers_per_group=16, n_phones=15,
                            group_dims=(0, 1, 2), realised_differently=2, layers=("0",), seed=1)
    st = IdentitySettings(n_perm=0, speaker_identity=False, attribution=False, n_boot=300)  # LDA-only path
    res = identity_lenses(sim.embeddings, sim.groups, settings=st)
    rem = res["direction_removal"].set_index("directions")
    assert set(rem.index) == {"lda", "random"} and (rem["k_removed"] == 3).all()
    lda, ctrl = rem.loc["lda"], rem.loc["random"]
    assert lda["worst_group"] == "C"
    assert lda["change"] < 0 and lda["ci_high"] < 0
    assert lda["change_vs_control"] < 0
    assert lda["group_bacc_after"] < 0.35 < ctrl["group_bacc_after"]
    assert lda["gap_before"] == ctrl["gap_before"]
    gap = res["phone_gap"].set_index("group")
    assert gap["gap"].idxmax() == "C" and gap.loc["C", "ci_low"] > 0


def test_removal_rows_are_paired_and_fix_best_worst():
    before = pd.DataFrame({"layer": "0", "speaker": ["a1", "a2", "b1", "b2"], "group": ["A", "A", "B", "B"],
                           "n_correct": [9.0, 8.0, 5.0, 6.0], "n_tokens": [10.0] * 4})
    after = before.assign(n_correct=[9.0, 8.0, 7.0, 8.0])
    rows = removal_rows(before, {"lda": after, "random": before}, layer="0", k_removed=1, n_boot=200, level=0.9,
                        seed=0)
    lda = next(r for r in rows if r["directions"] == "lda")
    assert (lda["best_group"], lda["worst_group"]) == ("A", "B")
    assert lda["gap_before"] == pytest.approx(0.85 - 0.55) and lda["gap_after"] == pytest.approx(0.85 - 0.75)
    # every B speaker gained 2 of 10: the change is the same in every replicate
    assert lda["change"] == pytest.approx(-0.2) and lda["ci_low"] == pytest.approx(-0.2)
    assert lda["change_vs_control"] == pytest.approx(-0.2)


def test_phone_gap_table_by_hand():
    ps = pd.DataFrame({"layer": ["3"] * 4, "speaker": ["a1", "a2", "b1", "b2"], "group": ["A", "A", "B", "B"],
                       "accuracy": [0.9, 0.7, 0.5, 0.5], "n_tokens": [10, 30, 20, 20]})
    g = phone_gap_table(ps, n_boot=100).set_index("group")
    # A: (9 + 21) / 40 = .75; B: .5 -> gap_A = .5 - .75, gap_B = .75 - .5
    assert g.loc["A", "gap"] == pytest.approx(-0.25) and g.loc["B", "gap"] == pytest.approx(0.25)
    assert g.loc["B", "ci_low"] <= 0.25 <= g.loc["B", "ci_high"]
    with pytest.raises(ConfigError, match="n_correct or accuracy"):
        phone_gap_table(ps.drop(columns="accuracy"))


def test_projected_embeddings_remove_only_their_directions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    tok = pd.DataFrame({"speaker": ["s"] * 50, "phone": ["a"] * 50})
    src = InMemoryEmbeddings(tok, {"0": x, "1": x})
    u = np.array([[1.0, 1.0, 0.0, 0.0]]).T
    p = ProjectedEmbeddings(src, {"0": 3 * u})
    out = p.read("0", [1, 2, 3])
    assert np.allclose(out @ (u / np.linalg.norm(u)), 0, atol=1e-5)
    assert np.allclose(out[:, 2:], x[1:4, 2:])  # orthogonal coordinates untouched
    assert np.array_equal(p.read("1"), x)  # other layers pass through
    assert p.provenance["projection"]["removed_directions"] == {"0": 1}
    with pytest.raises(ConfigError, match="not in the source"):
        ProjectedEmbeddings(src, {"7": u})


# ---------------------------------------------------------------------------------------- contract, input
def test_tables_provenance_and_save_load(planted_res, tmp_path):
    for name, cols in IDENTITY_COLUMNS.items():
        df = planted_res[name]
        assert list(df.columns) == cols, name
        prov = df.attrs["provenance"]
        assert prov["table"] == name and prov["settings"]["n_perm"] == 19 and prov["seed"] == 0
        assert prov["sizes"]["n_speakers"] == 40 and prov["sizes"]["group_folds"] == 3
    planted_res.save(tmp_path / "id")
    back = IdentityResults.load(tmp_path / "id")
    pd.testing.assert_frame_equal(back["group_identity"], planted_res["group_identity"], check_dtype=False)
    assert back["group_identity"].attrs["provenance"]["settings"]["top_k"] == 3


def test_exclusions_are_reported_not_silent(planted):
    tok = planted.embeddings.tokens.copy()
    x = planted.embeddings.read("0")
    tok.loc[tok.index[:5], "phone"] = "sil"  # excluded phone
    one_rec = tok["speaker"] == "A_s00"
    tok.loc[one_rec, "recording_id"] = "A_s00_only"  # a speaker with one recording
    rare = (tok["phone"] == "aa") & ~tok["speaker"].isin(["A_s01", "A_s02", "B_s01"])
    tok.loc[rare, "phone"] = "iy"  # "aa" said by too few speakers of C and D
    groups = planted.groups.copy()
    groups["Z_solo"] = "Z"
    extra = pd.DataFrame({"recording_id": ["z"], "speaker": ["Z_solo"], "phone": ["iy"], "group": ["Z"]})
    tok = pd.concat([tok, extra, extra.assign(speaker="nobody")], ignore_index=True)
    x = np.vstack([x, x[:2]])
    emb = InMemoryEmbeddings(tok, {"0": x})
    st = IdentitySettings(n_perm=0, per_phone=True, attribution=False, removal=False, n_boot=50)
    res = identity_lenses(emb, groups, settings=st)
    pr = res["problems"]
    reasons = " | ".join(pr["reason"].tolist())
    assert "exclude_phones" in reasons and "fewer than 2 speakers" in reasons and "no group" in reasons
    assert "min_recordings" in reasons and (pr["item"] == "A_s00").any()
    assert (pr["item"] == "aa").any() and "aa" not in set(res["group_identity"]["phone"])
    si = res["speaker_identity"]
    assert si.loc[si["group"] == "A", "n_speakers"].iloc[0] == 9
    assert res.provenance["excluded"]["groups_too_small"] == ["Z"]


def test_no_recordings_skips_speaker_identity_with_a_problem_row(planted):
    tok = planted.embeddings.tokens.drop(columns="recording_id")
    emb = InMemoryEmbeddings(tok, {"0": planted.embeddings.read("0")})
    res = identity_lenses(emb, planted.groups, settings=IdentitySettings(n_perm=0, attribution=False, removal=False,
                                                                        n_boot=20))
    assert res["speaker_identity"].empty
    assert res["problems"]["item"].eq("recording_id").any()


def test_bad_input_errors(planted):
    emb = planted.embeddings
    with pytest.raises(ConfigError, match="pandas Series"):
        identity_lenses(emb, planted.groups.to_dict())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not in the source"):
        identity_lenses(emb, planted.groups, layers=["9"])
    with pytest.raises(ConfigError, match="n_folds"):
        IdentitySettings(n_folds=1)
    with pytest.raises(ConfigError, match="l1"):
        IdentitySettings(l1=2.0)
    with pytest.raises(DataError, match="lacks column 'phone'"):
        identity_lenses(InMemoryEmbeddings(emb.tokens.drop(columns="phone"), {"0": emb.read("0")}), planted.groups)
    one_group = pd.Series("A", index=planted.groups.index)
    with pytest.raises(DataError, match="at least 2 groups"):
        identity_lenses(emb, one_group)
    with pytest.raises(ConfigError, match="removal_layers"):
        identity_lenses(emb, planted.groups, settings=IdentitySettings(n_perm=0, removal_layers=("5",), n_boot=20))
