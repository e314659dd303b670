"""The planted-truth simulator's sample statistics match its parameters."""

from __future__ import annotations

import numpy as np
import pytest

from phonefair.synth.simulate import PRESETS, GroupParams, Scenario, simulate


def test_layout_is_an_embedding_source():
    sim = simulate("both", seed=0, layers=("0", "1"))
    tok = sim.embeddings.tokens
    assert {"recording_id", "speaker", "phone", "group", "split"} <= set(tok.columns)
    assert sim.embeddings.read("1").shape == (len(tok), 16)
    assert sim.embeddings.read("0", rows=[0, 5]).dtype == np.float32
    # speaker-disjoint split
    assert tok.groupby("speaker")["split"].nunique().max() == 1
    assert set(sim.groups.index) == set(tok["speaker"])


def test_deterministic():
    a = simulate("shift", seed=3).embeddings.read("0")
    b = simulate("shift", seed=3).embeddings.read("0")
    c = simulate("shift", seed=4).embeddings.read("0")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_statistics_match_parameters():
    sc = Scenario(groups={"A": GroupParams(n_speakers=60, speaker_sd=0.7, noise_sd=1.3, tokens_per_phone=20),
                          "C": GroupParams(n_speakers=60, shift=2.0, speaker_sd=0.4, noise_sd=0.8,
                                           tokens_per_phone=20)},
                  n_phones=4, dim=32)
    sim = simulate(sc, seed=1)
    x = sim.embeddings.read("0")
    tok = sim.tokens
    for g, gp in sc.groups.items():
        m = (tok["group"] == g).to_numpy()
        t = tok[m]
        xs = x[m]
        keys = (t["speaker"] + "|" + t["phone"]).to_numpy()
        # within-speaker variance per dimension
        resid, means = [], {}
        for k in np.unique(keys):
            xk = xs[keys == k]
            means[k] = xk.mean(0)
            resid.append(xk - means[k])
        within = np.concatenate(resid).var(axis=0, ddof=0).mean()
        assert within == pytest.approx(gp.noise_sd**2, rel=0.1)
        # between-speaker variance of (speaker, phone) means around the phone/group mean
        dev = []
        for p in sim.truth.phones:
            ks = [k for k in means if k.endswith("|" + p)]
            mk = np.stack([means[k] for k in ks])
            dev.append(mk - mk.mean(0))
        between = np.concatenate(dev).var(axis=0).mean() - gp.noise_sd**2 / gp.tokens_per_phone
        assert between == pytest.approx(gp.speaker_sd**2, rel=0.25)
    # planted shift: group mean difference has the planted norm
    truth = sim.truth.shift_table()
    np.testing.assert_allclose(truth.loc[truth.group == "C", "shift_sq"], 4.0)
    assert truth.loc[truth.group == "A", "shift_sq"].eq(0.0).all()
    p0 = sim.truth.phones[0]
    diff = x[((tok.group == "C") & (tok.phone == p0)).to_numpy()].mean(0) - \
        x[((tok.group == "A") & (tok.phone == p0)).to_numpy()].mean(0)
    assert np.sum(diff**2) == pytest.approx(4.0, rel=0.3)


def test_presets_and_confounds():
    assert {"null", "shift", "variance", "both", "sparse_shift", "count_confound", "frequency_confound"} <= set(PRESETS)
    cc = simulate("count_confound", seed=0).tokens
    per_spk = cc.groupby(["group", "speaker"]).size().groupby("group").mean()
    assert per_spk["C"] < per_spk["A"] / 2
    fc = simulate("frequency_confound", seed=0).tokens
    share = fc[fc.group == "C"]["phone"].value_counts(normalize=True)
    assert share["aa"] > 3 * share[fc["phone"].unique()[-1]]
    sparse = simulate("sparse_shift", seed=0).truth.shift_table()
    assert sparse.loc[sparse.group == "C", "shifted"].sum() == 2


def test_layer_multipliers():
    sim = simulate("shift", seed=0, layers=("0", "1", "2"), layer_shift=(0.0, 1.0, 2.0))
    t = sim.truth.shift_table()
    c = t[(t.group == "C") & t.shifted].groupby("layer")["shift_sq"].first()
    assert c["0"] == 0 and c["2"] == pytest.approx(4 * c["1"])
    with pytest.raises(ValueError, match="one value per layer"):
        simulate("shift", seed=0, layers=("0", "1"), layer_shift=(1.0,))
