"""Time to render the report (``phonefair.report.write_report``) from an audit's tables, by figure formats.

The audit is the one of ``tests/test_report.py`` (three groups of 8 simulated speakers, two encoders of 3 and 5
layers, an acoustic-baseline-like encoder, the group-identity lens); it is computed once, then the report is rendered
``--runs`` times per format set, interleaved, each into a fresh folder, single-threaded BLAS.

    python bench/bench_report.py [--runs 3]

prints the median and range of the wall time per format set.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from phonefair.audit import Audit
from phonefair.report import write_report
from phonefair.store.base import InMemoryEmbeddings
from phonefair.synth.simulate import PRESETS, simulate

FORMATS = (("png", "svg", "pdf"), ("png",))


def build_audit() -> Audit:
    sc = PRESETS["variance"]
    for g in "ABC":
        sc = sc.with_group(g, n_speakers=8)
    sim = simulate(sc, seed=2, dim=8, layers=("0", "1", "2"))
    tok = sim.embeddings.tokens
    rng = np.random.default_rng(0)
    X = {layer: sim.embeddings.read(layer) for layer in ("0", "1", "2")}
    deeper = InMemoryEmbeddings(tok, {str(i): X[str(min(i // 2, 2))] + rng.normal(0, 0.2, X["0"].shape)
                                      for i in range(5)})
    base = InMemoryEmbeddings(tok, {"mfcc": X["0"] + rng.normal(0, 1.0, X["0"].shape)})
    audit = Audit({"enc-a": sim.embeddings, "enc-b": deeper, "acoustic": base}, sim.groups, baseline="acoustic",
                  probes={"l2_grid": [0.01], "threads": 1}, analysis={"n_perm": 199, "n_boot": 50},
                  lenses={"n_perm": 9, "n_boot": 50, "attribution": False, "removal": False,
                          "speaker_identity": False})
    audit.run()
    for enc in ("enc-a", "enc-b"):
        audit.identity(enc)
    return audit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    audit = build_audit()
    tables, summary = audit.tables(), audit.summary()
    times: dict[tuple[str, ...], list[float]] = {f: [] for f in FORMATS}
    for _ in range(args.runs):
        for fmts in FORMATS:  # interleaved, so a slow moment of the machine hits both
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                write_report(d, tables, summary, {}, figure_formats=fmts)
                times[fmts].append(time.perf_counter() - t0)
    for fmts, ts in times.items():
        print(f"{' + '.join(fmts):<16} median {np.median(ts):6.2f} s  range {min(ts):.2f}-{max(ts):.2f} s  "
              f"({len(ts)} runs)")


if __name__ == "__main__":
    main()
