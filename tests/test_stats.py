"""Shared statistics: speaker-clustered bootstrap, p-values and Benjamini–Hochberg."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from phonefair.stats import (
    benjamini_hochberg,
    bootstrap_pvalue,
    cluster_bootstrap_weights,
    percentile_ci,
    permutation_pvalue,
    spearman,
)


def test_cluster_bootstrap_keeps_stratum_sizes_and_resamples_whole_clusters():
    clusters = np.repeat([f"s{i}" for i in range(7)], [3, 1, 4, 2, 2, 5, 1])  # per-token speaker ids
    strata = np.repeat(["a", "a", "a", "b", "b", "b", "b"], [3, 1, 4, 2, 2, 5, 1])
    uniq, w = cluster_bootstrap_weights(clusters, 500, seed=3, strata=strata)
    assert list(uniq) == [f"s{i}" for i in range(7)]
    assert w.shape == (500, 7)
    np.testing.assert_array_equal(w[:, :3].sum(1), 3)  # stratum a has 3 speakers
    np.testing.assert_array_equal(w[:, 3:].sum(1), 4)
    # every speaker is drawn with probability 1/n_stratum per draw: mean weight is 1
    np.testing.assert_allclose(w.mean(0), 1.0, atol=0.15)
    _, w2 = cluster_bootstrap_weights(clusters, 500, seed=3, strata=strata)
    np.testing.assert_array_equal(w, w2)


def test_cluster_bootstrap_rejects_bad_n_boot():
    with pytest.raises(ValueError, match="n_boot"):
        cluster_bootstrap_weights(["a"], 0, seed=0)


def test_bh_matches_scipy_and_handles_nan():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.002, size=10)])
    q, rej = benjamini_hochberg(p, alpha=0.05)
    np.testing.assert_allclose(q, sps.false_discovery_control(p, method="bh"))
    assert rej.sum() >= 10
    q2, rej2 = benjamini_hochberg(np.array([0.01, np.nan, 0.04]), alpha=0.05)
    assert np.isnan(q2[1]) and not rej2[1]
    np.testing.assert_allclose(q2[[0, 2]], [0.02, 0.04])


def test_bh_controls_fdr_on_simulated_tests():
    # 900 nulls + 100 strong effects, repeated: the realised FDR averages at most alpha * m0/m
    rng = np.random.default_rng(1)
    fdrs = []
    for _ in range(200):
        p_null = rng.uniform(size=900)
        p_alt = sps.norm.sf(rng.normal(3.5, 1, size=100))
        _, rej = benjamini_hochberg(np.concatenate([p_null, p_alt]), alpha=0.1)
        fdrs.append(rej[:900].sum() / max(1, rej.sum()))
    assert np.mean(fdrs) <= 0.1 * 0.9 + 0.02


def test_bootstrap_pvalue_and_ci():
    rng = np.random.default_rng(2)
    reps = rng.normal(1.0, 0.3, size=4000)
    assert bootstrap_pvalue(reps) < 0.01
    lo, hi = percentile_ci(reps)
    assert lo == pytest.approx(1 - 1.96 * 0.3, abs=0.05) and hi == pytest.approx(1 + 1.96 * 0.3, abs=0.05)
    centred = rng.normal(0.0, 0.3, size=4000)
    assert bootstrap_pvalue(centred) > 0.3


def test_permutation_pvalue_never_zero():
    assert permutation_pvalue(10.0, np.zeros(99)) == pytest.approx(0.01)
    assert permutation_pvalue(0.0, np.zeros(99)) == pytest.approx(1.0)


def test_spearman():
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones(10)))
