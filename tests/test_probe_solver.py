"""The exact linear-probe solver (phonefair.probes.solver) and L2 selection (fit_select): optimum, independence,
early exit of converged problems, row buffers reused across batches, planted best lambda, determinism, threads,
precision rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from phonefair.errors import ConfigError, DataError
from phonefair.probes import TrainerConfig, fit_batched
from phonefair.probes import solver as S
from phonefair.probes.trainer import fit_select


def _blobs(seed: int, n: int, classes: int = 8, dim: int = 12, noise: float = 1.3) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes with anisotropic, correlated, offset features (what makes plain gradient methods slow)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 1.0, (classes, dim))
    y = rng.integers(0, classes, n)
    mix = np.eye(dim) + 0.5 * rng.normal(size=(dim, dim)) / np.sqrt(dim)
    x = (mu[y] + rng.normal(0, noise, (n, dim)) * rng.uniform(0.5, 3, dim)) @ mix + rng.normal(0, 5, dim)
    return x.astype(np.float32), y


def _sk_objective(x: np.ndarray, y: np.ndarray, lam: float, W: np.ndarray, b: np.ndarray) -> float:
    """mean CE + lam/2 ||W||^2 on x standardised with its own mean/SD (the trainer's objective), in float64."""
    z = StandardScaler().fit_transform(x.astype(np.float64))
    logits = z @ W.T + b
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean() + 0.5 * lam * (W * W).sum())


def _fit(x: np.ndarray, y: np.ndarray, rows: list[np.ndarray], lams: list[float], cfg: TrainerConfig,
         seed: int = 0, classes: int = 8):
    n = max(len(r) for r in rows)
    R = np.zeros((len(rows), n), dtype=np.int64)
    w = np.zeros((len(rows), n), dtype=np.float32)
    for i, r in enumerate(rows):
        R[i, :len(r)], w[i, :len(r)] = r, 1.0
    mask = torch.zeros(len(rows), classes, dtype=torch.bool)
    for i, r in enumerate(rows):
        mask[i, np.unique(y[r])] = True
    return fit_batched(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(R), torch.from_numpy(w), mask,
                       torch.tensor([lams] * len(rows), dtype=torch.float32), cfg, seed=seed)


@pytest.mark.parametrize("lam", [1e-3, 1e-1])
def test_solver_reaches_sklearns_optimum(lam):
    """Same objective (sklearn C = 1/(lam n)), same minimum: objective value, coefficients, held-out predictions."""
    x, y = _blobs(0, 2400)
    rows = [np.arange(0, 900), np.arange(500, 1400)]  # two overlapping probes in one batch
    test = np.arange(1400, 2400)
    probes = _fit(x, y, rows, [lam], TrainerConfig(tol=1e-6))
    assert bool(probes.extra["converged"].all()) and float(probes.extra["grad_max"].max()) <= 1e-6
    pred = probes.predict(torch.from_numpy(x[test])).numpy()[:, :, 0]
    for p, r in enumerate(rows):
        sc = StandardScaler().fit(x[r].astype(np.float64))
        sk = LogisticRegression(C=1.0 / (lam * len(r)), tol=1e-10, max_iter=10000).fit(sc.transform(x[r]), y[r])
        W = probes.params["W"][p, 0].double().numpy().T  # [C, D]
        b = probes.params["b"][p, 0].double().numpy()
        f_ours = _sk_objective(x[r], y[r], lam, W, b)
        f_sk = _sk_objective(x[r], y[r], lam, sk.coef_, sk.intercept_)
        assert f_ours <= f_sk + 1e-7 * abs(f_sk), (p, f_ours, f_sk)  # at least as low as sklearn's optimum
        assert abs(f_ours - f_sk) <= 1e-6 * abs(f_sk)
        # softmax is invariant to adding one vector to every class's weights: compare centred coefficients
        wc, ws = W - W.mean(0), sk.coef_ - sk.coef_.mean(0)
        assert np.abs(wc - ws).max() <= 1e-3 * np.abs(ws).max()
        agree = (pred[:, p] == sk.predict(sc.transform(x[test]))).mean()
        assert agree >= 0.998, agree


def test_gradient_test_acts_and_tolerance_orders_accuracy():
    """The stopping test is max |gradient| <= tol: a loose tol stops earlier, farther from the optimum."""
    x, y = _blobs(1, 1500, dim=20)
    rows = [np.arange(1500)]
    loose = _fit(x, y, rows, [1e-3], TrainerConfig(tol=1e-2))
    tight = _fit(x, y, rows, [1e-3], TrainerConfig(tol=1e-6))
    assert float(loose.extra["grad_max"][0, 0]) <= 1e-2 and float(tight.extra["grad_max"][0, 0]) <= 1e-6
    assert int(loose.extra["n_iter"][0, 0]) < int(tight.extra["n_iter"][0, 0])
    assert float(loose.extra["objective"][0, 0]) > float(tight.extra["objective"][0, 0])


