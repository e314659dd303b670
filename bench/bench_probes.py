"""Benchmark: batched PyTorch probes vs scikit-learn ``LogisticRegression(solver="lbfgs")`` fitted one by one.

Data: simulated encoder-like embeddings (768 dims, 39 phone classes, 3 speaker groups), generated layer by layer on
read so only one layer is ever resident. Features are anisotropic and correlated (a 32-dim high-variance nuisance
subspace plus per-feature offsets), like real encoder layers, which is what makes first-order optimisers slow.

For ONE layer, every probe (pooled + group + leave-out populations x 3 seeds = 21 probes, ~50k training tokens each,
size-matched) is fitted with the same L2 (lambda, i.e. sklearn ``C = 1 / (lambda * n)``) by
  (a) the batched trainer (all probes in one batch), repeated ``--repeats`` times, median reported;
  (b) scikit-learn, one probe after another on the same standardised rows. When ``--sk-fits`` < 21 only that many
      probes are fitted and the total is extrapolated from the median time per fit (reported as such).
Then the batched fit of all probes of all ``--layers`` layers is timed (read + fit + predict per layer).

Run:  python bench/bench_probes.py               (defaults: 50k tokens/population, 13 layers, 3 sklearn fits)
      python bench/bench_probes.py --quick       (small sizes, a smoke test)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from phonefair.probes import TrainerConfig, build_populations, fit_batched, fit_probes
from phonefair.probes.fit import resolve_device


class LazySimSource:
    """An EmbeddingSource whose layers are generated (deterministically) on each read."""

    def __init__(self, *, n_groups: int = 3, train_speakers: int = 40, train_tokens: int = 1250,
                 test_speakers: int = 10, test_tokens: int = 300, n_classes: int = 39, dim: int = 768,
                 n_layers: int = 13, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        frames = []
        for gi in range(n_groups):
            g = "ABCDEFG"[gi]
            for split, n_spk, n_tok in (("train", train_speakers, train_tokens), ("test", test_speakers, test_tokens)):
                for si in range(n_spk):
                    spk = f"{g}_{split}{si:03d}"
                    frames.append(pd.DataFrame({"speaker": spk, "group": g, "split": split,
                                                "y": rng.integers(0, n_classes, n_tok)}))
        self.tokens = pd.concat(frames, ignore_index=True)
        self.tokens["phone"] = [f"p{c:02d}" for c in self.tokens["y"]]
        self.groups = self.tokens.drop_duplicates("speaker").set_index("speaker")["group"].rename("group")
        self.layers = [str(i) for i in range(n_layers)]
        self.dim, self.n_classes, self.seed = dim, n_classes, seed
        self.provenance = {"source": "bench_probes.LazySimSource", "seed": seed, "dim": dim}

    def read(self, layer: str, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        li = self.layers.index(str(layer))
        rng = np.random.default_rng([self.seed, li])
        D, C = self.dim, self.n_classes
        basis = rng.normal(size=(64, D)) / 8
        mu = rng.normal(0, 0.1 + 0.01 * li, (C, 64)) @ basis  # class structure in a 64-dim subspace
        shift = rng.normal(0, 0.04, (C, D))  # group C's systematic shift
        nuisance = rng.normal(0, 1, (32, D))
        offset = rng.normal(0, 3, D)
        tok = self.tokens if rows is None else self.tokens.iloc[np.asarray(rows)]
        n = len(tok)
        y = tok["y"].to_numpy()
        spk_codes, spk_idx = np.unique(tok["speaker"].to_numpy(), return_inverse=True)
        spk_off = rng.normal(0, 0.15, (len(spk_codes), D))
        x = mu[y] + rng.normal(0, 1, (n, D)) + rng.normal(size=(n, 32)) @ nuisance + offset + spk_off[spk_idx]
        x += np.where((tok["group"].to_numpy() == "C")[:, None], shift[y], 0.0)
        return x.astype(np.float32)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-tokens", type=int, default=1250, help="training tokens per speaker (40 speakers)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3, help="batched repeats (median)")
    ap.add_argument("--sk-fits", type=int, default=3, help="sklearn fits to time (extrapolated to all probes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS threads for both sides (1: fair and stable on a shared machine)")
    ap.add_argument("--compare-layer", default=None, help="layer of the one-layer comparison (default: middle)")
    ap.add_argument("--skip-all-layers", action="store_true", help="only the one-layer comparison")
    ap.add_argument("--full", action="store_true", help="also time fit_probes (l2 grid + metrics) on all layers")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--out", default="", help="write the numbers as JSON here")
    a = ap.parse_args(argv)
    if a.quick:
        a.train_tokens, a.dim, a.layers, a.repeats, a.sk_fits = 60, 64, 2, 1, 2
    torch.set_num_threads(a.threads)
    import sklearn.linear_model  # noqa: F401  (load its BLAS/OpenMP first: threadpoolctl limits loaded libraries)
    from threadpoolctl import threadpool_limits
    threadpool_limits(a.threads)  # sklearn's BLAS and OpenMP get the same number of threads as torch
    dev = resolve_device(a.device)
    src = LazySimSource(train_tokens=a.train_tokens, dim=a.dim, n_layers=a.layers,
                        test_tokens=max(20, a.train_tokens // 4))
    tok = src.tokens.assign(row=np.arange(len(src.tokens)))
    pops, sizes = build_populations(tok[tok.split == "train"], seeds=tuple(range(a.seeds)))
    test_rows = tok.index[tok.split == "test"].to_numpy()
    resident = np.unique(np.concatenate([p.rows for p in pops] + [test_rows]))
    y_all = torch.from_numpy(tok["y"].to_numpy()[resident]).to(dev)
    rows = torch.from_numpy(np.stack([np.searchsorted(resident, p.rows) for p in pops])).to(dev)
    w = torch.ones(rows.shape, device=dev)
    mask = torch.ones(len(pops), src.n_classes, dtype=torch.bool, device=dev)
    l2 = torch.full((len(pops), 1), a.l2, device=dev)
    test_local = torch.from_numpy(np.searchsorted(resident, test_rows)).to(dev)
    y_test = tok["y"].to_numpy()[test_rows]
    cfg = TrainerConfig()
    print(f"probes per layer: {len(pops)}  training tokens per probe: {sizes['n_tokens']}  "
          f"speakers per probe: {sizes['n_speakers']}  dim: {a.dim}  classes: {src.n_classes}  device: {dev}  "
          f"torch threads: {torch.get_num_threads()}", flush=True)

    layer = a.compare_layer if a.compare_layer is not None else src.layers[len(src.layers) // 2]
    out_layer = {"compare_layer": layer}
    x_np = src.read(layer, resident)
    x = torch.from_numpy(x_np).to(dev)
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def run_batched(r: int) -> tuple[float, float, np.ndarray, str]:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        probes = fit_batched(x, y_all, rows, w, mask, l2, cfg, seed=r)
        pred = probes.predict(x[test_local])[:, :, 0].cpu().numpy()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, time.process_time() - c, (pred == y_test[:, None]).mean(0), \
            f"{probes.optimizer}, {probes.n_iter} steps"

    xt_np = x_np[np.searchsorted(resident, test_rows)]

    def run_sklearn(i: int) -> tuple[float, float, float, int]:
        p = pops[i]
        xr = x_np[np.searchsorted(resident, p.rows)]
        yr = tok["y"].to_numpy()[p.rows]
        t, c = time.perf_counter(), time.process_time()
        sc = StandardScaler().fit(xr)
        m = LogisticRegression(C=1.0 / (a.l2 * len(yr)), solver="lbfgs", max_iter=2000)
        m.fit(sc.transform(xr), yr)
        acc = float(m.score(sc.transform(xt_np), y_test))
        return time.perf_counter() - t, time.process_time() - c, acc, int(m.n_iter_[0])

    # interleaved (batched, sklearn, batched, ...) so both sides see the same load on a shared machine
    times, cpu_b, acc_b = [], [], None
    sk_times, sk_cpu, sk_acc, sk_iter = [], [], [], []
    for r in range(max(a.repeats, a.sk_fits)):
        if r < a.repeats:
            wall, cpu, acc_b, how = run_batched(r)
            times.append(wall)
            cpu_b.append(cpu)
            print(f"  batched repeat {r}: {wall:.1f} s wall, {cpu:.1f} s CPU ({how})", flush=True)
        if r < a.sk_fits:
            wall, cpu, acc, it = run_sklearn(r)
            sk_times.append(wall)
            sk_cpu.append(cpu)
            sk_acc.append(acc)
            sk_iter.append(it)
            p = pops[r]
            print(f"  sklearn fit {r} ({p.label}, seed {p.seed}): {wall:.1f} s wall, {cpu:.1f} s CPU, {it} "
                  f"iterations, held-out acc {acc:.4f}", flush=True)
    assert acc_b is not None
    for i in range(len(sk_acc)):
        print(f"  probe {i}: held-out acc sklearn {sk_acc[i]:.4f} batched {acc_b[i]:.4f}")
    per_fit = _median(sk_times)
    sk_total = per_fit * len(pops)
    b_med = _median(times)
    diffs = [abs(acc_b[i] - sk_acc[i]) for i in range(len(sk_acc))]
    out: dict[str, object] = {
        **out_layer, "device": str(dev), "threads": torch.get_num_threads(), "probes_per_layer": len(pops),
        "train_tokens_per_probe": sizes["n_tokens"], "dim": a.dim, "classes": src.n_classes, "l2": a.l2,
        "batched_one_layer_s_median": b_med, "batched_one_layer_s_all": times,
        "sklearn_fits_timed": len(sk_times), "sklearn_s_per_fit_median": per_fit,
        "sklearn_one_layer_s": sk_total if len(sk_times) == len(pops) else None,
        "sklearn_one_layer_s_extrapolated": sk_total, "speedup": sk_total / b_med,
        "sklearn_iterations": sk_iter,
        "heldout_acc_batched": [float(v) for v in acc_b], "heldout_acc_sklearn": sk_acc,
        "max_abs_acc_diff_points": 100 * max(diffs) if diffs else None,
        "batched_one_layer_cpu_s_median": _median(cpu_b), "sklearn_cpu_s_per_fit_median": _median(sk_cpu),
        "speedup_cpu_time": _median(sk_cpu) * len(pops) / _median(cpu_b),
    }
    print(f"ONE LAYER ({layer}): batched {b_med:.1f} s (median of {len(times)}) vs sklearn {sk_total:.1f} s "
          f"({'extrapolated from ' + str(len(sk_times)) + ' fits' if len(sk_times) < len(pops) else 'all fits'}, "
          f"{per_fit:.1f} s/fit median) -> {sk_total / b_med:.1f}x; max |acc diff| "
          f"{out['max_abs_acc_diff_points']:.2f} points; CPU-time ratio {out['speedup_cpu_time']:.1f}x", flush=True)
    del x

    if a.skip_all_layers:
        src.layers = []
    t_all = time.perf_counter()
    for layer in src.layers:
        xl = torch.from_numpy(src.read(layer, resident)).to(dev)
        pr = fit_batched(xl, y_all, rows, w, mask, l2, cfg, seed=0)
        pr.predict(xl[test_local])
        del xl, pr
    out["batched_all_layers_s"] = time.perf_counter() - t_all
    if src.layers:
        print(f"ALL {len(src.layers)} LAYERS (batched, fixed l2, incl. generating each layer): "
              f"{out['batched_all_layers_s']:.1f} s", flush=True)
    if a.full:
        t = time.perf_counter()
        res = fit_probes(src, src.groups, device=str(dev), progress=False, n_boot=1000, keep_predictions=False)
        out["fit_probes_all_layers_s"] = time.perf_counter() - t
        out["fit_probes_timing"] = res.provenance["timing_s"]
        print(f"fit_probes (l2 grid {res.provenance['settings']['l2_grid']}, metrics, {len(src.layers)} layers): "
              f"{out['fit_probes_all_layers_s']:.1f} s", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
