"""Estimators of the typology against closed-form truth on the planted-truth simulator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phonefair.analysis.decomposition import (
    components,
    consensus,
    group_moments,
    naive_distance,
    split_half_distance,
)
from phonefair.analysis.sufficient import SpaceStats, accumulate_layer, fit_lda
from phonefair.analysis.variance import phone_scale, speaker_dispersion
from phonefair.synth.simulate import simulate


def stats_of(sim, layer: str = "0", chunk_rows: int = 32768) -> tuple[SpaceStats, np.ndarray, list[str], list[str]]:
    tok = sim.tokens
    spk = sorted(tok["speaker"].unique())
    ph = sorted(tok["phone"].unique())
    si = pd.Index(spk).get_indexer(tok["speaker"])
    pi = pd.Index(ph).get_indexer(tok["phone"])
    ls = accumulate_layer(sim.embeddings, layer, np.arange(len(tok)), si, pi, len(spk), len(ph),
                          centre=np.zeros((len(ph), sim.embeddings.read(layer, [0]).shape[1])),
                          projections={"raw": None}, chunk_rows=chunk_rows)
    names = sorted(sim.groups.unique())
    labels = np.array([names.index(sim.groups[s]) for s in spk])
    return ls.spaces["raw"], labels, names, ph


def onehot(labels: np.ndarray, G: int) -> np.ndarray:
    return (labels[None, :] == np.arange(G)[:, None]).astype(float)[None]


def test_streaming_statistics_match_brute_force() -> None:
    sim = simulate("both", seed=3)
    st_small, *_ = stats_of(sim, chunk_rows=37)  # many chunks, cells split across chunk borders
    st_big, labels, names, ph = stats_of(sim)
    # per-chunk sums are float32 (then accumulated in float64): agreement to float32 precision
    np.testing.assert_allclose(st_small.mean, st_big.mean, atol=1e-5)
    np.testing.assert_allclose(st_small.ss, st_big.ss, rtol=1e-5)
    tok = sim.tokens.assign(row=np.arange(len(sim.tokens)))
    X = sim.embeddings.read("0").astype(np.float64)
    spk = sorted(tok["speaker"].unique())
    for s_i in (0, 17):
        for p_i in (0, 4):
            rows = tok[(tok["speaker"] == spk[s_i]) & (tok["phone"] == ph[p_i])]["row"].to_numpy()
            x = X[rows]
            assert st_big.count[s_i, p_i] == len(rows)
            np.testing.assert_allclose(st_big.mean[s_i, p_i], x.mean(0), atol=1e-5)
            np.testing.assert_allclose(st_big.ss[s_i, p_i], ((x - x.mean(0)) ** 2).sum(), rtol=1e-4)


def test_u_statistic_distance_is_exact_closed_form() -> None:
    """D_gh equals the average over all pairs of distinct speakers of (x_i − y_j)·(x_i' − y_j') minus nothing:
    checked against a brute-force double loop."""
    rng = np.random.default_rng(0)
    S, P, D = 9, 3, 5
    st = SpaceStats(mean=rng.normal(size=(S, P, D)), count=rng.integers(1, 6, size=(S, P)),
                    ss=rng.random((S, P)))
    st.count[2, 1] = 0
    st.mean[2, 1] = 0.0
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    w = onehot(labels, 2)
    c_direct = components(group_moments(st, w))
    for p in range(P):
        xs = [st.mean[i, p] for i in range(S) if labels[i] == 0 and st.count[i, p] > 0]
        ys = [st.mean[i, p] for i in range(S) if labels[i] == 1 and st.count[i, p] > 0]
        ux = np.mean([a @ b for i, a in enumerate(xs) for j, b in enumerate(xs) if i != j])
        uy = np.mean([a @ b for i, a in enumerate(ys) for j, b in enumerate(ys) if i != j])
        brute = ux + uy - 2 * np.mean(xs, 0) @ np.mean(ys, 0)
        assert c_direct.D[0, 0, 1, p] == pytest.approx(brute, abs=1e-10)
        assert c_direct.D[0, 0, 0, p] == 0.0


def test_shift_unbiased_and_naive_inflated() -> None:
    """Mean over seeds of the CV distance ≈ truth (shift) and ≈ 0 (null); the plug-in distance is clearly > 0."""
    cv_shift, cv_null, naive_null = [], [], []
    for seed in range(6):
        st, labels, names, _ = stats_of(simulate("shift", seed=seed))
        c = components(group_moments(st, onehot(labels, 3)))
        cv_shift.append(c.D[0, names.index("C"), names.index("A")].mean())
        st0, labels0, names0, _ = stats_of(simulate("null", seed=seed))
        c0 = components(group_moments(st0, onehot(labels0, 3)))
        cv_null.append(c0.D[0, 0, 1].mean())
        naive_null.append(naive_distance(st0, labels0, 0, 1).mean())
    truth = 1.5**2
    assert np.mean(cv_shift) == pytest.approx(truth, abs=0.2)
    assert abs(np.mean(cv_null)) < 0.1
    # naive inflation = noise of two group means: 2 * D * (σ_b² + σ_w²/n̄) / n_spk ≈ 2*16*(0.25+1/8)/12 = 1.0
    assert np.mean(naive_null) > 0.6
    assert np.mean(naive_null) > 5 * abs(np.mean(cv_null))


def test_split_half_average_converges_to_closed_form() -> None:
    st, labels, names, _ = stats_of(simulate("shift", seed=1))
    closed = components(group_moments(st, onehot(labels, 3))).D[0, 2, 0]
    few = split_half_distance(st, labels, 2, 0, n_splits=2, seed=0)
    many = split_half_distance(st, labels, 2, 0, n_splits=300, seed=0)
    err_many = np.abs(many - closed).mean()
    assert err_many < 0.1 * np.abs(closed).mean()
    assert err_many < np.abs(few - closed).mean()


def test_variance_components_recovered() -> None:
    sim = simulate("variance", seed=2, dim=32)
    st, labels, names, _ = stats_of(sim)
    c = components(group_moments(st, onehot(labels, 3)))
    truth = sim.truth.variance_table().set_index("group")
    for gi, g in enumerate(names):
        assert np.nanmean(c.within[0, gi]) == pytest.approx(truth.loc[g, "within_speaker_var"], rel=0.05)
        assert np.nanmean(c.between[0, gi]) == pytest.approx(truth.loc[g, "between_speaker_var"], rel=0.2, abs=0.03)


def test_between_speaker_variance_unbiased_for_token_count() -> None:
    """The count_confound group has 3 tokens/phone instead of 8: the naive spread of speaker means grows by
    σ_w²(1/3 − 1/8), the corrected between-speaker estimate does not."""
    b_a, b_c = [], []
    for seed in range(4):
        st, labels, names, _ = stats_of(simulate("count_confound", seed=seed, dim=24))
        c = components(group_moments(st, onehot(labels, 3)))
        b_a.append(np.nanmean(c.between[0, 0]))
        b_c.append(np.nanmean(c.between[0, 2]))
    assert np.mean(b_c) == pytest.approx(0.25, abs=0.04)
    assert np.mean(b_c) - np.mean(b_a) == pytest.approx(0.0, abs=0.04)


def test_consensus_median_not_blaming_unshifted_groups() -> None:
    pair = np.zeros((1, 3, 3, 1))
    pair[0, 2, :2, 0] = pair[0, :2, 2, 0] = 4.0  # group 2 differs from 0 and 1
    out = consensus(pair)[0, :, 0]
    np.testing.assert_allclose(out, [0.0, 0.0, 4.0])


def test_speaker_dispersion_normalised_and_count_robust() -> None:
    sim = simulate("count_confound", seed=5, dim=24)
    st, labels, names, _ = stats_of(sim)
    d = speaker_dispersion(st, onehot(labels, 3), phone_scale(st))[0]
    means = [d[labels == g].mean() for g in range(3)]
    assert np.mean(means) == pytest.approx(1.0, abs=0.05)
    assert means[2] == pytest.approx(means[0], abs=0.06)  # fewer tokens → not more "variable"
    sim_v = simulate("variance", seed=5, dim=24)
    st_v, labels_v, _, _ = stats_of(sim_v)
    d_v = speaker_dispersion(st_v, onehot(labels_v, 3), phone_scale(st_v))[0]
    assert d_v[labels_v == 2].mean() > 1.8 * d_v[labels_v == 0].mean()


def test_lda_whitens_within_class() -> None:
    rng = np.random.default_rng(0)
    P, D, n = 5, 12, 4000
    mu = rng.normal(0, 3, size=(P, D))
    y = rng.integers(0, P, n)
    A = rng.normal(size=(D, D))
    X = (mu[y] + rng.normal(size=(n, D)) @ A).astype(np.float32)
    W, ev = fit_lda(X, y, P, shrinkage=0.0)
    assert W.shape == (D, P - 1)
    Z = X @ W
    resid = Z - np.stack([Z[y == k].mean(0) for k in range(P)])[y]
    cov = resid.T @ resid / (n - P)
    np.testing.assert_allclose(cov, np.eye(P - 1), atol=0.05)
    assert np.all(np.diff(ev) <= 1e-9)


def test_vectorised_dispersion_and_member_route_match_direct_computation() -> None:
    """The batched speaker dispersion equals the per-(speaker, phone) definition, and group sums restricted to each
    group's own speakers (the within-group bootstrap route) equal the full sums (missing cells included)."""
    from phonefair.analysis.variance import _r_sp

    rng = np.random.default_rng(1)
    S, P, D, b = 30, 6, 9, 20
    cnt = rng.integers(0, 5, size=(S, P))
    st = SpaceStats(mean=rng.normal(size=(S, P, D)) * (cnt > 0)[..., None], count=cnt,
                    ss=rng.random((S, P)) * (cnt > 1))
    scale = rng.random(P) + 0.5
    lab = np.stack([rng.permutation(np.arange(S) % 3) for _ in range(b)])
    w = (lab[:, None, :] == np.arange(3)[None, :, None]).astype(float)
    r = _r_sp(st, w) / scale
    n = np.where(np.isnan(r), 0.0, cnt[None].astype(float))
    slow = np.nansum(np.nan_to_num(r) * n, axis=2) / n.sum(2)
    m = group_moments(st, w, speaker_dots=True)
    np.testing.assert_allclose(speaker_dispersion(st, w, scale, m=m), slow, atol=1e-12)
    groups = np.arange(S) % 3
    wb = (groups == np.arange(3)[:, None])[None] * rng.integers(0, 3, size=(b, 1, S))
    members = [np.flatnonzero(groups == g) for g in range(3)]
    np.testing.assert_allclose(group_moments(st, wb, members=members).C, group_moments(st, wb).C, atol=1e-9)