def test_converged_problems_leave_the_batch(monkeypatch):
    """An easy problem (strong L2) stops after fewer iterations than a hard one in the same call, and stops costing
    matrix-product columns; its result matches solving it alone (batch-mates share only the preconditioner's
    feature correlation, which shapes the path, not the optimum)."""
    x, y = _blobs(2, 1600, dim=16)
    rows = [np.arange(0, 800), np.arange(800, 1600)]
    widths: list[int] = []
    orig = S._Batch.forward

    def spy(self, d, slot, out=None, resid=None):
        widths.append(int(d.shape[0]))
        U, RU = orig(self, d, slot, out=out, resid=resid)
        if resid is not None:  # the copy-back's fused sum(R U) is the plain one
            ref = (resid.double() * U.double()).sum((1, 2))
            assert torch.allclose(RU.double(), ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
        return U, RU

    monkeypatch.setattr(S._Batch, "forward", spy)
    cfg = TrainerConfig(tol=1e-6, pilot=False)  # the batch mechanics, without the pilot's extra solve
    both = _fit(x, y, rows, [10.0, 1e-4], cfg)  # per probe: an easy and a hard strength
    it = both.extra["n_iter"]
    assert bool(both.extra["converged"].all())
    assert (it[:, 0] < it[:, 1]).all(), it
    # one product per iteration; a problem's columns leave the product once it has converged
    assert widths[0] == 4 and widths == sorted(widths, reverse=True) and len(widths) == int(it.max())
    assert sum(v > 2 for v in widths) == int(it[:, 0].max())  # after the easy problems converged: hard ones only
    monkeypatch.setattr(S._Batch, "forward", orig)
    alone = _fit(x, y, rows[:1], [10.0], cfg)
    assert torch.allclose(alone.params["W"][0, 0], both.params["W"][0, 0], atol=1e-5)


def test_identical_probes_are_solved_once_and_agree():
    x, y = _blobs(3, 1200)
    r = np.arange(1000)
    probes = _fit(x, y, [r, r, np.arange(200, 1200)], [1e-2], TrainerConfig())
    assert probes.extra["distinct_problems"] == 2 and probes.extra["distinct_row_sets"] == 2
    assert torch.equal(probes.params["W"][0], probes.params["W"][1])


def test_determinism_with_a_seed():
    x, y = _blobs(4, 1500)
    rows = [np.arange(1200), np.arange(300, 1500)]
    a = _fit(x, y, rows, [1e-3, 1e-2], TrainerConfig(), seed=5)
    b = _fit(x, y, rows, [1e-3, 1e-2], TrainerConfig(), seed=5)
    assert torch.equal(a.params["W"], b.params["W"]) and torch.equal(a.params["b"], b.params["b"])


def test_batches_reusing_row_buffers_match_one_batch(monkeypatch):
    """Row sets solved in separate batches (a tiny ``batch_bytes``) take the buffers of finished sets, which hold
    another set's rows and are longer than needed; the solutions must equal those of one batch (fresh buffers)."""
    x, y = _blobs(6, 2400, dim=16)
    rows = [np.arange(0, 900), np.arange(900, 1900), np.arange(1300, 2400)]  # three sizes: reuse across sizes
    fresh: list[int] = []
    orig = S.Workspace.row_buffer

    def count_fresh(self, numel, capacity, dtype, device):
        if not any(b.numel() >= numel for b in self.free_rows):
            fresh.append(numel)
        return orig(self, numel, capacity, dtype, device)

    monkeypatch.setattr(S.Workspace, "row_buffer", count_fresh)
    split = _fit(x, y, rows, [1e-3, 1e-1], TrainerConfig(tol=1e-6, batch_bytes=1, pilot=False))
    n_split = len(fresh)
    fresh.clear()
    one = _fit(x, y, rows, [1e-3, 1e-1], TrainerConfig(tol=1e-6, batch_bytes=2**30, pilot=False))
    assert n_split == 1 and len(fresh) == 3  # split: one buffer serves all three batches; one batch: three
    assert bool(split.extra["converged"].all()) and bool(one.extra["converged"].all())
    assert torch.allclose(split.params["W"], one.params["W"], atol=1e-5)
    centred = [p.params["b"] - p.params["b"].mean(-1, keepdim=True) for p in (split, one)]  # b + const: same model
    assert torch.allclose(centred[0], centred[1], atol=1e-5)

def test_a_workspace_shared_by_consecutive_fits_reuses_its_buffers_and_changes_no_result(monkeypatch):
    """The pipeline passes one Workspace to the fits of every layer: the second fit (other rows, other sizes, other
    class sets) must allocate nothing new when the first was larger, and return what a fresh workspace returns."""
    x, y = _blobs(3, 3000, dim=16)
    big = [np.arange(0, 1500), np.arange(1000, 2600), np.arange(200, 1700)]
    small = [np.arange(2000, 3000), np.flatnonzero(y[:1200] != 2)]  # one probe lacks a class
    fresh: list[int] = []
    orig = S.Workspace._fresh

    def count(numel, dtype, device):
        fresh.append(numel)
        return orig(numel, dtype, device)

    monkeypatch.setattr(S.Workspace, "_fresh", staticmethod(count))
    ws = S.Workspace()
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)

    def fit(rows, workspace):
        n = max(len(r) for r in rows)
        R, w = np.zeros((len(rows), n), dtype=np.int64), np.zeros((len(rows), n), dtype=np.float32)
        mask = torch.zeros(len(rows), 8, dtype=torch.bool)
        for i, r in enumerate(rows):
            R[i, :len(r)], w[i, :len(r)] = r, 1.0
            mask[i, np.unique(y[r])] = True
        return fit_batched(x_t, y_t, torch.from_numpy(R), torch.from_numpy(w), mask, torch.full((len(rows), 2), 1e-3),
                           TrainerConfig(tol=1e-6, precision="bf16"), seed=1, workspace=workspace)

    fit(big, ws)
    assert fresh, "the first fit allocates its buffers"
    fresh.clear()
    shared = fit(small, ws)
    assert fresh == []  # everything came from the first fit's buffers
    alone = fit(small, None)
    assert torch.equal(shared.params["W"], alone.params["W"]) and torch.equal(shared.params["b"], alone.params["b"])
    assert torch.equal(shared.extra["n_iter"], alone.extra["n_iter"])


