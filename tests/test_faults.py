"""Bad inputs through the whole pipeline (issue 15): each must end in a clear error or an explicit, reported
skip, never a crash deep inside a stage. Small hand-made TextGrid corpora and a tiny random wav2vec2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair import pipeline

LABELS = ["S", "AA1", "T", "IY1", "M", "N", "UW1", "K", "EH1", "L"]


def textgrid(phones: list[tuple[float, float, str]], xmax: float) -> str:
    """A long-format Praat TextGrid with one ``phones`` tier."""
    items = "".join(f'        intervals [{i}]:\n            xmin = {a}\n            xmax = {b}\n'
                    f'            text = "{t}"\n' for i, (a, b, t) in enumerate(phones, start=1))
    return ('File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\nxmax = {x}\ntiers? <exists>\n'
            'size = 1\nitem []:\n    item [1]:\n        class = "IntervalTier"\n        name = "phones"\n'
            '        xmin = 0\n        xmax = {x}\n        intervals: size = {n}\n').format(x=xmax, n=len(phones)) \
        + items


def build_corpus(root: Path, *, speakers_per_group: int = 4, stereo: tuple[str, ...] = (),
                 bad: dict[str, str] | None = None) -> Path:
    """``root/<speaker>/u<k>.wav`` + same-stem TextGrids (0.05 s phones over 1 s of tones and noise) and
    ``root/speakers.csv`` (two accents). ``stereo``: speakers whose audio has two channels. ``bad``: extra
    recordings ``{speaker/utt: "nan" | "zeros" | "short"}``."""
    rng = np.random.default_rng(0)
    rows = []
    for g, accent in enumerate(["north", "south"]):
        for k in range(speakers_per_group):
            spk = f"{accent[0]}{k}"
            rows.append({"speaker": spk, "accent": accent})
            (root / spk).mkdir(parents=True, exist_ok=True)
            for u in range(2):
                t = np.arange(16000) / 16000
                x = (0.3 * np.sin(2 * np.pi * (120 + 40 * g + 7 * k + 3 * u) * t)
                     + 0.05 * rng.standard_normal(16000)).astype(np.float32)
                if spk in stereo:  # a second, different channel: mixing must be visible in the embeddings
                    x = np.stack([x, (0.3 * rng.standard_normal(16000)).astype(np.float32)], axis=1)
                sf.write(root / spk / f"u{u}.wav", x, 16000, subtype="FLOAT")
                ph = [(round(0.05 + 0.08 * j, 3), round(0.12 + 0.08 * j, 3), LABELS[(j + u) % len(LABELS)])
                      for j in range(11)]
                (root / spk / f"u{u}.TextGrid").write_text(textgrid(ph, 1.0))
    for name, kind in (bad or {}).items():
        n = 160 if kind == "short" else 16000
        x = 0.2 * np.ones(n, np.float32) if kind == "short" else np.zeros(n, np.float32)
        if kind == "nan":
            x = (0.1 * rng.standard_normal(n)).astype(np.float32)
            x[1000] = np.nan
        sf.write(root / f"{name}.wav", x, 16000, subtype="FLOAT")
        (root / f"{name}.TextGrid").write_text(textgrid([(0.0, 0.005, "S"), (0.005, 0.009, "AA1")] if
                                                        kind == "short" else [(0.1, 0.3, "S"), (0.3, 0.5, "AA1")],
                                                        n / 16000))
    pd.DataFrame(rows).to_csv(root / "speakers.csv", index=False)
    return root


CONFIG = """
[corpus]
kind = "textgrid"
root = "{root}"

[corpus.options]
speakers = "{root}/speakers.csv"
{options}

[groups]
attribute = "accent"
min_speakers = 3

[baseline]
enabled = false

[lenses]
enabled = false

[[encoders]]
model = "tiny:wav2vec2"
name = "tiny"
dtype = "float32"
batch_size = 4
layers = [2, 3]

[probes]
folds = 3
l2_grid = [0.01]
populations = ["pooled"]
threads = 1

[analysis]
n_perm = 99
n_boot = 40

