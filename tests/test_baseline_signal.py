"""Amplification readings end to end from the signal: a gap planted in the *audio* (one accent recorded in noise)
is seen by the acoustic baseline; an encoder that passes it on reads "inherited", one that adds its own error on
top for that group reads "amplified" (issue: acoustic baselines, done-when)."""

from __future__ import annotations

import numpy as np
import pytest

from phonefair import Audit
from phonefair.extraction import extract
from phonefair.store import InMemoryEmbeddings
from phonefair.synth.corpus import build_synthetic_corpus

pytest.importorskip("soundfile")


@pytest.fixture(scope="module")
def signal_gap(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("sig")
    corpus = build_synthetic_corpus(root / "corpus", accents=("en-US", "en-GB-x-rp"), speakers_per_group=4,
                                    sentences_per_speaker=3, snr_db={"en-GB-x-rp": 0.0}, seed=0, progress=False)
    store = extract(corpus, "acoustic", store_root=root / "stores", layers=["mfcc"], dtype="float32",
                    progress=False)
    groups = corpus.speakers.set_index("speaker")["accent"]
    return store, groups


def _encoder(store, groups, extra_noise: float):  # type: ignore[no-untyped-def]
    """An 'encoder' that keeps the features (plus mild noise for everyone) and, with ``extra_noise``, adds error to
    the noisy group's tokens only."""
    rng = np.random.default_rng(1)
    X = np.asarray(store.read("mfcc", np.arange(len(store.tokens))), dtype=np.float64)
    sd = X.std(0, keepdims=True)
    X = X + rng.normal(size=X.shape) * 0.05 * sd
    noisy = store.tokens["speaker"].map(groups).to_numpy() == "en-GB-x-rp"
    X[noisy] += rng.normal(size=(int(noisy.sum()), X.shape[1])) * extra_noise * sd
    return InMemoryEmbeddings(store.tokens, {"0": X.astype(np.float32)})


@pytest.mark.parametrize("extra_noise, reading", [(0.0, "inherited"), (1.5, "amplified")])
def test_signal_gap_is_inherited_or_amplified(signal_gap, extra_noise: float, reading: str) -> None:  # type: ignore[no-untyped-def]
    store, groups = signal_gap
    audit = Audit({"enc": _encoder(store, groups, extra_noise), "acoustic": store}, groups, baseline="acoustic",
                  min_speakers=2, probes={"folds": 4, "l2_grid": [0.01], "threads": 1}, analysis={"n_perm": 999},
                  seed=0)
    head = audit.amplification("enc").headline().set_index("group")
    row = head.loc["en-GB-x-rp"]
    assert row["baseline_gap"] > 0  # the signal has the gap
    assert row["reading"] == reading, head
