"""Real end-to-end workflows on a very small synthetic corpus and tiny random encoders (no fakes):
static sharding + merge, fairness fine-tuning, the full pipeline with its cache, and the before/after comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phonefair
from phonefair.pipeline import run
from phonefair.cli import main
from phonefair.store import EmbeddingStore
from phonefair.synth.corpus import build_synthetic_corpus

BASE = """
[corpus]
kind = "saved"
root = "{corpus}"

[groups]
attribute = "accent"
min_speakers = 3

[split]
use_corpus_split = false
test_fraction = 0.34

[baseline]
enabled = false

[lenses]
enabled = false

[[encoders]]
model = "tiny:wav2vec2"
name = "tiny"
dtype = "float32"
batch_size = 2

[probes]
folds = 2
l2_grid = [0.01]
threads = 1

[analysis]
n_perm = 99
n_boot = 20

[output]
dir = "{out}"
"""


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("synth")
    build_synthetic_corpus(d, accents=["en-US", "en-GB-scotland"], speakers_per_group=4, families=("m", "f"),
                           sentences_per_speaker=2, seed=0, progress=False)
    return d


def write_config(tmp: Path, corpus: Path, extra: str = "", name: str = "run.toml") -> Path:
    p = tmp / name
    p.write_text(BASE.format(corpus=corpus, out=tmp / "out") + extra)
    return p


def test_shard_merge_equals_local_and_is_reused(corpus_dir: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, corpus_dir)
    for i in range(2):
        assert main(["--quiet", "extract", str(cfg), "--shard", str(i), "--num-shards", "2"]) == 0
    assert main(["--quiet", "merge", str(cfg), "--num-shards", "2"]) == 0
    merged_dir = next(p for p in (tmp_path / "out" / "stores").iterdir() if p.is_dir())
    merged = EmbeddingStore(merged_dir)
    # a local extraction into a fresh root gives bit-identical arrays
    local_cfg = write_config(tmp_path, corpus_dir, name="local.toml")
    local_cfg.write_text(local_cfg.read_text().replace(str(tmp_path / "out"), str(tmp_path / "local")))
    assert main(["--quiet", "extract", str(local_cfg)]) == 0
    local = EmbeddingStore(next(p for p in (tmp_path / "local" / "stores").iterdir() if p.is_dir()))
    assert merged.key == local.key and merged.layers == local.layers
    for layer in local.layers:
        np.testing.assert_array_equal(merged.read(layer), local.read(layer))
    # the pipeline's extract stage finds the merged store and does not run the model again
    res = run(cfg, stages=["corpus", "groups", "extract"], progress=False)
    assert "extract:tiny" in res.stages_run  # the stage marker is new, ...
    assert {p.name for p in (tmp_path / "out" / "stores").iterdir() if p.is_dir()} == {merged_dir.name}  # ... the store is not
    assert main(["--quiet", "extract", str(cfg), "--shard", "2", "--num-shards", "2"]) == 2  # bad index


def test_full_pipeline_cache_and_comparison_after_finetuning(corpus_dir: Path, tmp_path: Path) -> None:
    finetune = """
[finetune]
model = "tiny:wav2vec2"
variants = ["ctc", "adversarial"]
steps = 3
batch_size = 4
n_boot = 50
progress = false
"""
    cfg = write_config(tmp_path, corpus_dir, finetune.replace("[finetune]", "[finetune]"))
    cfg.write_text(cfg.read_text().replace("min_speakers = 3", "min_speakers = 2").replace(
        "test_fraction = 0.34", "test_fraction = 0.5"))
    assert main(["--quiet", "finetune", str(cfg)]) == 0
    per = pd.read_csv(tmp_path / "out" / "tables" / "finetune_per.csv")
    assert set(per["variant"]) == {"ctc", "adversarial"}
    assert set(per["group"]) == {"en-US", "en-GB-scotland"}
    assert (per["per"] >= 0).all() and np.isfinite(per["per"]).all()  # PER may exceed 1 (insertions)
    model_dir = tmp_path / "out" / "finetune" / "adversarial" / "model"
    assert (model_dir / "config.json").is_file()

    # audit the original and the fine-tuned encoder side by side
    two = cfg.read_text() + f"""
[[encoders]]
model = "{model_dir}"
name = "tiny-adv"
dtype = "float32"
batch_size = 2
"""
    cfg.write_text(two.replace("[finetune]", "[finetune]", 1))
    assert main(["--quiet", "compare", str(cfg), "--before", "tiny", "--after", "tiny-adv"]) == 0
    out = tmp_path / "out"
    html = (out / "report.html").read_text()
    assert "tiny-adv" in html and "<img" in html and "https://" not in html
    assert 'id="comparison"' in html and "Δ accuracy (pp)" in html and "Verdict transitions" in html
    assert (out / "tables" / "change_headline.tex").is_file() and not (out / "comparison.html").exists()
    sa = pd.read_parquet(out / "tables" / "speaker_accuracy.parquet")
    assert set(sa["encoder"]) == {"tiny", "tiny-adv"} and sa["accuracy"].between(0, 1).all()
    verdict = pd.read_parquet(out / "tables" / "verdict.parquet")
    assert set(verdict["group"]) == {"en-US", "en-GB-scotland"}
    change = pd.read_parquet(out / "tables" / "change_accuracy.parquet")
    assert {"accuracy_before", "accuracy_after", "change", "ci_low", "ci_high", "after"} <= set(change.columns)
    assert (out / "tables" / "verdict_transitions.parquet").is_file()
    # the corpus's problems and the typology's exclusions are separate tables (neither replaces the other)
    problems = pd.read_parquet(out / "tables" / "problems.parquet")
    assert {"severity", "file", "message"} <= set(problems.columns)
    assert (out / "tables" / "analysis_problems.parquet").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["encoders"]) == {"tiny", "tiny-adv"}

    # a rerun of the comparison computes nothing (the audit of the held-out speakers is cached)
    again = phonefair.compare(cfg, before="tiny", after="tiny-adv", progress=False)
    assert not [s for s in again.stages_run if s.startswith(("probe", "analyze"))]

    # a bad key is named
    cfg.write_text(cfg.read_text().replace("n_perm = 99", "n_perms = 99"))
    assert main(["--quiet", "run", str(cfg)]) == 2


def test_the_demo_states_every_setting_lighter_than_an_audit(tmp_path: Path) -> None:
    """The demo preset's report note is generated from the settings used: every lightened value, nothing else."""
    from phonefair.config import load_preset, parse_config
    from phonefair.pipeline.workflows import lighter_than_defaults

    cfg = load_preset("demo").replace_output(tmp_path)
    assert cfg.output.figures == ("png",) and cfg.output.dir == str(tmp_path.resolve())  # the move keeps the rest
    lighter = lighter_than_defaults(cfg)
    assert "[probes] folds = 3 (default 5)" in lighter
    assert "[analysis] n_perm = 1999 (default 9999)" in lighter and "[lenses] n_resamples = 5 (default 10)" in lighter
    assert any(x.startswith("[output] figures = ['png']") for x in lighter)
    assert not any("[probes] type" in x or "alpha" in x for x in lighter)  # unchanged settings are not listed
    audit_cfg = parse_config({"corpus": {"kind": "synthetic"}, "groups": {"attribute": "accent"},
                              "encoders": [{"model": "tiny:wav2vec2"}]})
    assert lighter_than_defaults(audit_cfg) == []
