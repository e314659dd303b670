"""phonefair.probes: batched trainer, size-matched populations, tables, save/load, input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from phonefair.probes import COLUMNS, ProbeResults, TrainerConfig, build_populations, fit_batched, fit_probes
from phonefair.stats import benjamini_hochberg
from phonefair.store.base import InMemoryEmbeddings
from phonefair.synth.simulate import PRESETS, simulate

FAST = {"n_boot": 200, "progress": False, "l2_grid": (1e-2,), "seeds": (0, 1)}


@pytest.fixture(scope="module")
def sim_two_layers():
    return simulate("shift", seed=3, dim=8, phone_sep=1.0, layers=("0", "1"), layer_shift=(1.0, 0.3))


@pytest.fixture(scope="module")
def res_two_layers(sim_two_layers):
    return fit_probes(sim_two_layers.embeddings, sim_two_layers.groups, n_boot=200, progress=False,
                      l2_grid=(1e-3, 1e-1), seeds=(0, 1))


def _blobs(seed: int, n: int, classes: int = 8, dim: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 1.0, (classes, dim))
    y = rng.integers(0, classes, n)
    x = (mu[y] + rng.normal(0, 1.3, (n, dim)) * rng.uniform(0.5, 3, dim)) + rng.normal(0, 5, dim)
    return x.astype(np.float32), y


# --------------------------------------------------------------------------------------------- trainer
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_batched_trainer_matches_sklearn(optimizer):
    """Same data, same objective: sklearn C = 1/(lambda n) on standardised features (docs/probes.md)."""
    x, y = _blobs(0, 1600)
    tr = [np.arange(0, 500), np.arange(300, 800)]  # two probes with overlapping rows, fitted in one batch
    test = np.arange(800, 1600)
    lams = [1e-3, 1e-1]
    cfg = TrainerConfig(optimizer=optimizer, epochs=60, batch_size=100, lr=0.02)
    probes = fit_batched(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(np.stack(tr)),
                         torch.ones(2, 500), torch.ones(2, 8, dtype=torch.bool),
                         torch.tensor([lams, lams], dtype=torch.float32), cfg, seed=0)
    pred = probes.predict(torch.from_numpy(x[test])).numpy()  # [n, P, K]
    for p, rows in enumerate(tr):
        sc = StandardScaler().fit(x[rows])
        for k, lam in enumerate(lams):
            sk = LogisticRegression(C=1.0 / (lam * len(rows)), max_iter=5000, tol=1e-8)
            sk.fit(sc.transform(x[rows]), y[rows])
            acc_sk = sk.score(sc.transform(x[test]), y[test])
            acc = float((pred[:, p, k] == y[test]).mean())
            assert abs(acc - acc_sk) <= 0.01, (optimizer, p, lam, acc, acc_sk)
            if optimizer == "lbfgs":  # the exact optimum: the coefficients themselves agree
                w = probes.params["W"][p, k].numpy().T
                wc = sk.coef_ - sk.coef_.mean(0)  # softmax is invariant to a per-feature shift over classes
                w = w - w.mean(0)
                assert np.abs(w - wc).max() < 0.02 * np.abs(wc).max() + 1e-3


def test_trainer_respects_class_mask_and_rows():
    x, y = _blobs(1, 600)
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[0, 3] = False
    keep = np.flatnonzero(y[:400] != 3)
    probes = fit_batched(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(keep)[None],
                         torch.ones(1, len(keep)), mask, torch.tensor([[1e-2]]), seed=0)
    pred = probes.predict(torch.from_numpy(x))
    assert not (pred == 3).any()  # a probe never predicts a class it was not trained on
    with pytest.raises(ValueError, match="inconsistent shapes"):
        fit_batched(torch.from_numpy(x), torch.from_numpy(y), torch.zeros(2, 5, dtype=torch.long),
                    torch.ones(2, 4), mask, torch.tensor([[1e-2]]))


# --------------------------------------------------------------------------------------------- populations
def test_size_matching_equalises_tokens_and_speakers():
    sc = PRESETS["null"].with_group("A", n_speakers=20, tokens_per_phone=12).with_group("C", tokens_per_phone=4)
    sim = simulate(sc, seed=0, dim=4)
    tok = sim.tokens.assign(row=np.arange(len(sim.tokens)))
    train = tok[tok["split"] == "train"]
    pops, sizes = build_populations(train, seeds=(0, 1, 2), base_seed=5)
    assert len(pops) == 3 * (1 + 3 + 3)
    assert {p.n_tokens for p in pops} == {sizes["n_tokens"]}
    assert {p.n_speakers for p in pops} == {sizes["n_speakers"]}
    # tokens per speaker differ 3x between groups: C (fewest) sets the size, A and B were cut down to it
    per_group = train.groupby("group").size()
    assert sizes["n_tokens"] == per_group["C"] < min(per_group["A"], per_group["B"])
    spk_of = tok.set_index("row")["speaker"]
    grp_of = tok.set_index("row")["group"]
    for p in pops:
        assert len(np.unique(p.rows)) == len(p.rows)
        assert set(spk_of.loc[p.rows]) == set(p.speakers)  # every chosen speaker contributes >= 1 token
        assert (tok.set_index("row").loc[p.rows, "split"] == "train").all()
        gs = pd.Series([sim.groups[s] for s in p.speakers]).value_counts()
        if p.kind == "group":
            assert set(grp_of.loc[p.rows]) == {p.group}
        elif p.kind == "leave_out":
            assert p.group not in set(grp_of.loc[p.rows]) and gs.max() - gs.min() <= 1
        else:
            assert len(gs) == 3 and gs.max() - gs.min() <= 1  # equal speakers per group (± 1)
    # seeds redraw the sample; the same seed reproduces it
    pooled = [p for p in pops if p.kind == "pooled"]
    assert not np.array_equal(pooled[0].rows, pooled[1].rows)
    again, _ = build_populations(train, seeds=(0, 1, 2), base_seed=5)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(pops, again, strict=True))
    with pytest.raises(ValueError, match="n_speakers"):
        build_populations(train, seeds=(0,), n_speakers=99)


def test_fit_probes_reports_matched_sizes(res_two_layers):
    fits = res_two_layers["probe_fits"]
    assert fits["n_train_tokens"].nunique() == 1 and fits["n_train_speakers"].nunique() == 1
    pa = res_two_layers["probe_accuracy"]
    assert pa["n_train_tokens"].nunique() == 1 and pa["n_train_speakers"].nunique() == 1
    assert set(fits["l2"]) <= {1e-3, 1e-1}
    assert fits["val_accuracy"].between(0, 1).all()


# --------------------------------------------------------------------------------------------- tables
def test_tables_follow_contract(res_two_layers, sim_two_layers):
    tables = res_two_layers.tables()
    for name, cols in COLUMNS.items():
        assert list(tables[name].columns) == cols, name
        prov = tables[name].attrs["provenance"]
        assert prov["seeds"] == [0, 1] and prov["settings"]["probe"] == "linear"
        assert prov["source"]["source"] == "phonefair.synth.simulate"
    pa = tables["probe_accuracy"]
    # 2 layers x (pooled + 3 group + 3 leave_out) x 3 test groups x 2 metrics
    assert len(pa) == 2 * 7 * 3 * 2
    assert pa.loc[pa.train_kind == "pooled", "train_group"].isna().all()
    assert ((pa.ci_low <= pa.estimate + 1e-12) & (pa.estimate <= pa.ci_high + 1e-12)).all()
    assert len(tables["transfer"]) == 2 * 3 * 2
    assert (tables["transfer"]["train_group"] != tables["transfer"]["test_group"]).all()
    n_test = sim_two_layers.tokens["split"].eq("test").sum()
    assert len(tables["predictions"]) == 2 * 2 * 7 * n_test
    assert set(tables["speaker_accuracy"]["speaker"]) == set(
        sim_two_layers.tokens.loc[sim_two_layers.tokens.split == "test", "speaker"])


def test_metrics_recompute_from_predictions(res_two_layers):
    """Accuracy is token-weighted per seed then averaged over seeds; Δ = acc(group) − acc(pooled)."""
    pr = res_two_layers["predictions"]
    pa = res_two_layers["probe_accuracy"]
    ok = pr.assign(ok=(pr.predicted == pr.phone).astype(float))
    for (layer, kind, tg, g) in [("0", "group", "C", "C"), ("1", "pooled", None, "A"), ("0", "leave_out", "B", "B")]:
        sel = ok[(ok.layer == layer) & (ok.train_kind == kind) & (ok.group == g)]
        sel = sel[sel.train_group.isna()] if tg is None else sel[sel.train_group == tg]
        acc = sel.groupby("seed")["ok"].mean().mean()
        bal = sel.groupby(["seed", "phone"])["ok"].mean().groupby("seed").mean().mean()
        row = pa[(pa.layer == layer) & (pa.train_kind == kind) & (pa.test_group == g)]
        row = row[row.train_group.isna()] if tg is None else row[row.train_group == tg]
        assert row.loc[row.metric == "accuracy", "estimate"].item() == pytest.approx(acc)
        assert row.loc[row.metric == "balanced_accuracy", "estimate"].item() == pytest.approx(bal)
        assert row.loc[row.metric == "accuracy", "n_test_tokens"].item() == len(sel) // 2
    ib = res_two_layers["in_group_benefit"]
    assert np.allclose(ib.delta, ib.acc_in_group - ib.acc_pooled)
    sa = res_two_layers["speaker_accuracy"]
    s0 = ok[(ok.layer == "0") & (ok.train_kind == "pooled")]
    per_spk = s0.groupby("speaker")["ok"].mean()
    got = sa[sa.layer == "0"].set_index("speaker")["accuracy"]
    assert np.allclose(got.loc[per_spk.index], per_spk)
    gap = res_two_layers["group_gap"]
    acc_pooled = pa[(pa.train_kind == "pooled") & (pa.metric == "accuracy")]
    for _, r in gap.iterrows():
        a = acc_pooled[acc_pooled.layer == r.layer].set_index("test_group")["estimate"]
        assert r.gap == pytest.approx(a.max() - a.min()) and r.worst_group == a.idxmin()
        assert r.ratio == pytest.approx(a.min() / a.max())
    ph = res_two_layers["phone_accuracy"]
    assert ph["top_confusion"].dropna().isin(res_two_layers.provenance["classes"]).all()


def test_bh_across_groups_and_layers(res_two_layers):
    ib = res_two_layers["in_group_benefit"]
    assert len(ib) == 2 * 3  # 2 layers x 3 groups in one family
    q, rej = benjamini_hochberg(ib["p_value"].to_numpy(), 0.05)
    assert np.allclose(ib["q_value"], q) and (ib["significant"] == rej).all()
    # per-layer BH would give different q-values whenever the other layer has smaller p-values
    q_layer0, _ = benjamini_hochberg(ib.loc[ib.layer == "0", "p_value"].to_numpy())
    assert (ib.loc[ib.layer == "0", "q_value"].to_numpy() >= q_layer0 - 1e-12).all()


def test_summary_and_save_load(res_two_layers, tmp_path):
    s = res_two_layers.summary()
    assert set(s["layers"]) == {"0", "1"}
    lay = s["layers"]["0"]
    assert {"worst_group", "gap", "ratio", "in_group_benefit"} <= set(lay)
    assert set(lay["in_group_benefit"]) == {"A", "B", "C"}
    assert {"spearman_error_gap", "best_layer", "best_layer_has_largest_gap"} <= set(s["curve"])
    res_two_layers.save(tmp_path / "p")
    back = ProbeResults.load(tmp_path / "p")
    for name, df in res_two_layers.tables().items():
        pd.testing.assert_frame_equal(back[name], df, check_dtype=False)
        assert back[name].attrs["provenance"]["seeds"] == [0, 1]
    assert back.summary()["curve"] == s["curve"]
    with pytest.raises(FileNotFoundError, match="probes.json"):
        ProbeResults.load(tmp_path)


def test_layer_curve_correlation_three_layers():
    sim = simulate("shift", seed=1, dim=6, phone_sep=1.0, layers=("0", "1", "2"),
                   layer_noise=(1.6, 1.0, 0.6))
    res = fit_probes(sim.embeddings, sim.groups, populations=("pooled",), **FAST)
    gap = res["group_gap"]
    assert list(gap["layer"]) == ["0", "1", "2"]
    assert gap["overall_error"].iloc[0] > gap["overall_error"].iloc[2]  # less noise, fewer errors
    c = res.summary()["curve"]
    assert -1 <= c["spearman_error_gap"] <= 1 and c["best_layer"] == "2"
    assert res["in_group_benefit"].empty  # needs group probes


# --------------------------------------------------------------------------------------------- inputs
def test_exclusions_are_counted_not_silent():
    sim = simulate("null", seed=2, dim=6, phone_sep=1.0)
    tok = sim.tokens.copy()
    tok["phone"] = tok["phone"].astype(object)
    tok.loc[tok.index[:7], "phone"] = None
    tok.loc[tok.index[7:20], "phone"] = "sil"
    # a phone only group A says: other groups' probes never see it, so their A test tokens of it are dropped
    only_a = (tok["group"] == "A") & (tok["phone"] == "aa")
    tok.loc[only_a, "phone"] = "zz"
    src = InMemoryEmbeddings(tok, {"0": sim.embeddings.read("0")}, provenance={"source": "test"})
    groups = sim.groups.drop(["B_s00"])  # one source speaker without a group
    groups["ghost"] = "A"  # a grouped speaker absent from the source
    res = fit_probes(src, groups, populations=("pooled", "group"), **FAST)
    ex = res.provenance["excluded"]
    assert ex["tokens_phone_na"] == 7 and ex["tokens_excluded_phones"] == {"sil": 13}
    assert ex["speakers_not_in_groups"] == 1
    assert ex["tokens_of_speakers_not_in_groups"] == int((tok.speaker == "B_s00").sum())
    assert ex["group_speakers_not_in_source"] == 1
    fits = res["probe_fits"]
    b_probe = fits[(fits.train_kind == "group") & (fits.train_group == "B")]
    n_zz_test = int((only_a & (tok.split == "test") & (tok.speaker != "B_s00")).sum())
    assert (b_probe["n_test_dropped_unseen"] == n_zz_test).all() and n_zz_test > 0
    pr = res["predictions"]
    assert not ((pr.train_group == "B") & (pr.phone == "zz")).any()
    assert ((pr.train_group == "A") & (pr.phone == "zz")).any()
    assert "B_s00" not in set(pr.speaker) and "sil" not in set(pr.phone)


def test_nan_embedding_rows_are_dropped_and_counted():
    """Issue 15 rows 2 and 5: extraction stores NaN rows for phones it cannot embed (past the end of the audio,
    recordings shorter than one frame); probes used to train on them and die with 'value cannot be converted to
    type float without overflow'."""
    sim = simulate("null", seed=2, dim=6, phone_sep=1.0, layers=("0", "1"))
    tok = sim.tokens
    bad = np.flatnonzero((tok["split"] == "test").to_numpy())[:5].tolist() + \
        np.flatnonzero((tok["split"] == "train").to_numpy())[:4].tolist()
    arrays = {layer: sim.embeddings.read(layer).copy() for layer in ("0", "1")}
    for a in arrays.values():
        a[bad] = np.nan
    arrays["0"][bad[0], 0] = np.inf  # float16 overflow is stored as inf: just as unusable
    src = InMemoryEmbeddings(tok, arrays)
    res = fit_probes(src, sim.groups, populations=("pooled", "group"), **FAST)
    assert res.provenance["excluded"]["tokens_non_finite_embedding"] == len(bad)
    pr = res["predictions"]
    assert len(pr) and not set(bad) & set(pr["row"])
    assert np.isfinite(res["probe_accuracy"]["estimate"]).all()