[output]
dir = "{out}"
"""


def write_config(tmp: Path, root: Path, options: str = "") -> Path:
    p = tmp / "run.toml"
    p.write_text(CONFIG.format(root=root, out=tmp / "out", options=options))
    return p


def test_stereo_audio_with_mix_true_is_mixed_by_extraction(tmp_path: Path) -> None:
    """Issue 15 row 6: two-channel audio loaded with ``mix = true`` (the validator's own advice) used to abort
    extraction, because ``mix`` never reached ``extract()``. The corpus now carries the channel policy."""
    root = build_corpus(tmp_path / "c", stereo=("n0",))
    res = pipeline.run(write_config(tmp_path, root, "mix = true"), stages=["corpus", "groups", "extract"],
                       progress=False)
    rec = pd.read_parquet(tmp_path / "out" / "corpus" / "recordings.parquet").set_index("recording_id")
    assert bool(rec.at["n0/u0", "mix"]) and rec.at["n0/u0", "num_channels"] == 2
    assert not rec.drop(["n0/u0", "n0/u1"])["mix"].fillna(False).any()  # mono files need no policy
    from phonefair.store import EmbeddingStore

    store = EmbeddingStore(next(p for p in (tmp_path / "out" / "stores").iterdir() if (p / "COMPLETE").exists()))
    assert store.problems.empty and np.isfinite(store.read("3")).all()
    # the first phone of n0/u0, [0.05, 0.12) s, owns the frames centred at 0.0525 ... 0.1125 s (indices 2-5)
    from phonefair.corpus.audio import read_audio
    from phonefair.encoders import load_encoder

    enc = load_encoder(tmp_path / "out" / "models" / "tiny-wav2vec2", layers=[3])
    row = int(np.flatnonzero((store.tokens["recording_id"] == "n0/u0").to_numpy())[0])
    mixed = enc.frames(read_audio(root / "n0" / "u0.wav", mix=True))["3"][2:6].mean(0)
    left = enc.frames(read_audio(root / "n0" / "u0.wav", channel=0))["3"][2:6].mean(0)
    np.testing.assert_allclose(store.read("3", [row])[0], mixed, atol=1e-5)
    assert not np.allclose(mixed, left, atol=1e-3)
    assert "extract:tiny" in res.stages_run


def test_run_completes_with_bad_audio_content(tmp_path: Path) -> None:
    """Issue 15 rows 5 and 10: a recording shorter than one encoder frame used to end the run in the probes
    ('value cannot be converted to type float without overflow'), and NaN audio aborted extraction. Validation
    now names each file, extraction stores NaN rows with a problem, probes leave them out (counted) and the run
    ends with a report."""
    root = build_corpus(tmp_path / "c", bad={"n0/short": "short", "s0/nan": "nan", "s1/zeros": "zeros"})
    res = pipeline.run(write_config(tmp_path, root), progress=False)
    assert res.report_path is not None and Path(res.report_path).is_file()
    problems = res.tables["problems"]
    for name, text in (("short.wav", "shorter than one encoder frame"), ("nan.wav", "NaN or infinite"),
                       ("zeros.wav", "digital silence")):
        hit = problems[problems["file"].fillna("").str.endswith(name) & problems["message"].str.contains(text)]
        assert len(hit) == 1 and hit["severity"].iloc[0] == "error", (name, problems.to_string())
    prov = json.loads(next((tmp_path / "out" / "stores").glob("*/provenance.json")).read_text())
    assert prov["n_nan_rows"] == 2 + 2 + 2 and prov["on_audio_error"] == "skip"
    probe_prov = res.tables["probe_accuracy"].attrs["provenance"]["tiny"]
    assert probe_prov["non_finite_rows"] == {"2": 6, "3": 6}


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    """Issue 15 row 4: output folders must be data only; a checkpoint read with ``weights_only=False`` can run
    code. A source scan keeps any new ``torch.load`` honest."""
    import re

    import phonefair

    root = Path(phonefair.__file__).parent
    calls = [(p.relative_to(root), m.group(0)) for p in root.rglob("*.py")
             for m in re.finditer(r"torch\.load\([^)]*\)", p.read_text())]
    assert calls and all("weights_only=True" in c for _, c in calls), calls


def test_validate_command_reads_the_audio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15 rows 5 and 10: ``phonefair validate`` said OK for a recording shorter than one frame and for NaN
    audio (it read headers only). Now exit 3 with the files named; ``--headers-only`` skips the sample checks."""
    from phonefair.cli import main

    root = build_corpus(tmp_path / "c", speakers_per_group=3, bad={"s0/nan": "nan", "n0/short": "short"})
    args = ["--quiet", "validate", "--kind", "textgrid", "--root", str(root), "--group-by", "accent",
            "--min-speakers", "3", "--option", f"speakers={root / 'speakers.csv'}"]
    assert main(args) == 3
    out = capsys.readouterr().out
    assert "nan.wav [audio]: audio contains NaN or infinite samples" in out
    assert "short.wav [duration]: recording 'n0/short': audio is 10.0 ms long" in out
    assert main([*args, "--headers-only"]) == 3  # the 10 ms file is still caught from its header
    out = capsys.readouterr().out
    assert "NaN or infinite" not in out and "short.wav [duration]" in out


def test_audio_and_unknown_phone_errors_are_data_errors_with_exit_3() -> None:
    """Unreadable audio and unknown phone labels are data problems: the CLI exits 3 on them (docs/usage.md), and
    ``except ValueError`` keeps catching them."""
    from phonefair.corpus.audio import AudioError
    from phonefair.corpus.phonesets import UnknownPhoneError
    from phonefair.errors import EXIT_DATA, DataError, exit_code

    for err in (AudioError("a.wav: not audio"), UnknownPhoneError("x.TextGrid: phone 'qq'")):
        assert isinstance(err, DataError) and isinstance(err, ValueError)
        assert exit_code(err) == EXIT_DATA == 3


def test_a_half_written_tiny_model_is_rebuilt_not_loaded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A run killed while writing ``out/models/tiny-*`` leaves a folder without its COMPLETE marker: the next run
    rebuilds it (and a finished one is reused as is)."""
    from phonefair.pipeline.stages import tiny_model_dir

    half = tmp_path / "models" / "tiny-wav2vec2"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{")  # truncated by the kill
    d = tiny_model_dir("wav2vec2", tmp_path, seed=0)
    assert d == half and (d / "COMPLETE").is_file()
    import json

    json.loads((d / "config.json").read_text())
    stamp = (d / "config.json").stat().st_mtime_ns
    assert tiny_model_dir("wav2vec2", tmp_path, seed=0) == d and (d / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
