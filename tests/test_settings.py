"""Settings: one declaration per setting, the same checks and defaults from Python and from TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from phonefair.config import load_config, parse_config
from phonefair.errors import ConfigError
from phonefair.settings import AnalysisSettings, ProbeSettings, Settings, coerce

BASE = {"corpus": {"kind": "synthetic"}, "groups": {"attribute": "accent"}, "encoders": [{"model": "tiny:wav2vec2"}]}


def test_api_and_toml_give_the_same_settings_and_defaults() -> None:
    cfg = parse_config({**BASE, "probes": {"folds": 3, "l2_grid": [0.01]}, "analysis": {"n_perm": 499}})
    assert cfg.probes == ProbeSettings(folds=3, l2_grid=(0.01,))
    assert cfg.analysis == AnalysisSettings(n_perm=499)
    assert parse_config(BASE).probes == ProbeSettings()  # one default, one place
    assert coerce(ProbeSettings, {"folds": 3, "l2_grid": [0.01]}) == cfg.probes


@pytest.mark.parametrize("cls, kwargs, message", [
    (ProbeSettings, {"folds": 1}, r"\[probes\] folds: expected a number >= 2, got 1"),
    (ProbeSettings, {"type": "svm"}, r"\[probes\] type: expected one of \['linear', 'mlp'\], got 'svm'"),
    (ProbeSettings, {"populations": ["pooled", "pooled"]}, r"\[probes\] populations: list has duplicates"),
    (AnalysisSettings, {"alpha": 1.5}, r"\[analysis\] alpha: expected a number in \(0.0, 1.0\), got 1.5"),
    (AnalysisSettings, {"n_perm": True}, r"\[analysis\] n_perm: expected an integer, got True"),
])
def test_python_and_toml_fail_with_the_same_message(cls: type[Settings], kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)
    section = cls.section.strip("[]")
    with pytest.raises(ConfigError, match=r"x.toml: " + message):
        parse_config({**BASE, section: kwargs}, source="x.toml")


def test_every_setting_is_documented() -> None:
    for cls in (ProbeSettings, AnalysisSettings):
        assert all(doc for doc in cls.docs().values()), cls


@pytest.mark.parametrize("options, message", [
    ({"mix": "no"}, r"\[corpus.options\] mix: expected true or false, got 'no'"),
    ({"speaker_from": "folder"}, r"\[corpus.options\] speaker_from: expected one of"),
    ({"phone_scheme": "ipa"}, r"\[corpus.options\] phone_scheme: expected one of"),
    ({"speakers": 5}, r"\[corpus.options\] speakers: expected a path \(a string\), got 5"),
    ({"unknown": "skip"}, r"\[corpus.options\] unknown: expected one of"),
])
def test_loader_option_values_are_checked_against_the_loader(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "corpus": {"kind": "textgrid", "root": "/x", "options": options}})


def test_relative_option_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """Row 3 of the reliability issue: a speakers table next to the config wins over one in the current folder."""
    conf_dir, cwd = tmp_path / "conf", tmp_path / "elsewhere"
    conf_dir.mkdir()
    cwd.mkdir()
    (conf_dir / "speakers.csv").write_text("speaker,accent\n")
    (cwd / "speakers.csv").write_text("speaker,accent\n")
    p = conf_dir / "run.toml"
    p.write_text('[corpus]\nkind = "textgrid"\nroot = "data"\n[corpus.options]\nspeakers = "speakers.csv"\n'
                 '[groups]\nattribute = "accent"\n[[encoders]]\nmodel = "tiny:wav2vec2"\n')
    monkeypatch.chdir(cwd)
    cfg = load_config(p)
    assert cfg.corpus.options["speakers"] == str((conf_dir / "speakers.csv").resolve())
    assert cfg.corpus.root == str((conf_dir / "data").resolve())


def test_the_settings_reference_in_the_docs_is_the_code() -> None:
    """docs/usage.md holds the table generated from the settings dataclasses: one default per setting, never stale."""
    from phonefair.config import settings_reference

    doc = (Path(__file__).parents[1] / "docs" / "usage.md").read_text()
    block = doc.split("<!-- settings:begin -->\n")[1].split("<!-- settings:end -->")[0]
    assert block == settings_reference(), "regenerate the table with phonefair.config.settings_reference()"


def test_an_acoustic_encoder_listed_by_hand_is_the_baseline() -> None:
    """docs/baselines.md: `[[encoders]] model = "acoustic"` is the baseline (amplification, readings), like the
    default one; `[baseline] enabled = false` turns both off."""
    from phonefair.pipeline.workflows import baseline_name

    assert baseline_name(parse_config(BASE)) == "acoustic-baseline"
    by_hand = {**BASE, "encoders": [*BASE["encoders"], {"model": "acoustic", "name": "mfcc"}]}
    assert baseline_name(parse_config(by_hand)) == "mfcc"
    assert baseline_name(parse_config({**by_hand, "baseline": {"enabled": False}})) is None
