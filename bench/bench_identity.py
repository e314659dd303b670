"""Benchmark: the identity lenses on a demo-sized planted dataset, and the batched permutation probes vs scikit-learn.

Dataset (``phonefair.synth.identity.simulate_identity``): 4 groups x 12 speakers, 30 phones x 6 tokens, 6 recordings
per speaker, dim 32, 5 layers -- the size of the demo (tiny random wav2vec2, 48 synthetic speakers).

1. ``identity_lenses`` with the given settings (default: ``IdentitySettings()``), ``--repeats`` times: wall and CPU
   time, median and range, with the per-stage breakdown of the last run.
2. The pooled group-identity permutation test of one layer (``--perm`` labellings x 3 folds), fitted by
   :func:`phonefair.probes.identity.group_identity_layer` (one batched call) and by a loop of scikit-learn
   ``LogisticRegression`` fits with the same objective, folds and labellings; interleaved, with the largest
   difference in held-out predictions.

    python bench/bench_identity.py [--repeats 3] [--threads 2] [--perm 99] [--settings "n_perm=49,per_phone=True"]
                                   [--scale demo|large] [--device cpu|cuda]

``--scale large`` is TIMIT-sized (640 speakers in 8 groups, 768 dims, 3 layers; 142k tokens).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from phonefair.probes.identity import (
    GroupDesign,
    IdentitySettings,
    balanced_accuracy,
    cell_means,
    group_design,
    group_identity_layer,
    identity_lenses,
    prepare_identity_data,
)
from phonefair.synth.identity import simulate_identity


def demo_sized(seed: int = 0) -> Any:
    return simulate_identity(n_groups=4, speakers_per_group=12, n_phones=30, tokens_per_phone=6, recordings=6,
                             dim=32, layers=("0", "1", "2", "3", "4"), group_dims=(3, 9, 17), group_norm=0.8,
                             layer_group=(0.2, 0.6, 1.0, 0.7, 0.4), layer_speaker=(1.0, 0.8, 0.6, 0.4, 0.2),
                             speaker_sd=0.5, phone_sep=0.8, seed=seed)


def large(seed: int = 0) -> Any:
    """TIMIT-like: 8 groups x 80 speakers, 37 phones x 6 tokens, 10 recordings, 768 dims, 3 layers."""
    return simulate_identity(n_groups=8, speakers_per_group=80, n_phones=37, tokens_per_phone=6, recordings=10,
                             dim=768, layers=("0", "6", "12"), group_dims=tuple(range(0, 768, 64)), group_norm=0.8,
                             layer_group=(0.3, 1.0, 0.5), layer_speaker=(1.0, 0.6, 0.2), speaker_sd=0.3,
                             phone_sep=0.3, seed=seed)


def _parse(spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        k, v = item.split("=")
        out[k] = True if v == "True" else False if v == "False" else (float(v) if "." in v else int(v)) \
            if v.replace(".", "").isdigit() else v
    return out


def _fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):6.2f} s  (range {min(xs):.2f}-{max(xs):.2f})"


def bench_lenses(sim: Any, settings: IdentitySettings, repeats: int) -> None:
    walls, cpus = [], []
    res = None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        res = identity_lenses(sim.embeddings, sim.groups, settings=settings)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    assert res is not None
    print(f"identity_lenses  wall {_fmt(walls)}   cpu {_fmt(cpus)}")
    tm = res.provenance["timing_s"]
    stages: dict[str, float] = {}
    for per in tm["per_layer"].values():
        for k, v in per.items():
            stages[k] = stages.get(k, 0.0) + v
    print("  last run, wall per stage (all layers): " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
          + f", removal {tm['removal']:.2f} s")
    gi = res["group_identity"]
    print("  pooled group-ID balanced accuracy per layer: "
          + ", ".join(f"{r.layer}: {r.balanced_accuracy:.2f} (p={r.p_value:.3f})"
                      for r in gi[gi["phone"] == "*"].itertuples()))


def sklearn_pooled(z: np.ndarray, cell_speaker: np.ndarray, design: GroupDesign, l2: float) -> np.ndarray:
    """The same cross-fitted permutation probes, one scikit-learn fit each (C = 1 / (l2 n) on standardised rows)."""
    from sklearn.linear_model import LogisticRegression

    correct = np.zeros((len(z), design.labels.shape[0]))
    for b in range(design.labels.shape[0]):
        lab, fold = design.labels[b][cell_speaker], design.folds[b][cell_speaker]
        for k in range(design.n_folds):
            tr, te = fold != k, fold == k
            mu, sd = z[tr].mean(0), z[tr].std(0)
            sd[sd == 0] = 1.0
            clf = LogisticRegression(C=1.0 / (l2 * tr.sum()), max_iter=1000, tol=1e-6)
            clf.fit((z[tr] - mu) / sd, lab[tr])
            correct[te, b] = clf.predict((z[te] - mu) / sd) == lab[te]
    return correct


def bench_vs_sklearn(sim: Any, n_perm: int, repeats: int) -> None:
    st = IdentitySettings(n_perm=n_perm)
    data = prepare_identity_data(sim.embeddings, sim.groups)
    design = group_design(data, st)
    z, _ = cell_means(data, sim.embeddings.read("2", data.rows))
    ours, theirs = [], []
    for _ in range(repeats):  # interleaved
        t = time.perf_counter()
        c_ours = group_identity_layer(z, data, design, st, layer="2", eligible_phones=[],
                                      device=torch.device("cpu"))["*"]
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        c_sk = sklearn_pooled(z, data.cell_speaker, design, st.l2)
        theirs.append(time.perf_counter() - t)
    S = len(data.speakers)

    def bacc(c: np.ndarray) -> np.ndarray:
        tot = np.bincount(data.cell_speaker, minlength=S)[:, None]
        sc = np.stack([np.bincount(data.cell_speaker, weights=c[:, b], minlength=S) for b in range(c.shape[1])], 1)
        return balanced_accuracy(sc / tot, design.labels, data.n_groups)

    a, b = bacc(c_ours), bacc(c_sk)
    P = design.labels.shape[0] * design.n_folds
    print(f"pooled group probe, one layer, {design.labels.shape[0]} labellings x {design.n_folds} folds = {P} probes")
    print(f"  batched (fit_batched, one call): {_fmt(ours)}")
    print(f"  scikit-learn loop ({P} fits):    {_fmt(theirs)}")
    print(f"  cells predicted differently: {(c_ours != c_sk).mean():.4f}; "
          f"largest balanced-accuracy difference over labellings: {np.abs(a - b).max():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--perm", type=int, default=99, help="labellings - 1 for the scikit-learn comparison")
    ap.add_argument("--settings", default="", help='IdentitySettings overrides, e.g. "n_perm=49,per_phone=True"')
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--scale", choices=("demo", "large"), default="demo")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sim = demo_sized() if args.scale == "demo" else large()
    tok = sim.embeddings.tokens
    print(f"dataset: {tok['speaker'].nunique()} speakers, {tok['phone'].nunique()} phones, {len(tok)} tokens, "
          f"dim {sim.embeddings.read('0', [0]).shape[1]}, layers {sim.embeddings.layers}; torch threads "
          f"{torch.get_num_threads()}")
    settings = IdentitySettings(**{"device": args.device, **_parse(args.settings)})
    print(f"settings: {args.settings or 'defaults'}")
    bench_lenses(sim, settings, args.repeats)
    if not args.skip_sklearn:
        bench_vs_sklearn(sim, args.perm, args.repeats)


if __name__ == "__main__":
    main()
