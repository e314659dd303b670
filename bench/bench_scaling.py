"""Cost growth of the typology (served-worse mechanism tests included) in speakers and in tokens.

Times :func:`phonefair.analysis.analyze` on planted-truth embeddings (one group more variable, one shifted) at
250 / 500 / 1,000 / 2,000 speakers (4 groups, fixed tokens per speaker) and at 1×, 2×, 4× tokens per speaker (500
speakers), with default permutation counts, and fits the log–log growth exponent (target ≤ 1.1: the permutation
null is linear in speakers; no speaker × speaker matrix). Runs are interleaved (every size once per round) and the
median over rounds is reported, with the range, because this machine is shared.

    python bench/bench_scaling.py [--rounds 3] [--dim 64] [--phones 20] [--threads 1] [--out scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd


def _data(n_speakers: int, tokens_per_phone: int, dim: int, phones: int, seed: int):  # type: ignore[no-untyped-def]
    from phonefair.audit.design import Design
    from phonefair.synth.simulate import GroupParams, Scenario, simulate

    per = n_speakers // 4
    groups = {g: GroupParams(n_speakers=per, tokens_per_phone=tokens_per_phone) for g in "ABCD"}
    groups["C"] = GroupParams(n_speakers=per, tokens_per_phone=tokens_per_phone, speaker_sd=0.8, noise_sd=1.3)
    groups["D"] = GroupParams(n_speakers=per, tokens_per_phone=tokens_per_phone, shift=0.8, shift_mode="towards")
    sim = simulate(Scenario(groups=groups, n_phones=phones, dim=dim, layers=("0",)), seed=seed)
    design = Design.build(sim.embeddings, sim.groups, min_speakers=2, seed=seed)
    dec = pd.DataFrame([{"group": g, "served_worse": g in "CD", "worse_than": "A, B" if g in "CD" else "",
                         "layers": "0" if g in "CD" else "", "peak_layer": "0"} for g in "ABCD"])
    return sim.embeddings, design, SimpleNamespace(decisions=dec)


def _time(n_speakers: int, tpp: int, dim: int, phones: int) -> tuple[float, int]:
    from phonefair.analysis.typology import analyze
    from phonefair.settings import AnalysisSettings

    emb, design, served = _data(n_speakers, tpp, dim, phones, seed=n_speakers + tpp)
    t = time.perf_counter()
    analyze(emb, design, AnalysisSettings(), served=served, seed=0)
    return time.perf_counter() - t, len(emb.tokens)


def _exponent(x: list[float], y: list[float]) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--phones", type=int, default=20)
    ap.add_argument("--speakers", default="250,500,1000,2000")
    ap.add_argument("--token-mult", default="1,2,4")
    ap.add_argument("--base-tpp", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    speakers = [int(x) for x in a.speakers.split(",")]
    mults = [int(x) for x in a.token_mult.split(",")]
    runs = [("speakers", s, a.base_tpp) for s in speakers] + [("tokens", 500, a.base_tpp * m) for m in mults]
    times: dict[tuple[str, int, int], list[float]] = {r: [] for r in runs}
    ntok: dict[tuple[str, int, int], int] = {}
    for _ in range(a.rounds):
        for r in runs:  # interleaved: every size once per round
            sec, n = _time(r[1], r[2], a.dim, a.phones)
            times[r].append(sec)
            ntok[r] = n
    rows = [{"axis": r[0], "speakers": r[1], "tokens_per_phone": r[2], "tokens": ntok[r],
             "median_s": float(np.median(v)), "min_s": float(np.min(v)), "max_s": float(np.max(v))}
            for r, v in times.items()]
    df = pd.DataFrame(rows)
    sp = df[df["axis"] == "speakers"]
    tk = df[df["axis"] == "tokens"]
    out = {"table": rows, "threads": a.threads, "dim": a.dim, "phones": a.phones, "rounds": a.rounds,
           "exponent_speakers": _exponent(sp["speakers"].tolist(), sp["median_s"].tolist()),
           "exponent_tokens": _exponent(tk["tokens"].tolist(), tk["median_s"].tolist())}
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"growth exponent in speakers: {out['exponent_speakers']:.2f}   in tokens: {out['exponent_tokens']:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
