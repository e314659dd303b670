"""Run configuration: validation messages name the key path, unknown keys get suggestions, presets round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phonefair.config import (ConfigError, RunConfig, list_presets, load_config, load_preset, parse_config,
                              preset_text)

MINIMAL = """
[corpus]
kind = "saved"
root = "corpus"

[groups]
attribute = "accent"

[[encoders]]
model = "facebook/wav2vec2-base"
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_minimal_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert isinstance(cfg, RunConfig)
    assert cfg.corpus.root == str((tmp_path / "corpus").resolve())
    assert cfg.output.dir == str((tmp_path / "phonefair-out").resolve())
    assert cfg.encoders[0].name == "wav2vec2-base"  # derived from the model id
    assert cfg.encoders[0].model == "facebook/wav2vec2-base"  # a hub id stays a hub id
    assert cfg.probes.folds == 5 and cfg.probes.populations == ("pooled", "group")
    assert cfg.groups.columns == ("accent",)
    json.dumps(cfg.to_dict())  # provenance must be JSON-serialisable
    with pytest.raises(AttributeError):
        cfg.run.seed = 3  # type: ignore[misc]  # frozen


def test_local_model_dir_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "models" / "m").mkdir(parents=True)
    cfg = load_config(_write(tmp_path, MINIMAL.replace("facebook/wav2vec2-base", "models/m")))
    assert cfg.encoders[0].model == str((tmp_path / "models" / "m").resolve())


def test_wrong_type_names_key_path(tmp_path: Path) -> None:
    p = _write(tmp_path, MINIMAL + '\n[probes]\nl2_grid = "abc"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: [probes] l2_grid: expected a non-empty list of numbers, got 'abc'"


def test_wrong_item_type_in_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[probes\] l2_grid: expected a list of numbers.*item 1: expected a "
                                          r"number, got 'x'"):
        load_config(_write(tmp_path, MINIMAL + '\n[probes]\nl2_grid = [0.1, "x"]\n'))


