"""phonefair.probes: batched trainer, size-matched populations, tables, save/load, input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from phonefair.audit.design import Design
from phonefair.probes import ProbeResults, TrainerConfig, crossfit_populations, fit_probes
from phonefair.probes.results import COLUMNS, speaker_metrics
from phonefair.probes.trainer import fit_batched
from phonefair.settings import ProbeSettings
from phonefair.synth.simulate import PRESETS, simulate

FAST = ProbeSettings(l2_grid=(1e-2,), threads=1)


@pytest.fixture(scope="module")
def sim_two_layers():
    return simulate("shift", seed=3, dim=8, phone_sep=1.0, layers=("0", "1"), layer_shift=(1.0, 0.3))


@pytest.fixture(scope="module")
def design_two_layers(sim_two_layers):
    return Design.build(sim_two_layers.embeddings, sim_two_layers.groups, folds=4, seed=0)


@pytest.fixture(scope="module")
def res_two_layers(sim_two_layers, design_two_layers):
    return fit_probes(sim_two_layers.embeddings, design_two_layers, FAST.replace(l2_grid=(1e-3, 1e-1)), seed=0)


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
def test_crossfit_populations_are_size_matched_and_never_see_their_fold():
    sc = PRESETS["null"].with_group("A", n_speakers=20, tokens_per_phone=12).with_group("C", tokens_per_phone=4)
    sim = simulate(sc, seed=0, dim=4)
    d = Design.build(sim.embeddings, sim.groups, folds=4, repeats=2, seed=5)
    pops, sizes = crossfit_populations(d, kinds=("pooled", "group", "leave_out"), seed=5)
    assert len(pops) == 2 * 4 * (1 + 1 + 3 + 3)
    matched = [p for p in pops if p.kind != "all"]
    assert {p.n_tokens for p in matched} == {sizes["n_tokens"]}
    assert {p.n_speakers for p in matched} == {sizes["n_speakers"]}
    spk_of_row = d.tokens.set_index("row")["speaker_idx"]
    for p in pops:
        test = set(np.flatnonzero(d.folds[p.repeat] == p.fold))
        assert not test & set(p.speakers)  # a probe never trains on the speakers it is tested on
        assert set(spk_of_row.loc[p.rows]) == set(p.speakers)
        groups = {d.group_names[g] for g in d.speaker_group[list(p.speakers)]}
        if p.kind == "group":
            assert groups == {p.group}
        elif p.kind == "leave_out":
            assert p.group not in groups
        elif p.kind == "all":  # every token of every training speaker
            assert len(p.rows) == int(d.tokens["speaker_idx"].isin(p.speakers).sum())
    again, _ = crossfit_populations(d, kinds=("pooled", "group", "leave_out"), seed=5)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(pops, again, strict=True))


def test_every_speaker_is_tested_once_per_repeat(res_two_layers, design_two_layers):
    spc = res_two_layers["speaker_phone_counts"]
    n_tok = design_two_layers.tokens.groupby("speaker").size()
    tested = spc[spc["layer"] == "0"].groupby("speaker")["total"].sum()
    assert tested.to_dict() == {k: float(v) for k, v in n_tok.to_dict().items()}


def test_tables_follow_contract(res_two_layers):
    tables = res_two_layers.tables()
    for name, cols in COLUMNS.items():
        assert list(tables[name].columns) == cols, name
        prov = tables[name].attrs["provenance"]
        assert prov["table"] == name and prov["seed"] == 0 and "design" in prov
    fits = tables["probe_fits"]
    matched = fits[fits["train_kind"] != "all"]
    assert matched["n_train_tokens"].nunique() == 1 and set(fits["l2"]) <= {1e-3, 1e-1}


def test_standardised_accuracy_is_the_corpus_weighted_phone_average():
    correct = np.array([[8.0, 1.0, 0.0], [5.0, 5.0, 0.0]])
    total = np.array([[10.0, 2.0, 0.0], [10.0, 10.0, 0.0]])
    w = np.array([0.5, 0.25, 0.25])
    m = speaker_metrics(correct, total, w)
    # speaker 0: phones 0 and 1 present, per-phone 0.8 and 0.5, weights 0.5 and 0.25 renormalised
    assert m["standardized_accuracy"][0] == pytest.approx((0.5 * 0.8 + 0.25 * 0.5) / 0.75)
    assert m["accuracy"][0] == pytest.approx(9 / 12) and m["balanced_accuracy"][0] == pytest.approx(0.65)


def test_save_load_roundtrip(res_two_layers, tmp_path):
    res_two_layers.save(tmp_path / "p")
    back = ProbeResults.load(tmp_path / "p")
    for name, df in res_two_layers.tables().items():
        pd.testing.assert_frame_equal(back[name], df, check_dtype=False)


def test_nonfinite_rows_are_left_out_and_counted():
    sim = simulate("null", seed=1, dim=4)
    x = sim.embeddings.read("0").copy()
    x[:7] = np.nan  # e.g. an utterance the extraction could not embed
    from phonefair.store import Embeddings

    emb = Embeddings(sim.tokens, {"0": x})
    d = Design.build(emb, sim.groups, folds=3)
    res = fit_probes(emb, d, FAST)
    spc = res["speaker_phone_counts"]
    assert spc["total"].sum() == len(d.tokens) - 7
    assert np.isfinite(res["speaker_accuracy"]["accuracy"]).all()


def test_mlp_probe_runs():
    sim = simulate("null", seed=2, dim=4)
    d = Design.build(sim.embeddings, sim.groups, folds=3)
    res = fit_probes(sim.embeddings, d, FAST.replace(type="mlp", populations=("pooled",)),
                     trainer=TrainerConfig(probe="mlp", hidden=16, epochs=3))
    assert res["speaker_accuracy"]["accuracy"].between(0, 1).all()
