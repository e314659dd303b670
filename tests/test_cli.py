"""CLI exit codes and help; pipeline caching with fast fake stages (monkeypatched)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from phonefair.cli import main
from phonefair.config import load_config, preset_text
from phonefair.corpus.schema import Corpus
from phonefair.pipeline import StageFunctions, run
from phonefair.store.base import InMemoryEmbeddings

CONFIG = """
[corpus]
kind = "saved"
root = "corpus"

[groups]
attribute = "accent"
min_speakers = 3

[[encoders]]
model = "tiny:wav2vec2"
name = "enc-a"

[[encoders]]
model = "tiny:hubert"
name = "enc-b"

[baseline]
enabled = false

[lenses]
enabled = false

[probes]
folds = 3
l2_grid = [0.01]
threads = 1

[analysis]
n_perm = 99
n_boot = 20

[output]
dir = "out"
"""


def fake_corpus() -> Corpus:
    spk = [(f"{g}{i}", g) for g in ("us", "uk", "in") for i in range(4)] + [("solo", "scot")]
    phones, recs = [], []
    for s, _ in spk:
        recs.append(dict(recording_id=f"{s}-r", speaker=s, audio_path=f"{s}.wav", duration=1.0))
        for j, p in enumerate(["aa", "iy", "s", "t"] * 2):
            phones.append(dict(recording_id=f"{s}-r", speaker=s, start=0.1 * j, end=0.1 * j + 0.1,
                               phone_raw=p, phone=p))
    return Corpus(phones=pd.DataFrame(phones), recordings=pd.DataFrame(recs),
                  speakers=pd.DataFrame({"speaker": [s for s, _ in spk], "accent": [a for _, a in spk],
                                         "age": np.nan}),  # schema cannot cast an absent float column yet
                  name="fake")


@pytest.fixture
def fake_stages() -> dict[str, Any]:
    """The stage registry with a fake corpus and fake embeddings (real probes and analysis on them), counting
    calls: the seams ``run`` offers, no patched globals."""
    calls: Counter[str] = Counter()
    state: dict[str, Any] = {"calls": calls, "fail_analyze": False, "valid": True}

    def load(cfg: Any, out: Path, **_: Any) -> Corpus:
        calls["corpus"] += 1
        return fake_corpus()

    def validate(corpus: Corpus, cfg: Any, **_: Any) -> tuple[pd.DataFrame, dict, bool, str]:
        calls["validate"] += 1
        ok = state["valid"]
        return corpus.problems, {}, ok, "" if ok else "speakers table: 3 problems\nfile x line 2"

    def extract(corpus: Corpus, enc: Any, cfg: Any, out: Path, progress: bool) -> InMemoryEmbeddings:
        calls[f"extract:{enc.name}"] += 1
        rng = np.random.default_rng(0)
        y = pd.factorize(corpus.phones["phone"])[0]
        x = rng.normal(size=(len(corpus.phones), 4)) + 3 * np.eye(4)[y]
        return InMemoryEmbeddings(corpus.phones, {"0": x, "1": x + rng.normal(size=x.shape)},
                                  provenance={"model": enc.model})

    def probes(audit: Any, enc: str) -> Any:
        calls["probe"] += 1
        assert set(audit.design(enc).group_names) == {"us", "uk", "in"}  # "scot" (1 speaker) excluded
        return audit.probes(enc)

    def analyze(audit: Any, enc: str) -> Any:
        calls["analyze"] += 1
        if state["fail_analyze"]:
            raise RuntimeError("boom in the middle of the typology")
        return audit.served(enc), audit.typology(enc)

    def report(out_dir: Path, tables: Any, summary: Any, provenance: Any, **_: Any) -> Path:
        calls["report"] += 1
        p = Path(out_dir) / "report.html"
        p.write_text("<html>" + " ".join(sorted(tables)) + "</html>")
        return p

    state["functions"] = StageFunctions(load_corpus=load, validate=validate, extract=extract, probes=probes,
                                        analyze=analyze, report=report)
    return state


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(CONFIG)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "speakers.csv").write_text("speaker,accent\n")
    return p


def test_run_writes_outputs_and_rerun_uses_cache(fake_stages: dict[str, Any], config_path: Path) -> None:
    calls, fns = fake_stages["calls"], fake_stages["functions"]
    res = run(config_path, progress=False, functions=fns)
    out = config_path.parent / "out"
    assert res.out_dir == out and res.report_path == out / "report.html"
    assert dict(calls) == {"corpus": 1, "validate": 1, "extract:enc-a": 1, "extract:enc-b": 1, "probe": 2,
                           "analyze": 2, "report": 1}
    acc = res.tables["speaker_accuracy"]  # every encoder's rows, with an encoder column
    assert set(acc["encoder"]) == {"enc-a", "enc-b"}
    for name in ("speaker_accuracy", "verdict", "group_summary", "excluded"):
        assert (out / "tables" / f"{name}.parquet").is_file() and (out / "tables" / f"{name}.csv").is_file()
    assert len(pd.read_parquet(out / "tables" / "verdict.parquet")) == len(res.tables["verdict"])
    assert "scot" in set(res.tables["excluded"]["group"])  # excluded group reported, not dropped
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["encoders"]) == {"enc-a", "enc-b"}
    assert {"headline_layer", "verdicts", "overall_accuracy"} <= set(summary["encoders"]["enc-a"])
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["config"]["groups"]["attributes"] == ["accent"]
    assert {"python", "numpy", "torch", "transformers", "phonefair"} <= set(prov["versions"])

    res2 = run(config_path, progress=False, functions=fns)
    assert calls["probe"] == 2 and calls["analyze"] == 2 and calls["corpus"] == 1  # nothing recomputed
    assert calls["extract:enc-a"] == 1  # cached results need no embeddings
    assert res2.stages_run == ["report"]
    pd.testing.assert_frame_equal(res2.tables["verdict"], res.tables["verdict"])


def test_changed_setting_recomputes_only_downstream(fake_stages: dict[str, Any], config_path: Path) -> None:
    calls, fns = fake_stages["calls"], fake_stages["functions"]
    run(config_path, progress=False, functions=fns)
    config_path.write_text(CONFIG.replace("n_perm = 99", "n_perm = 199"))
    res = run(config_path, progress=False, functions=fns)
    assert calls["probe"] == 2 and calls["analyze"] == 4 and calls["corpus"] == 1
    # the analysis reopens the embeddings (a real extraction finds its content-addressed store); probes are reused
    assert [x for x in res.stages_run if not x.startswith("extract")] == ["analyze:enc-a", "analyze:enc-b",
                                                                           "report"]


def test_edited_input_file_invalidates_the_corpus(fake_stages: dict[str, Any], config_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Row 1 of the reliability issue: editing a file under the corpus root reloads the corpus and says why."""
    calls, fns = fake_stages["calls"], fake_stages["functions"]
    run(config_path, progress=False, functions=fns)
    (config_path.parent / "corpus" / "speakers.csv").write_text("speaker,accent\nus0,uk\n")
    res = run(config_path, progress=True, functions=fns)
    assert calls["corpus"] == 2
    assert "speakers.csv" in capsys.readouterr().err
    assert "speakers.csv" in res.summary["inputs_changed"]