@pytest.mark.parametrize("extra, expected", [
    ("\n[probes]\nfold = 3\n", r"\[probes\] fold: unknown key; did you mean 'folds'\?"),
    ("\n[analysis]\nn_perms = 10\n", r"\[analysis\] n_perms: unknown key; did you mean 'n_perm'\?"),
    ("\n[probe]\ntype = 'linear'\n", r"\[probe\]: unknown section; did you mean \[probes\]\?"),
    ("\n[output]\ndirectory = 'x'\n", r"\[output\] directory: unknown key"),
])
def test_unknown_keys_rejected_with_suggestion(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(_write(tmp_path, MINIMAL + extra))


def test_choice_suggestion_and_encoder_index(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[encoders]]\nmodel = "microsoft/wavlm-base"\npooling = "maen"\n'
    with pytest.raises(ConfigError, match=r"\[\[encoders\]\] #2 pooling: .*got 'maen' \(did you mean 'mean'\?\)"):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize("data, expected", [
    ({"groups": {"attribute": "a"}, "encoders": [{"model": "m"}]}, r"\[corpus\]: required section is missing"),
    ({"corpus": {"kind": "timit"}, "groups": {"attribute": "a"}, "encoders": [{"model": "m"}]},
     r"\[corpus\] root: required for kind 'timit'"),
    ({"corpus": {"kind": "saved", "root": "x"}, "groups": {"attribute": "a", "attributes": ["b"]},
      "encoders": [{"model": "m"}]}, r"give exactly one of 'attribute'"),
    ({"corpus": {"kind": "saved", "root": "x"}, "groups": {"attribute": "a"},
      "encoders": [{"model": "a/m"}, {"model": "b/m"}]}, r"encoder names must be unique"),
    ({"corpus": {"kind": "saved", "root": "x"}, "groups": {"attribute": "age", "bins": [30, 10]},
      "encoders": [{"model": "m"}]}, r"\[groups\] bins: expected at least two strictly increasing"),
    ({"corpus": {"kind": "saved", "root": "x"}, "groups": {"attribute": "a"}, "encoders": [{"model": "m"}],
      "split": {"test_fraction": 1.5}}, r"\[split\] test_fraction: expected a number in \(0.0, 1.0\), got 1.5"),
    ({"corpus": {"kind": "saved", "root": "x"}, "groups": {"attribute": "a"}, "encoders": [{"model": "m"}],
      "probes": {"folds": 1}}, r"\[probes\] folds: expected a number >= 2, got 1"),
    ({"corpus": {"kind": "saved", "root": "x"}, "groups": {"attribute": "a"},
      "encoders": [{"model": "tiny:x/../../.."}]}, r"tiny:<family> takes a family name"),
    ({"corpus": {"kind": "saved", "root": "x"}, "groups": {"attribute": "a", "min_speakers": True},
      "encoders": [{"model": "m"}]}, r"\[groups\] min_speakers: expected an integer, got True"),
    ({"corpus": {"kind": "saved", "root": "x"}, "groups": {"attribute": "a"}, "encoders": []},
     r"\[\[encoders\]\]: expected one or more"),
])
def test_invalid_documents(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_config(data, source="x.toml")


def test_groups_bins_and_mapping_normalised_per_attribute() -> None:
    base = {"corpus": {"kind": "saved", "root": "x"}, "encoders": [{"model": "m"}]}
    one = parse_config({**base, "groups": {"attribute": "age", "bins": [0, 30, 120], "mapping": {"x": "y"}}})
    assert one.groups.bins == {"age": (0.0, 30.0, 120.0)} and one.groups.mapping == {"age": {"x": "y"}}
    two = parse_config({**base, "groups": {"attributes": ["age", "accent"], "bins": {"age": [0, 30, 120]},
                                           "mapping": {"accent": {"wales": "uk"}}}})
    assert two.groups.columns == ("age", "accent")
    assert two.groups.bins == {"age": (0.0, 30.0, 120.0)} and two.groups.mapping == {"accent": {"wales": "uk"}}
    with pytest.raises(ConfigError, match="one entry per attribute"):
        parse_config({**base, "groups": {"attributes": ["age", "accent"], "bins": [0, 30]}})


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "[corpus\nkind=")
    with pytest.raises(ConfigError, match=r"config.toml: not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_presets_round_trip(tmp_path: Path) -> None:
    names = list_presets()
    assert {"timit", "l2arctic", "mfa", "demo"} <= set(names)
    for name in names:
        text = preset_text(name)
        p = tmp_path / f"{name}.toml"
        p.write_text(text)
        cfg = load_config(p)
        assert cfg.to_dict() == load_preset(name, base_dir=tmp_path).to_dict()
        # to_dict() is itself a valid document again: provenance can be re-run
        again = parse_config(cfg.to_dict(), source=cfg.source)
        assert again == cfg
    assert load_preset("l2arctic").groups.min_speakers == 4
    assert load_preset("demo").encoders[0].model == "tiny:wav2vec2"
    with pytest.raises(ConfigError, match="did you mean 'timit'"):
        preset_text("timt")


def test_config_choices_match_the_stages() -> None:
    import typing

    from phonefair.config import EncoderSettings
    from phonefair.extraction.frames import POOLINGS
    from phonefair.probes import MATCHED_KINDS
    from phonefair.settings import ProbeSettings

    # the TOML choices are read off the settings' annotations; they must be what the stages implement
    assert typing.get_args(typing.get_type_hints(EncoderSettings)["pooling"]) == POOLINGS
    pops = typing.get_args(typing.get_args(typing.get_type_hints(ProbeSettings)["populations"])[0])
    assert set(pops) == set(MATCHED_KINDS)


def test_extraction_and_finetune_sections(tmp_path) -> None:
    import pytest as _pytest

    from phonefair.config import ConfigError, parse_config

    base = {"corpus": {"kind": "synthetic"}, "groups": {"attribute": "accent"},
            "encoders": [{"model": "tiny:wav2vec2"}]}
    cfg = parse_config({**base, "extraction": {"backend": "ray", "num_workers": 2},
                        "finetune": {"model": "tiny:wav2vec2", "variants": ["ctc"], "steps": 5}})
    assert cfg.extraction.backend == "ray" and cfg.extraction.num_workers == 2
    assert cfg.finetune is not None and cfg.finetune.options == {"steps": 5}
    assert parse_config(cfg.to_dict()).finetune == cfg.finetune  # round trip (provenance → config)
    with _pytest.raises(ConfigError, match=r"\[extraction\] backend"):
        parse_config({**base, "extraction": {"backend": "slurm"}})
    with _pytest.raises(ConfigError, match=r"\[finetune\].*unknown key\(s\) \['stpes'\]"):
        parse_config({**base, "finetune": {"model": "x", "stpes": 5}})


def test_unknown_loader_option_is_named_with_a_suggestion() -> None:
    import pytest as _pytest

    from phonefair.config import ConfigError, parse_config

    base = {"groups": {"attribute": "accent"}, "encoders": [{"model": "tiny:wav2vec2"}]}
    with _pytest.raises(ConfigError, match=r"\[corpus.options\] phone_schme: .*did you mean 'phone_scheme'"):
        parse_config({**base, "corpus": {"kind": "textgrid", "root": "/x", "options": {"phone_schme": "arpabet"}}})
    with _pytest.raises(ConfigError, match=r"\[corpus.options\] speakers_per_grp"):
        parse_config({**base, "corpus": {"kind": "synthetic", "options": {"speakers_per_grp": 2}}})
    ok = parse_config({**base, "corpus": {"kind": "timit", "root": "/x", "options": {"include_sa": True}}})
    assert ok.corpus.options == {"include_sa": True}
