"""The Audit object: five lines from numpy arrays to the headline, and the API and the TOML route agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phonefair as pf
from phonefair.synth.simulate import PRESETS, simulate


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, str]]:
    """Group C's speakers are much noisier (random error) on two layers: they are served worse."""
    sc = PRESETS["variance"]
    for g in "ABC":
        sc = sc.with_group(g, n_speakers=10)
    sim = simulate(sc, seed=4, dim=12, layers=("0", "1"))
    t = sim.tokens
    return (sim.embeddings.read("0"), sim.embeddings.read("1"), t[["speaker", "phone"]].to_numpy(),
            sim.groups.to_dict())


def test_five_lines_from_numpy_to_headline_and_report(planted, tmp_path: Path) -> None:
    X0, X1, labels, groups = planted
    # the README's example, verbatim apart from the data
    emb = pf.Embeddings.from_numpy({0: X0, 1: X1}, speaker=labels[:, 0], phone=labels[:, 1])
    audit = pf.Audit(emb, groups=groups, probes={"l2_grid": [0.01], "threads": 1}, analysis={"n_perm": 999})
    text = audit.summary_text()
    path = audit.report(tmp_path / "out")

    v = audit.verdicts().set_index("group")
    assert v.loc["C", "verdict"] == "served worse: random"
    assert not v.loc["A", "served_worse"] and not v.loc["B", "served_worse"]
    assert v.loc["C", "gap_ci_low"] > 0
    assert "C is served worse than A, B" in text and "more scattered" in text
    assert path.is_file() and "served worse: random" in path.read_text()
    assert set(audit.tables()) >= {"verdict", "group_accuracy", "speaker_accuracy", "decomposition", "mechanism"}


def test_api_and_toml_give_identical_results(tmp_path: Path) -> None:
    """The same settings through ``phonefair.run(config)`` and through ``Audit(...)`` on the extracted store."""
    from phonefair.store import EmbeddingStore
    from phonefair.synth.corpus import build_synthetic_corpus

    corpus_dir = tmp_path / "corpus"
    build_synthetic_corpus(corpus_dir, accents=["en-US", "en-GB-scotland"], speakers_per_group=3,
                           families=("m", "f"), sentences_per_speaker=2, seed=0, progress=False)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[corpus]
kind = "saved"
root = "{corpus_dir}"
[groups]
attribute = "accent"
min_speakers = 3
[[encoders]]
model = "tiny:wav2vec2"
name = "tiny"
dtype = "float32"
[baseline]
enabled = false

[lenses]
enabled = false
[probes]
folds = 3
l2_grid = [0.01]
threads = 1
[analysis]
n_perm = 499
n_boot = 50
[output]
dir = "{tmp_path / 'out'}"
[run]
seed = 7
""")
    res = pf.run(cfg, progress=False, stages=["corpus", "groups", "extract", "probe", "analyze"])
    store = EmbeddingStore(next(p for p in (tmp_path / "out" / "stores").iterdir() if p.is_dir()))
    corpus = pf.Corpus.load(tmp_path / "out" / "corpus")
    groups = corpus.speakers.set_index("speaker")["accent"]
    audit = pf.Audit(store, groups, min_speakers=3, probes={"folds": 3, "l2_grid": [0.01], "threads": 1},
                     analysis={"n_perm": 499, "n_boot": 50}, seed=7)
    api = audit.verdicts().drop(columns="encoder", errors="ignore")
    toml = res.tables["verdict"].drop(columns="encoder")
    pd.testing.assert_frame_equal(api.reset_index(drop=True), toml.reset_index(drop=True), check_dtype=False)
    pd.testing.assert_frame_equal(audit.probes()["speaker_accuracy"].reset_index(drop=True),
                                  res.tables["speaker_accuracy"].drop(columns="encoder").reset_index(drop=True),
                                  check_dtype=False)


def test_sentence_of_a_group_worse_than_one_but_above_the_average() -> None:
    """Served worse than one group yet above the others' mean: the sentence leads with the pairwise difference and
    says "above" in words, never "-2.4 points below"."""
    from phonefair.analysis.verdict import sentence

    r = {"group": "A", "served_worse": True, "gap": -0.024, "gap_ci_low": -0.07, "gap_ci_high": 0.022,
         "versus": "B", "versus_gap": 0.141, "versus_ci_low": 0.09, "versus_ci_high": 0.191, "worse_than": "B",
         "mechanism": "systematic", "layer": "3", "layers": "3"}
    s = sentence(r)
    assert s.startswith("A is served worse than B: 14.1 points below B [95% CI 9.0, 19.1]"), s
    assert "2.4 points above the other groups on average" in s and "-2.4" not in s


def test_sentence_never_says_both_and_no_excess_spread() -> None:
    """'Both shifted and more scattered' with a peak-layer share of 100 % must not also say 'no excess spread'."""
    from phonefair.analysis.verdict import sentence

    r = {"group": "A", "served_worse": True, "gap": 0.28, "gap_ci_low": 0.24, "gap_ci_high": 0.32,
         "versus": "B", "versus_gap": 0.31, "versus_ci_low": 0.27, "versus_ci_high": 0.35, "worse_than": "B, C",
         "mechanism": "systematic and random", "share_systematic": 1.0, "share_ci_low": 1.0, "share_ci_high": 1.0,
         "layer": "0", "layers": "0, 1"}
    s = sentence(r)
    assert "both shifted and more scattered" in s and "no excess spread" not in s
    assert "the extra spread is at other layers" in s
