"""CLI exit codes and help; pipeline caching with fast fake stages (monkeypatched)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from phonefair import pipeline
from phonefair.cli import main
from phonefair.config import load_config, preset_text
from phonefair.corpus.schema import Corpus
from phonefair.report.example import example_tables
from phonefair.store.base import InMemoryEmbeddings

CONFIG = """
[corpus]
kind = "saved"
root = "corpus"

[groups]
attribute = "accent"
min_speakers = 3

[split]
use_corpus_split = false
test_fraction = 0.5

[[encoders]]
model = "tiny:wav2vec2"
name = "enc-a"

[[encoders]]
model = "tiny:hubert"
name = "enc-b"

[probes]
seeds = [0]

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
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls: Counter[str] = Counter()
    state: dict[str, Any] = {"calls": calls, "fail_analyze": False}

    def load(cfg: Any, out: Path, **_: Any) -> Corpus:
        calls["corpus"] += 1
        return fake_corpus()

    def validate(corpus: Corpus, cfg: Any, **_: Any) -> tuple[pd.DataFrame, dict, bool, str]:
        calls["validate"] += 1
        ok = state.get("valid", True)
        return corpus.problems, {}, ok, "" if ok else "speakers table: 3 problems\nfile x line 2"

    def extract(corpus: Corpus, enc: Any, cfg: Any, out: Path, progress: bool) -> InMemoryEmbeddings:
        calls[f"extract:{enc.name}"] += 1
        rng = np.random.default_rng(0)
        return InMemoryEmbeddings(corpus.phones, {"0": rng.normal(size=(len(corpus.phones), 4))},
                                  provenance={"model": enc.model})

    def probe(source: Any, groups: pd.Series, cfg: Any, **_: Any) -> dict[str, pd.DataFrame]:
        calls["probe"] += 1
        assert set(groups.unique()) == {"us", "uk", "in"}  # "scot" (1 speaker) excluded
        t = example_tables(groups=("us", "uk", "in"))
        return {k: t[k] for k in ("probe_accuracy", "group_gap", "in_group_benefit", "speaker_accuracy")}

    def analyze(source: Any, groups: pd.Series, cfg: Any, probe_results: Any, **_: Any) -> dict[str, pd.DataFrame]:
        calls["analyze"] += 1
        assert probe_results is not None
        if state["fail_analyze"]:
            raise RuntimeError("boom in the middle of the typology")
        t = example_tables(groups=("us", "uk", "in"))
        return {k: t[k] for k in ("decomposition", "verdict", "speaker_variance", "variance_accuracy")}

    for name, fn in [("load_corpus_stage", load), ("validate_stage", validate), ("extract_stage", extract),
                     ("probe_stage", probe), ("analyze_stage", analyze)]:
        monkeypatch.setattr(pipeline, name, fn)
    return state