def test_class_mask_weights_and_absent_classes():
    """Weighted rows give the weighted objective (duplicating a row = weight 2); absent classes are never predicted."""
    x, y = _blobs(5, 900)
    keep = np.flatnonzero(y[:600] != 3)
    dup = np.concatenate([keep, keep[:100]])
    twice = _fit(x, y, [dup], [1e-2], TrainerConfig(tol=1e-7))
    w = np.ones(len(keep), dtype=np.float32)
    w[:100] = 2.0
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[0, 3] = False
    weighted = fit_batched(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(keep)[None],
                           torch.from_numpy(w)[None], mask, torch.tensor([[1e-2]]), TrainerConfig(tol=1e-7))
    assert torch.allclose(twice.params["W"], weighted.params["W"], atol=1e-4)
    assert not (weighted.predict(torch.from_numpy(x)) == 3).any()
    with pytest.raises(DataError, match="class_mask excludes"):
        fit_batched(torch.from_numpy(x), torch.from_numpy(y), torch.arange(600)[None], torch.ones(1, 600), mask,
                    torch.tensor([[1e-2]]))


def test_fit_select_picks_the_planted_best_lambda():
    """Probe 0: 60 training rows, signal in 3 of 40 features: the weakest L2 overfits, the strongest drowns the rare
    classes, the middle one wins (by 3.7 and 6.9 points). Probe 1: 2,000 rows of the same task with a weaker signal:
    the weakest L2 wins (by 1.3 points). The choice equals an exhaustive selection with scikit-learn, and the refit
    equals a direct fit at the chosen strength."""
    rng = np.random.default_rng(6)
    C, D = 4, 40
    mu = np.zeros((C, D))
    mu[:, :3] = rng.normal(0, 2.0, (C, 3))
    y = rng.choice(C, 6000, p=[0.55, 0.25, 0.15, 0.05])
    x = (mu[y] + rng.normal(0, 1, (6000, D))).astype(np.float32)
    x[3000:, :3] *= 0.6
    grid = [1e-4, 1e-2, 1.0]
    fit = [np.arange(0, 60), np.arange(3000, 5000)]
    val = [np.arange(60, 1000), np.arange(5000, 6000)]
    full = [np.concatenate([f, v]) for f, v in zip(fit, val, strict=True)]

    def pad(lists):
        n = max(len(v) for v in lists)
        r = torch.zeros(len(lists), n, dtype=torch.long)
        w = torch.zeros(len(lists), n)
        for i, v in enumerate(lists):
            r[i, :len(v)], w[i, :len(v)] = torch.from_numpy(v), 1.0
        return r, w

    fm = torch.stack([torch.bincount(torch.from_numpy(y[f]), minlength=C) > 0 for f in fit])
    mask = torch.stack([torch.bincount(torch.from_numpy(y[f]), minlength=C) > 0 for f in full])
    args = (torch.from_numpy(x), torch.from_numpy(y), *pad(fit), *pad(val), *pad(full), fm, mask, grid)
    sel = fit_select(*args, TrainerConfig(select_tol=1e-7, tol=1e-7), seed=0)  # tight: comparable to sklearn
    expect = []
    for f, v in zip(fit, val, strict=True):
        accs = []
        for lam in grid:
            sc = StandardScaler().fit(x[f])
            m = LogisticRegression(C=1.0 / (lam * len(f)), tol=1e-8, max_iter=10000).fit(sc.transform(x[f]), y[f])
            accs.append((m.predict(sc.transform(x[v])) == y[v]).mean())
        expect.append(max(i for i, a in enumerate(accs) if a >= max(accs) - 1e-12))
        assert np.allclose(sel.val_accuracy_grid[len(expect) - 1].numpy(), accs, atol=2 / len(v))
    assert [grid[i] for i in expect] == [1e-2, 1e-4]  # the planted answer (and sklearn's)
    assert sel.l2.tolist() == pytest.approx([1e-2, 1e-4])
    assert fit_select(*args, TrainerConfig(), seed=0).l2.tolist() == pytest.approx([1e-2, 1e-4])  # default tols
    assert bool(sel.probes.extra["converged"].all())
    direct = fit_batched(torch.from_numpy(x), torch.from_numpy(y), *pad(full), mask, sel.l2[:, None],
                         TrainerConfig(tol=1e-7))
    assert torch.allclose(sel.probes.params["W"], direct.params["W"], atol=2e-3)