def test_bad_input_errors():
    sim = simulate("null", seed=0, dim=4, n_phones=4)
    with pytest.raises(ValueError, match="not in the source"):
        fit_probes(sim.embeddings, sim.groups, layers=["7"], **FAST)
    with pytest.raises(ValueError, match="unknown population"):
        fit_probes(sim.embeddings, sim.groups, populations=("pooled", "everyone"), **FAST)
    with pytest.raises(TypeError, match="Series"):
        fit_probes(sim.embeddings, dict(sim.groups), **FAST)  # type: ignore[arg-type]
    tok = sim.tokens.copy()
    tok.loc[tok.speaker == "A_s00", "split"] = ["train", "test"] * int((tok.speaker == "A_s00").sum() // 2) + \
        ["train"] * int((tok.speaker == "A_s00").sum() % 2)
    src = InMemoryEmbeddings(tok, {"0": sim.embeddings.read("0")})
    with pytest.raises(ValueError, match="A_s00"):
        fit_probes(src, sim.groups, **FAST)


def test_split_made_when_tokens_have_none():
    sim = simulate("null", seed=0, dim=4, n_phones=4)
    tok = sim.tokens.drop(columns=["split"])
    src = InMemoryEmbeddings(tok, {"0": sim.embeddings.read("0")})
    res = fit_probes(src, sim.groups, populations=("pooled",), **FAST)
    assert "split_speakers" in res.provenance["split_source"]
    test_spk = set(res["predictions"]["speaker"])
    train_spk = {s for p in res.provenance["populations"] for s in p["speakers"]}
    assert test_spk and not test_spk & train_spk  # speaker-disjoint


def test_mlp_probe_runs():
    sim = simulate("null", seed=0, dim=6, phone_sep=1.5, n_phones=5)
    res = fit_probes(sim.embeddings, sim.groups, probe="mlp", populations=("pooled", "group"),
                     trainer=TrainerConfig(hidden=32, epochs=30, batch_size=128), **FAST)
    pa = res["probe_accuracy"]
    assert (res["probe_fits"]["optimizer"] == "adam").all()
    assert (pa.loc[pa.metric == "accuracy", "estimate"] > 0.5).all()  # chance is 0.2
    assert res.provenance["settings"]["probe"] == "mlp"
