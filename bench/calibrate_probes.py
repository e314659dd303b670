"""Calibration of the probe statistics on null data at small, unbalanced sizes (issue case 6).

Null embeddings (no group differs), groups of 18 / 9 / 7 speakers by default, 5 speaker folds, default λ grid
(`--phone-sep`: 1.0 puts accuracy at its ceiling, ~0.99; 0.4 at ~0.63):
coverage of the 95 % in-group-benefit interval of every group (nominal 0.95), rate of BH-significant in-group
benefits (nominal ≤ fdr_alpha family-wise-ish), coverage of the served-worse gap interval (the leave-one-out
consensus gap, true value 0), and the family-wise "served worse" rate of the step-down max-T test (nominal alpha).

    python bench/calibrate_probes.py --datasets 200 --jobs 2 [--sizes 18,9,7] [--dim 32]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def one(args: tuple[int, tuple[int, ...], int, int, float]) -> dict[str, float]:
    seed, sizes, dim, folds, sep = args
    from phonefair.analysis.served import served_worse
    from phonefair.audit.design import Design
    from phonefair.probes import fit_probes
    from phonefair.settings import ProbeSettings
    from phonefair.synth.simulate import PRESETS, simulate

    sc = PRESETS["null"]
    for g, n in zip("ABCDEFGH", sizes):
        sc = sc.with_group(g, n_speakers=n)
    sim = simulate(sc, seed=10_000 + seed, dim=dim, phone_sep=sep, layers=("0", "1"))
    design = Design.build(sim.embeddings, sim.groups, folds=folds, seed=seed)
    res = fit_probes(sim.embeddings, design, ProbeSettings(threads=1, populations=("pooled", "group")), seed=seed)
    ib = res["in_group_benefit"]
    sw = served_worse(res["speaker_accuracy"], design, n_perm=999, seed=seed)
    g = sw.gaps
    return {"igb_cover": float(((ib.ci_low <= 0) & (ib.ci_high >= 0)).mean()),
            "igb_any_sig": float(ib["significant"].any()),
            "gap_cover": float(((g.gap_ci_low <= 0) & (g.gap_ci_high >= 0)).mean()),
            "any_served_worse": float(sw.decisions["served_worse"].any()),
            "accuracy": float(res["speaker_accuracy"]["standardized_accuracy"].mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--sizes", default="18,9,7")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--phone-sep", type=float, default=1.0,
                    help="phone-mean separation: 1.0 puts accuracy near its ceiling (~0.99), 0.4 near 0.63")
    a = ap.parse_args()
    sizes = tuple(int(x) for x in a.sizes.split(","))
    work = [(s, sizes, a.dim, a.folds, a.phone_sep) for s in range(a.datasets)]
    if a.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(a.jobs) as ex:
            rows = list(ex.map(one, work))
    else:
        rows = [one(w) for w in work]
    n = len(rows)
    for key, nominal in (("igb_cover", 0.95), ("gap_cover", 0.95), ("igb_any_sig", None),
                         ("any_served_worse", 0.05)):
        v = np.array([r[key] for r in rows])
        se = v.std(ddof=1) / np.sqrt(n)
        print(f"{key:18s} {v.mean():.3f} ± {1.96 * se:.3f}" + (f"   (nominal {nominal})" if nominal else ""))
    print(f"datasets: {n}, groups {sizes}, dim {a.dim}, folds {a.folds}, layers 2, phone_sep {a.phone_sep}, "
          f"mean standardised accuracy {np.mean([r['accuracy'] for r in rows]):.3f}")


if __name__ == "__main__":
    main()