def test_threads_setting_is_applied_and_restored(monkeypatch):
    before = torch.get_num_threads()
    seen = []
    orig = S.solve_linear

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return orig(*a, **k)

    monkeypatch.setattr("phonefair.probes.trainer.solve_linear", spy)
    x, y = _blobs(7, 400)
    _fit(x, y, [np.arange(400)], [1e-2], TrainerConfig(threads=2))
    assert seen == [2] and torch.get_num_threads() == before
    assert S.thread_count(3) == 3
    monkeypatch.setattr("os.getloadavg", lambda: (7.5, 0.0, 0.0))
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert S.thread_count("auto") == 1  # 0.5 idle cores: contended
    monkeypatch.setattr("os.getloadavg", lambda: (1.2, 0.0, 0.0))
    assert S.thread_count("auto") == 6
    with pytest.raises(ConfigError):
        TrainerConfig(threads=0)


def test_precision_rule():
    cpu = torch.device("cpu")
    assert S.compute_dtype("auto", cpu, S.BF16_MIN_ROWS - 1) == torch.float32  # small problems: float32
    assert S.compute_dtype("fp32", cpu, 10**6) == torch.float32
    assert S.compute_dtype("bf16", cpu, 10) == torch.bfloat16
    with pytest.raises(ConfigError):
        S.compute_dtype("fp8", cpu, 10)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_paths_reach_the_optimum(precision):
    """Forced 16-bit rows and products: same held-out predictions and objective as float32, within tolerance."""
    x, y = _blobs(8, 6000, dim=24)
    rows = [np.arange(5000)]
    f32 = _fit(x, y, rows, [1e-3], TrainerConfig(precision="fp32", tol=1e-6))
    b16 = _fit(x, y, rows, [1e-3], TrainerConfig(precision=precision, tol=1e-4))
    assert b16.extra["precision"] == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert bool(b16.extra["converged"].all())
    test = torch.from_numpy(x[5000:])
    agree = (f32.predict(test) == b16.predict(test)).float().mean()
    assert agree >= 0.995
    assert abs(float(b16.extra["objective"][0, 0]) - float(f32.extra["objective"][0, 0])) <= 1e-4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_subsampled_line_search_needs_few_full_evaluations(monkeypatch, precision):
    """Big problems (>= 16,384 rows) find the step by Newton on a random subsample of the rows, corrected by the
    exact phi'(0) of all rows (a control variate). Without the correction the subsample's own noise makes the
    full-row acceptance test fail at almost every iteration (2 full evaluations per iteration); with it, ~1. The
    exact phi'(0) is sum(R U), fused into the forward product (float32: chunk by chunk in its copy-back, 20,000
    rows being several chunks; bfloat16: the diagonal of one small product); it must equal the plain sum. The
    float32 solution is the float32 optimum's (same predictions)."""
    x, y = _blobs(9, 24000, classes=6, dim=10)
    rows = [np.arange(20000)]
    full_rounds: list[int] = []
    searches: list[int] = []
    orig_eval, orig_search = S._evaluate, S._line_search

    def eval_spy(L, U, alpha, yy, w, cols, pend, **kw):
        if cols.stop == L.shape[2] and kw.get("R") is not None:
            full_rounds.append(len(pend))
        return orig_eval(L, U, alpha, yy, w, cols, pend, **kw)

    def search_spy(st, *a, **kw):
        searches.append(int(st.pid.numel()))
        return orig_search(st, *a, **kw)

    dots: list[float] = []
    orig_forward = S._Batch.forward

    def forward_spy(self, d, slot, out=None, resid=None):
        U, RU = orig_forward(self, d, slot, out=out, resid=resid)
        if resid is not None:
            per_class = (resid.double() * U.double()).sum(2)
            # float32 chunks: float32 accumulation; bfloat16: one rounding per class sum (relative 2^-9)
            scale = per_class.abs().sum(1) if resid.dtype == torch.bfloat16 else per_class.sum(1).abs()
            dots.append(float(((RU.double() - per_class.sum(1)).abs() / scale.clamp_min(1e-30)).max()))
        return U, RU

    monkeypatch.setattr(S, "_evaluate", eval_spy)
    monkeypatch.setattr(S, "_line_search", search_spy)
    monkeypatch.setattr(S._Batch, "forward", forward_spy)
    fit = _fit(x, y, rows, [1e-3], TrainerConfig(precision=precision, tol=1e-5 if precision == "fp32" else 1e-4),
               classes=6)
    monkeypatch.undo()
    assert bool(fit.extra["converged"].all())
    full_per_search = (sum(full_rounds) - 1) / sum(searches)  # minus the start's evaluation
    assert full_per_search <= 1.5, full_per_search
    assert dots and max(dots) < (4e-3 if precision == "bf16" else 1e-4), dots  # the fused sum is the plain one
    if precision == "bf16":
        return
    ref = _fit(x, y, rows, [1e-3], TrainerConfig(precision="fp32", tol=1e-7), classes=6)
    test = torch.from_numpy(x[20000:])
    assert (fit.predict(test) == ref.predict(test)).float().mean() >= 0.999


