"""Coverage of the amplification CIs (phonefair.analysis.baseline) on simulated per-speaker accuracies.

Each simulated data set has G groups of n speakers. A speaker's accuracy in a table (encoder layer or baseline
feature set) is Binomial(n_tokens, p) / n_tokens with ``p = mu_g + table shift + u_s + e``: ``u_s`` (a voice that is
hard for every representation) is shared by all tables, so encoder and baseline accuracies are correlated per
speaker, as in real data; ``e`` is table-specific; groups differ in their speaker spread. The true gaps follow from
``mu``. Every encoder layer and baseline feature set is an independent draw given ``u``, so one call yields
L × K amplification intervals (correlated through the shared speakers; the calls are independent).

    python bench/baseline_coverage.py [--reps 200] [--level 0.95]

prints, per method and speakers per group, the share of intervals that contain the true value (encoder gap,
baseline gap, amplification) and the median interval width.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from phonefair.analysis.baseline import amplification

GROUPS = ("a", "b", "c", "d")


def simulate(rng: np.random.Generator, n: int, *, n_layers: int = 10, n_sets: int = 3, n_tokens: int = 150,
             enc_gap: float = 0.08, base_gap: float = 0.04) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """(encoder table, baseline table, true amplification per group under leave-one-out consensus)."""
    mu_base = {"a": 0.70, "b": 0.70 - base_gap, "c": 0.72, "d": 0.68}
    mu_enc = {g: m + 0.12 - (enc_gap - base_gap if g == "b" else 0.0) for g, m in mu_base.items()}
    spread = {"a": 0.04, "b": 0.08, "c": 0.05, "d": 0.06}  # heteroscedastic groups
    spk = [(f"{g}{i}", g, rng.normal(0, spread[g])) for g in GROUPS for i in range(n)]

    def table(mu: dict[str, float], layers: list[str]) -> pd.DataFrame:
        rows = []
        for layer in layers:
            for s, g, u in spk:
                p = float(np.clip(mu[g] + u + rng.normal(0, 0.02), 0.02, 0.98))
                rows.append({"layer": layer, "speaker": s, "group": g, "accuracy": rng.binomial(n_tokens, p) / n_tokens})
        return pd.DataFrame(rows)

    def gaps(mu: dict[str, float]) -> dict[str, float]:
        return {g: float(np.mean([mu[h] for h in GROUPS if h != g]) - mu[g]) for g in GROUPS}

    ge, gb = gaps(mu_enc), gaps(mu_base)
    truth = {g: ge[g] - gb[g] for g in GROUPS} | {f"enc:{g}": ge[g] for g in GROUPS} | {f"base:{g}": gb[g]
                                                                                        for g in GROUPS}
    return (table(mu_enc, [str(i) for i in range(n_layers)]), table(mu_base, [f"f{k}" for k in range(n_sets)]),
            truth)


def coverage(method: str, n: int, reps: int, level: float, seed: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, n])
    hit = {"encoder_gap": [], "baseline_gap": [], "amplification": []}
    width = []
    for r in range(reps):
        enc, base, truth = simulate(rng, n)
        res = amplification(enc, base, method=method, level=level, n_boot=1000, seed=r)
        a = res.tables()["amplification"]
        t = a["group"].map(truth).to_numpy(float)
        hit["amplification"].append(((a["ci_low"] <= t) & (t <= a["ci_high"])).mean())
        width.append(float((a["ci_high"] - a["ci_low"]).median()))
        gp = res.tables()["gaps"]
        for src, key, prefix in (("encoder", "encoder_gap", "enc"), ("baseline", "baseline_gap", "base")):
            d = gp[gp["source"] == src]
            tt = np.array([truth[f"{prefix}:{g}"] for g in d["group"]])
            hit[key].append(((d["ci_low"] <= tt) & (tt <= d["ci_high"])).mean())
    return {k: float(np.mean(v)) for k, v in hit.items()} | {"median_width": float(np.median(width))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="3,4,6,12")
    args = ap.parse_args()
    print(f"nominal {args.level:.2f}; {args.reps} simulated data sets per cell, 4 groups, 10 layers x 3 feature sets")
    print(f"{'method':<11} {'n/group':>7} {'enc gap':>8} {'base gap':>9} {'amplif.':>8} {'width':>7} {'s':>6}")
    for method in ("welch", "percentile"):
        for n in (int(x) for x in args.sizes.split(",")):
            t0 = time.perf_counter()
            c = coverage(method, n, args.reps, args.level, args.seed)
            print(f"{method:<11} {n:>7} {c['encoder_gap']:>8.3f} {c['baseline_gap']:>9.3f} {c['amplification']:>8.3f} "
                  f"{c['median_width']:>7.3f} {time.perf_counter() - t0:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