@pytest.fixture
def fast_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures cost ~2 s per encoder; tests of the caching logic do not need them."""
    import phonefair.report

    def stub(out_dir: Path, tables: Any, summary: Any, provenance: Any, *, title: str, banner: Any = None) -> Path:
        p = Path(out_dir) / "report.html"
        p.write_text("<html>" + " ".join(f"not computed ({k} table absent)" for k in ("verdict",)
                                          if k not in tables) + "</html>")
        return p

    monkeypatch.setattr(phonefair.report, "write_report", stub)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(CONFIG)
    return p


def test_run_writes_outputs_and_rerun_uses_cache(fake_stages: dict[str, Any], config_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    calls = fake_stages["calls"]
    res = pipeline.run(config_path, progress=False)
    out = config_path.parent / "out"
    assert res.out_dir == out and res.report_path == out / "report.html"
    assert dict(calls) == {"corpus": 1, "validate": 1, "extract:enc-a": 1, "extract:enc-b": 1, "probe": 2,
                           "analyze": 2}
    # tables concatenated with an encoder column, written as Parquet and CSV
    acc = res.tables["probe_accuracy"]
    assert set(acc["encoder"]) == {"enc-a", "enc-b"}
    for name in ("probe_accuracy", "verdict", "group_summary", "excluded"):
        assert (out / "tables" / f"{name}.parquet").is_file() and (out / "tables" / f"{name}.csv").is_file()
    back = pd.read_parquet(out / "tables" / "probe_accuracy.parquet")
    assert len(back) == len(acc)
    assert "scot" in set(res.tables["excluded"]["group"])  # excluded group reported, not dropped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoders"]["enc-a"]["best_layer"] == "3"
    assert summary["encoders"]["enc-a"]["gap_ci_low"] == pytest.approx(0.05)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["config"]["groups"]["attribute"] == "accent"
    assert prov["corpus"]["fingerprint"] == fake_corpus().fingerprint()
    assert {"python", "numpy", "torch", "transformers", "phonefair"} <= set(prov["versions"])
    assert "not computed" not in res.report_path.read_text()

    request.getfixturevalue("fast_report")  # the rerun checks caching, not figures
    res2 = pipeline.run(config_path, progress=False)
    assert dict(calls) == {"corpus": 1, "validate": 1, "extract:enc-a": 1, "extract:enc-b": 1, "probe": 2,
                           "analyze": 2}  # nothing recomputed
    assert res2.stages_run == ["report"]
    pd.testing.assert_frame_equal(res2.tables["verdict"], res.tables["verdict"])


def test_changed_setting_recomputes_only_downstream(fake_stages: dict[str, Any], fast_report: None,
                                                    config_path: Path) -> None:
    calls = fake_stages["calls"]
    pipeline.run(config_path, progress=False)
    config_path.write_text(CONFIG.replace("[output]", "[analysis]\nn_perm = 7\n\n[output]"))
    res = pipeline.run(config_path, progress=False)
    assert calls["probe"] == 2 and calls["analyze"] == 4 and calls["corpus"] == 1
    assert res.stages_run == ["analyze:enc-a", "analyze:enc-b", "report"]
    # the source is re-opened for the analysis (the real extraction reuses its content-addressed store)
    assert calls["extract:enc-a"] == 2


def test_interrupted_stage_leaves_no_marker(fake_stages: dict[str, Any], fast_report: None,
                                            config_path: Path) -> None:
    calls = fake_stages["calls"]
    fake_stages["fail_analyze"] = True
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.run(config_path, progress=False)
    out = config_path.parent / "out"
    assert list((out / "cache" / "probe").glob("*/COMPLETE.json"))  # finished stage kept
    assert not (out / "cache" / "analyze").exists() or not list((out / "cache" / "analyze").glob("*/COMPLETE.json"))
    assert not list((out / "cache").glob("*/.*tmp*"))  # temp folders cleaned up
    fake_stages["fail_analyze"] = False
    pipeline.run(config_path, progress=False)
    # enc-a's probe reused, its analysis rerun; enc-b (never reached) computed now
    assert calls["probe"] == 2 and calls["analyze"] == 3


def test_stage_subset(fake_stages: dict[str, Any], fast_report: None,
                      config_path: Path) -> None:
    calls = fake_stages["calls"]
    res = pipeline.run(config_path, stages=["corpus", "groups", "probe"], progress=False)
    assert calls["probe"] == 2 and calls["analyze"] == 0 and res.report_path is None
    assert "verdict" not in res.tables and "probe_accuracy" in res.tables
    res = pipeline.run(config_path, stages=["report"], progress=False)  # renders cached probes only
    assert calls["probe"] == 2 and calls["analyze"] == 0
    assert "not computed (verdict table absent)" in res.report_path.read_text()
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline.run(config_path, stages=["probes"], progress=False)


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
    bad.write_text(CONFIG.replace("seeds = [0]", 'seeds = "abc"'))
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"phonefair: error: {bad}: [probes] seeds: expected a non-empty list "
                                            "of integers, got 'abc'")
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


def test_cli_run_exit_codes(fake_stages: dict[str, Any], fast_report: None,
                            config_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
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
    assert "enc-a: layer 3" in out and "95% CI" in out and "report.html" in out
    assert main(["--quiet", "probe", str(config_path)]) == 0  # all cached now
