"""Acoustic baseline feature variants on a corpus: extraction speed and phone-probe accuracy per group.

Compares the shipped definition (log-mel; MFCC + Δ + ΔΔ, no CMN) with per-utterance CMN and with a ±4-frame
context window of the 13 MFCCs instead of deltas: the numbers behind the choices in docs/baselines.md. The probe is
scikit-learn's multinomial logistic regression on standardised features, trained on *all* training speakers
(phonefair's size-matched pooled probe trains on fewer; its numbers are in the docs too), test speakers from
``phonefair.groups.split_speakers(test_fraction, seed)``.

    phonefair synth demo-corpus --speakers-per-group 6 --sentences-per-speaker 6   # + the demo's 5 dB SNR, see docs
    python bench/baseline_features.py demo-corpus [--store-root /tmp/stores] [--threads 1]

Needs ``pip install -e '.[bench]'`` (scikit-learn).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", help="a saved corpus directory (phonefair synth / validate --kind saved)")
    ap.add_argument("--attribute", default="accent")
    ap.add_argument("--store-root", default=None)
    ap.add_argument("--test-fraction", type=float, default=0.34)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(args.threads)

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from phonefair.corpus.schema import Corpus
    from phonefair.encoders.acoustic import AcousticEncoder
    from phonefair.extraction import extract
    from phonefair.groups import split_speakers

    class MfccContext(AcousticEncoder):
        """Experiment only: the 13 MFCCs of frames t-k … t+k stacked (edge frames repeated) instead of deltas."""

        def __init__(self, k: int, **kw: Any) -> None:
            super().__init__(layers="mfcc", **kw)
            self.k = k

        def layer_dims(self) -> dict[str, int]:
            return {"mfcc": self.n_mfcc * (2 * self.k + 1)}

        def _mfcc(self, logmel: np.ndarray) -> np.ndarray:
            from scipy.fft import dct

            c = dct(logmel, type=2, norm="ortho", axis=1)[:, : self.n_mfcc]
            t = len(c)
            idx = np.clip(np.arange(t)[:, None] + np.arange(-self.k, self.k + 1)[None, :], 0, t - 1)
            return c[idx].reshape(t, -1)

        def identity(self) -> dict[str, Any]:
            return {**super().identity(), "context_frames": self.k, "deltas": False}

    corpus = Corpus.load(args.corpus)
    groups = corpus.speakers.set_index("speaker")[args.attribute].astype(str)
    split = split_speakers(groups, test_fraction=args.test_fraction, seed=args.seed)
    variants = {"default": AcousticEncoder(), "cmn": AcousticEncoder(cmn=True), "mfcc ±4 frames": MfccContext(4)}
    root = args.store_root or tempfile.mkdtemp(prefix="phonefair-baseline-")
    hours = corpus.hours
    print(f"corpus {args.corpus}: {len(corpus.phones)} phones, {hours * 60:.1f} min audio; test fraction "
          f"{args.test_fraction}, seed {args.seed}; threads {args.threads}")
    for name, enc in variants.items():
        t0 = time.perf_counter()
        store = extract(corpus, enc, store_root=root, dtype="float32", progress=False)
        took = time.perf_counter() - t0
        tok = store.tokens
        ok = (tok["phone"].notna() & (tok["phone"] != "sil")).to_numpy()
        side = tok["speaker"].astype(str).map(split).to_numpy()
        tr, te = ok & (side == "train"), ok & (side == "test")
        y = tok["phone"].astype(str).to_numpy()
        g = tok["speaker"].astype(str).map(groups).to_numpy()
        for layer in store.layers:
            x = store.read(layer)
            sc = StandardScaler().fit(x[tr])
            for c in (0.1, 1.0):
                model = LogisticRegression(C=c, max_iter=3000).fit(sc.transform(x[tr]), y[tr])
                hit = model.predict(sc.transform(x[te])) == y[te]
                per = "  ".join(f"{k} {hit[g[te] == k].mean():.3f}" for k in sorted(set(g[te])))
                print(f"{name:<15} {layer:<7} dim {x.shape[1]:>3}  C={c:<4} acc {hit.mean():.3f}  | {per}")
        print(f"{name:<15} extraction {took:.1f} s for {hours * 60:.1f} min of audio = {took / hours:.0f} s per "
              f"audio hour (≈0 when the store was already there)", flush=True)


if __name__ == "__main__":
    main()