def test_interrupted_stage_leaves_no_marker(fake_stages: dict[str, Any], config_path: Path) -> None:
    calls, fns = fake_stages["calls"], fake_stages["functions"]
    fake_stages["fail_analyze"] = True
    with pytest.raises(RuntimeError, match="boom"):
        run(config_path, progress=False, functions=fns)
    out = config_path.parent / "out"
    assert list((out / "cache" / "probe").glob("*/COMPLETE.json"))  # finished stage kept
    assert not list((out / "cache").glob("analyze/*/COMPLETE.json"))
    assert not list((out / "cache").glob("*/.*tmp*"))  # temp folders cleaned up
    fake_stages["fail_analyze"] = False
    run(config_path, progress=False, functions=fns)
    assert calls["probe"] == 2 and calls["analyze"] == 3  # enc-a's probes reused


def test_stage_subset(fake_stages: dict[str, Any], config_path: Path) -> None:
    calls, fns = fake_stages["calls"], fake_stages["functions"]
    res = run(config_path, stages=["corpus", "groups", "probe"], progress=False, functions=fns)
    assert calls["probe"] == 2 and calls["analyze"] == 0 and res.report_path is None
    assert "verdict" not in res.tables and "speaker_accuracy" in res.tables
    res = run(config_path, stages=["report"], progress=False, functions=fns)  # renders cached probes only
    assert calls["probe"] == 2 and calls["analyze"] == 0 and res.report_path is not None
    with pytest.raises(ValueError, match="unknown stage"):
        run(config_path, stages=["probes"], progress=False, functions=fns)