def test_pilot_start_keeps_every_optimum_and_shortens_the_paths():
    """Probes of nearby populations (a pooled set, per-group sets, leave-one-out sets) started from one solved pilot
    problem: the same optima as from zero (each problem keeps its own stop rule) in fewer iterations. One set lacks
    a class that the pilot has, another has a class the pilot lacks: the mapped start must still converge to the
    probe's own optimum (classes a probe never saw stay at probability 0)."""
    x, y = _blobs(7, 3000, dim=16)
    y[y == 7] = 6
    y[2700:2800] = 7  # class 7 only in the last rows: the pilot (the largest set, rows 0-2599) never sees it
    head = y[:900]
    head[head == 5] = 4  # the first set lacks class 5, which the pilot has
    pools = [np.arange(0, 2600), np.arange(0, 900), np.arange(900, 1800), np.arange(1800, 2600),
             np.arange(900, 2600), np.arange(1500, 3000)]
    lams = [1e-3, 1e-2]
    cfg = TrainerConfig(tol=1e-6, precision="fp32")
    with_pilot = _fit(x, y, pools, lams, cfg)
    cold = _fit(x, y, pools, lams, TrainerConfig(tol=1e-6, precision="fp32", pilot=False))
    assert with_pilot.extra["pilot_problem"] is not None and cold.extra["pilot_problem"] is None
    assert bool(with_pilot.extra["converged"].all()) and bool(cold.extra["converged"].all())
    assert torch.allclose(with_pilot.params["W"], cold.params["W"], atol=2e-4)
    pw, pc = (p.predict(torch.from_numpy(x)) for p in (with_pilot, cold))
    assert (pw == pc).float().mean() > 0.999
    assert int(with_pilot.extra["n_iter"].sum()) < int(cold.extra["n_iter"].sum())
    assert not bool(with_pilot.class_mask[0, 7]) and bool(with_pilot.class_mask[5, 7])
    assert not bool(with_pilot.class_mask[1, 5]) and bool(with_pilot.class_mask[0, 5])
