"""Calibration of the verdicts end to end (probes → served worse? → why?) on planted-truth embeddings.

For every scenario, ``--datasets`` datasets are drawn from :func:`phonefair.simulate`, audited with
:class:`phonefair.Audit` (cross-fitted probes, step-down max-T attribution, mechanism tests), and compared with the
planted truth:

* **false verdict (family-wise)**: some group is called *served worse* although nothing was planted in it
  (null and confound scenarios: any verdict at all), or a planted group gets the wrong mechanism;
* **right**: exactly the planted groups are called served worse, each with its planted mechanism
  (systematic / random / systematic and random), and no innocent group is named.

The standardised effect sizes are printed per scenario: the shift in units of the token spread
(``‖δ‖ / sqrt(D (σ²_b + σ²_w))``), the spread ratio, and the realised accuracy gap in units of the speaker-level
SD (Cohen's d of the gap).

    python bench/calibrate_verdicts.py --datasets 200 --jobs 2 [--scenarios null,shift,...] [--out table.csv]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("OMP_NUM_THREADS", "1")


def scenarios() -> dict[str, dict[str, Any]]:
    from phonefair.synth.simulate import GroupParams, Scenario

    def groups(sizes: dict[str, int], **changes: dict[str, Any]) -> dict[str, GroupParams]:
        out = {g: GroupParams(n_speakers=n, tokens_per_phone=6) for g, n in sizes.items()}
        for g, ch in changes.items():
            out[g] = replace(out[g], **ch)
        return out

    three = {"A": 12, "B": 12, "C": 12}
    base = dict(n_phones=24, dim=64, phone_sep=0.35, layers=("0", "1", "2"))
    S = Scenario
    sys_ = {"systematic"}
    rnd = {"random"}
    # a random-direction shift separates the shifted group's phone clusters: it may be served worse (systematic)
    # or better; either way it is named (as served worse, or as a representational difference) and nobody else is
    drift = {"systematic", "representational"}
    towards = {"shift_mode": "towards"}
    return {
        # ---- nothing planted: any "served worse" is a false verdict
        "null": dict(sc=S(groups=groups(three), **base), truth={}),
        "null-unbalanced-18/9/7": dict(sc=S(groups=groups({"A": 18, "B": 9, "C": 7}), **base), truth={}),
        "null-2-groups": dict(sc=S(groups=groups({"A": 12, "B": 12}), **base), truth={}),
        "null-5-groups": dict(sc=S(groups=groups({g: 8 for g in "ABCDE"}), **base), truth={}),
        "null-13-layers": dict(sc=S(groups=groups(three), **{**base, "layers": tuple(map(str, range(13)))}),
                               truth={}),
        "count-confound": dict(sc=S(groups=groups(three, C={"tokens_per_phone": 2}), **base), truth={}),
        "frequency-confound": dict(sc=S(groups=groups(three, C={"phone_weights": tuple(np.linspace(3, 0.3, 24))}),
                                        **base), truth={}),
        # ---- planted effects that cost accuracy
        "shift-towards-neighbours": dict(sc=S(groups=groups(three, C={"shift": 1.0, **towards}), **base),
                                         truth={"C": sys_}),
        "shift-6-of-24-phones": dict(sc=S(groups=groups(three, C={"shift": 2.0, "shift_phones": 6 / 24, **towards}),
                                          **base), truth={"C": sys_}),
        "variance": dict(sc=S(groups=groups(three, C={"speaker_sd": 0.9, "noise_sd": 1.5}), **base),
                         truth={"C": rnd}),
        "both": dict(sc=S(groups=groups(three, C={"shift": 1.0, "speaker_sd": 0.9, "noise_sd": 1.5, **towards}),
                          **base), truth={"C": {"systematic and random"}}),
        "two-groups-two-effects-of-3": dict(sc=S(groups=groups(three, A={"shift": 1.0, **towards},
                                                               B={"speaker_sd": 0.9, "noise_sd": 1.5}), **base),
                                            truth={"A": sys_, "B": rnd}),
        "two-groups-two-effects-of-4": dict(sc=S(groups=groups({g: 10 for g in "ABCD"}, C={"shift": 1.0, **towards},
                                                               D={"speaker_sd": 0.9, "noise_sd": 1.5}), **base),
                                            truth={"C": sys_, "D": rnd}),
        "reference-is-shifted": dict(sc=S(groups=groups(three, A={"shift": 1.0, **towards}), **base),
                                     truth={"A": sys_}, reference="A"),
        "unbalanced-small-group-shifted": dict(sc=S(groups=groups({"A": 18, "B": 9, "C": 7},
                                                                  C={"shift": 1.2, **towards}), **base),
                                               truth={"C": sys_}),
        "effect-in-late-layers": dict(sc=S(groups=groups(three, C={"shift": 1.0, **towards}),
                                           **{**base, "layers": tuple(map(str, range(6))),
                                              "layer_shift": (0, 0, 0, 1, 1, 1)}),
                                      truth={"C": sys_}),
        "dim-256": dict(sc=S(groups=groups(three, C={"shift": 1.0, **towards}),
                             **{**base, "dim": 256, "phone_sep": 0.18}), truth={"C": sys_}),
        # ---- random-direction shifts (issue case 1): named, innocents spared
        "random-direction-shift": dict(sc=S(groups=groups(three, C={"shift": 1.5}), **base), truth={"C": drift}),
        "random-shift-4-of-24": dict(sc=S(groups=groups(three, C={"shift": 3.0, "shift_phones": 4 / 24}), **base),
                                     truth={"C": drift}),
    }


def effect_sizes(spec: dict[str, Any]) -> dict[str, float]:
    sc = spec["sc"]
    out = {}
    for g, gp in sc.groups.items():
        ref = next(iter(p for h, p in sc.groups.items() if h not in spec["truth"]), gp)
        tot = np.sqrt(sc.dim * (ref.speaker_sd**2 + ref.noise_sd**2))
        if gp.shift:
            out[f"shift_{g}"] = gp.shift / tot
        if (gp.speaker_sd, gp.noise_sd) != (ref.speaker_sd, ref.noise_sd):
            out[f"spread_ratio_{g}"] = (gp.speaker_sd**2 + gp.noise_sd**2) / (ref.speaker_sd**2 + ref.noise_sd**2)
    return out


def one(args: tuple[str, int, int]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from phonefair import Audit
    from phonefair.synth.simulate import simulate

    name, seed, n_perm = args
    spec = scenarios()[name]
    sim = simulate(spec["sc"], seed=seed)
    t0 = time.perf_counter()
    audit = Audit(sim.embeddings, sim.groups, reference=spec.get("reference"), min_speakers=2,
                  probes={"l2_grid": [1e-3, 1e-2, 1e-1], "threads": 1},
                  analysis={"n_perm": n_perm, "n_boot": 200}, seed=seed)
    v = audit.verdicts().set_index("group")
    flagged = {g: str(v.loc[g, "mechanism"]) for g in v.index if v.loc[g, "served_worse"]}
    truth = spec["truth"]
    innocent = set(flagged) - set(truth)
    wrong_mech = {g for g in flagged if g in truth and flagged[g] not in truth[g]}

    def named(g: str) -> bool:  # the planted group gets an accepted outcome
        if g in flagged:
            return flagged[g] in truth[g]
        rep = v.loc[g, "representational"]
        return "representational" in truth[g] and isinstance(rep, str) and "shifted" in rep
    # realised effect: gap of each planted group at its peak layer in units of the speaker SD
    sa = audit.probes()["speaker_accuracy"]
    d_real = {}
    for g in truth:
        best = None
        for layer, d in sa.groupby("layer"):
            a = d.loc[d["group"] == g, "standardized_accuracy"]
            b = d.loc[d["group"] != g, "standardized_accuracy"]
            sd = np.sqrt((a.var() + b.var()) / 2)
            val = (b.mean() - a.mean()) / sd if sd > 0 else np.nan
            best = val if best is None or val > best else best
        d_real[g] = best
    return {"scenario": name, "seed": seed, "false_verdict": bool(innocent or wrong_mech),
            "right": not innocent and not wrong_mech and all(named(g) for g in truth), "flagged": flagged,
            "d_gap": float(np.nanmean(list(d_real.values()))) if d_real else np.nan,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--n-perm", type=int, default=1999)
    ap.add_argument("--scenarios", default="all")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    names = list(scenarios()) if a.scenarios == "all" else a.scenarios.split(",")
    work = [(n, s, a.n_perm) for n in names for s in range(a.datasets)]
    if a.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(a.jobs) as ex:
            rows = list(ex.map(one, work, chunksize=1))
    else:
        rows = [one(w) for w in work]
    df = pd.DataFrame(rows)
    out = []
    for name in names:
        d = df[df["scenario"] == name]
        n = len(d)
        fv = d["false_verdict"].mean()
        lo, hi = _wilson(int(d["false_verdict"].sum()), n)
        out.append({"scenario": name, "datasets": n, "false_verdict_rate": fv, "fv_ci_low": lo, "fv_ci_high": hi,
                    "right_rate": d["right"].mean(), "d_gap": d["d_gap"].median(),
                    **{k: round(v, 3) for k, v in effect_sizes(scenarios()[name]).items()},
                    "median_s": d["seconds"].median()})
    table = pd.DataFrame(out)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if a.out:
        table.to_csv(a.out, index=False)
        df.to_csv(a.out.replace(".csv", "-datasets.csv"), index=False)


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z**2 / n
    c = (p + z**2 / (2 * n)) / den
    h = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    return c - h, c + h


if __name__ == "__main__":
    main()