def test_cache_holds_data_only(fake_stages: dict[str, Any], config_path: Path) -> None:
    """Row 4: nothing in an output folder is executed on reading: no pickle anywhere in the cache."""
    run(config_path, progress=False, functions=fake_stages["functions"])
    out = config_path.parent / "out"
    suffixes = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert suffixes <= {".parquet", ".json", ".csv", ".html", ".npy", ".safetensors", ".txt", ""}, suffixes


# ---------------------------------------------------------------------------------------------- CLI
def test_help_exits_zero_and_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "phonefair init --preset timit > my.toml" in out and "exit codes" in out
    for sub in ("run", "demo", "validate", "synth", "extract", "probe", "analyze", "report", "init"):
        assert main([sub, "--help"]) == 0
        assert "example" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15 row 14: no ``--version``."""
    import phonefair

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"phonefair {phonefair.__version__}"


def test_usage_and_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace("folds = 3", 'folds = "abc"'))
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"phonefair: error: {bad}: [probes] folds: expected an integer, got 'abc'"
    assert "Traceback" not in err
    assert main(["init", "--preset", "timt"]) == 2
    assert "did you mean 'timit'" in capsys.readouterr().err


def test_init_prints_loadable_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--preset", "timit"]) == 0
    text = capsys.readouterr().out
    assert text == preset_text("timit")
    (tmp_path / "my.toml").write_text(text)
    assert load_config(tmp_path / "my.toml").corpus.kind == "timit"
    assert main(["init", "--list"]) == 0
    assert "l2arctic" in capsys.readouterr().out.split()


def test_cli_run_exit_codes(fake_stages: dict[str, Any], config_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    fns = fake_stages["functions"]

    def main(argv: list[str]) -> int:
        from phonefair.cli import main as cli_main

        return cli_main(argv, stages=fns)

    fake_stages["valid"] = False
    strict = config_path.with_name("strict.toml")
    strict.write_text(config_path.read_text().replace("[corpus]\n", "[corpus]\nstrict = true\n", 1))
    assert main(["--quiet", "run", str(strict)]) == 3
    err = capsys.readouterr().err
    assert "corpus failed validation" in err and "file x line 2" in err
    # not strict: the problems are reported and the run goes on
    assert main(["run", str(config_path), "--out", str(config_path.parent / "lenient")]) == 0
    assert "problem(s) of severity 'error'" in capsys.readouterr().err
    fake_stages["valid"] = True
    fake_stages["fail_analyze"] = True
    assert main(["--quiet", "run", str(config_path)]) == 1
    err = capsys.readouterr().err
    assert "boom in the middle" in err and "Traceback" not in err
    assert main(["--debug", "--quiet", "run", str(config_path)]) == 1
    assert "Traceback" in capsys.readouterr().err
    fake_stages["fail_analyze"] = False
    assert main(["--quiet", "run", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "enc-a: headline layer" in out and "report.html" in out
    assert main(["--quiet", "probe", str(config_path)]) == 0  # all cached now
