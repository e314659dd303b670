"""Calibration of the typology on simulator scenarios (the table in docs/typology.md comes from this script).

For each scenario, ``n`` independent datasets (3 groups × 12 speakers, 10 phones, 16 dims: the simulator presets)
are analysed twice: against the reference group ``A`` and against the default median-group consensus. Reported:

* rejection rates of the unadjusted tests at 5 % (calibration of the p-values), with the 95 % binomial band
  around 5 % for ``n`` datasets;
* verdict rates for group C (and for the innocent groups A/B);
* magnitude recovery: mean estimated phone-averaged squared shift of C vs the truth (reference mode, raw space),
  CI coverage, and the mean between/within-speaker variance of C vs the truth.

    python bench/calibrate_typology.py [--n-null 200] [--n-power 50] [--n-perm 199] [--out table.md]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom

from phonefair.analysis import analyze
from phonefair.synth.simulate import simulate

NULL_LIKE = ("null", "count_confound", "frequency_confound")
POWER = ("shift", "sparse_shift", "variance", "both")
EXPECTED = {"null": "no detectable disadvantage", "count_confound": "no detectable disadvantage",
            "frequency_confound": "no detectable disadvantage", "shift": "systematic-dominant",
            "sparse_shift": "systematic-dominant", "variance": "random-dominant", "both": "both"}


def one(scenario: str, seed: int, n_perm: int, n_boot: int) -> dict[str, Any]:
    sim = simulate(scenario, seed=seed)
    kw = {"n_perm": n_perm, "n_boot": n_boot, "progress": False, "seed": seed}
    ref = analyze(sim.embeddings, sim.groups, reference="A", **kw).tables()
    con = analyze(sim.embeddings, sim.groups, **kw).tables()
    out: dict[str, Any] = {}
    st = ref["shift_tests"]
    for space in ("raw", "lda"):
        c = st[(st["space"] == space) & (st["group"] == "C")]
        out[f"ref_{space}_shift_star_C"] = c[c["phone"] == "*"]["p_value"].item()
        out[f"ref_{space}_shift_phone_C"] = c[c["phone"] != "*"]["p_value"].to_numpy()
    vt = ref["variance_tests"]
    out["ref_var_C"] = vt[(vt["space"] == "lda") & (vt["group"] == "C")]["p_value"].item()
    cst = con["shift_tests"]
    out["con_shift_star"] = cst[(cst["space"] == "lda") & (cst["phone"] == "*")].set_index("group")["p_value"]
    cvt = con["variance_tests"]
    out["con_var"] = cvt[cvt["space"] == "lda"].set_index("group")["p_value"]
    out["verdict"] = con["verdict"].set_index("group")["verdict"]
    out["verdict_ref"] = ref["verdict"].set_index("group")["verdict"]
    d = ref["decomposition"]
    row = d[(d["space"] == "raw") & (d["group"] == "C") & (d["phone"] == "*")].iloc[0]
    truth = sim.truth.shift_table()
    out["shift_true"] = truth[truth["group"] == "C"]["shift_sq"].mean()
    out["shift_est"] = row["shift_sq"]
    out["shift_cover"] = row["shift_ci_low"] <= out["shift_true"] <= row["shift_ci_high"]
    vtab = sim.truth.variance_table().set_index("group")
    out["between_est"], out["within_est"] = row["between_speaker_var"], row["within_speaker_var"]
    out["between_true"], out["within_true"] = vtab.loc["C", "between_speaker_var"], vtab.loc["C", "within_speaker_var"]
    return out


def band(n: int, p: float = 0.05) -> tuple[float, float]:
    return binom.ppf(0.025, n, p) / n, binom.ppf(0.975, n, p) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-null", type=int, default=200)
    ap.add_argument("--n-power", type=int, default=50)
    ap.add_argument("--n-perm", type=int, default=199)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    t0 = time.time()
    for scenario in (*NULL_LIKE, *POWER):
        n = args.n_null if scenario in NULL_LIKE else args.n_power
        res = [one(scenario, 10_000 + s, args.n_perm, args.n_boot) for s in range(n)]
        agg: dict[str, Any] = defaultdict(float)
        agg["scenario"], agg["n"] = scenario, n
        agg["ref_raw_shift_C"] = np.mean([r["ref_raw_shift_star_C"] <= 0.05 for r in res])
        agg["ref_lda_shift_C"] = np.mean([r["ref_lda_shift_star_C"] <= 0.05 for r in res])
        agg["ref_raw_phone_C"] = np.mean(np.concatenate([r["ref_raw_shift_phone_C"] for r in res]) <= 0.05)
        agg["ref_var_C"] = np.mean([r["ref_var_C"] <= 0.05 for r in res])
        agg["con_shift_C"] = np.mean([r["con_shift_star"]["C"] <= 0.05 for r in res])
        agg["con_shift_AB"] = np.mean([(r["con_shift_star"][["A", "B"]] <= 0.05).mean() for r in res])
        agg["con_var_C"] = np.mean([r["con_var"]["C"] <= 0.05 for r in res])
        agg["verdict_C_expected"] = np.mean([r["verdict"]["C"] == EXPECTED[scenario] for r in res])
        agg["verdict_AB_flagged"] = np.mean([(r["verdict"][["A", "B"]] != "no detectable disadvantage").mean()
                                             for r in res])
        agg["shift_true"] = np.mean([r["shift_true"] for r in res])
        agg["shift_est"] = np.mean([r["shift_est"] for r in res])
        agg["shift_ci_cover"] = np.mean([r["shift_cover"] for r in res])
        agg["between_true"] = res[0]["between_true"]
        agg["between_est"] = np.mean([r["between_est"] for r in res])
        agg["within_true"] = res[0]["within_true"]
        agg["within_est"] = np.mean([r["within_est"] for r in res])
        rows.append(dict(agg))
        print(f"{scenario}: {n} datasets, {time.time() - t0:.0f}s", flush=True)
    df = pd.DataFrame(rows)
    lo, hi = band(args.n_null)
    md = [f"Binomial 95 % band around 5 % for {args.n_null} datasets: [{lo:.3f}, {hi:.3f}]; "
          f"n_perm={args.n_perm}, n_boot={args.n_boot}; total {time.time() - t0:.0f}s.", "",
          df.to_markdown(index=False, floatfmt=".3f")]
    text = "\n".join(md)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
