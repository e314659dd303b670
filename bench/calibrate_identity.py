"""Calibration of the group-identity permutation test under the null (the figures in docs/lenses.md come from here).

``n`` independent datasets without group signal (``simulate_identity(group_dims=())``: 3 groups x 6 speakers,
4 phones, 6 dims, speaker spread 0.8) go through the group-identity probe (pooled and per-phone, ``n_perm``
permutations, 3 folds). Printed: rejection rates at 5 / 10 / 20 % with the 95 % binomial band for ``n`` datasets,
and the mean p-value. Exact rates under exchangeability are the nominal levels (``n_perm + 1`` a multiple of 20).

    python bench/calibrate_identity.py [--n 200] [--n-perm 19]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import binom

from phonefair.probes.identity import IdentitySettings, identity_lenses
from phonefair.synth.identity import simulate_identity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-perm", type=int, default=19)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pooled, phone = [], []
    t0 = time.perf_counter()
    for rep in range(args.n):
        sim = simulate_identity(n_groups=3, speakers_per_group=6, n_phones=4, dim=6, layers=("0",), group_dims=(),
                                speaker_sd=0.8, tokens_per_phone=3, recordings=2, seed=1000 + rep)
        st = IdentitySettings(n_perm=args.n_perm, n_folds=3, per_phone=True, speaker_identity=False,
                              attribution=False, removal=False, n_boot=20, seed=rep)
        gi = identity_lenses(sim.embeddings, sim.groups, settings=st)["group_identity"]
        pooled.append(float(gi.loc[gi["phone"] == "*", "p_value"].iloc[0]))
        phone += gi.loc[gi["phone"] != "*", "p_value"].astype(float).tolist()
    p, q = np.array(pooled), np.array(phone)
    print(f"{args.n} null datasets, {args.n_perm} permutations, {time.perf_counter() - t0:.0f} s")
    for a in (0.05, 0.1, 0.2):
        lo, hi = binom.ppf(0.025, args.n, a) / args.n, binom.ppf(0.975, args.n, a) / args.n
        print(f"  alpha {a:.2f}: pooled {np.mean(p <= a + 1e-12):.3f} (95% band {lo:.3f}-{hi:.3f}), "
              f"per-phone {np.mean(q <= a + 1e-12):.3f} ({len(q)} p-values)")
    print(f"  mean p: pooled {p.mean():.3f}, per-phone {q.mean():.3f}")


if __name__ == "__main__":
    main()
