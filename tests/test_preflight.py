"""Pilot-sized designs run with warnings; `validate` catches what would fail later; concurrent writers never
share a temporary name (issue 15 rows 8, 11, 13)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phonefair.audit import Audit
from phonefair.config import parse_config
from phonefair.corpus.schema import Corpus
from phonefair.pipeline.cache import StageCache
from phonefair.pipeline.stages import preflight
from phonefair.synth.simulate import PRESETS, simulate


@pytest.mark.parametrize("n", [2, 3, 5])
def test_pilot_sized_groups_run_with_warnings(n: int) -> None:
    """Row 8: 5 speakers per group used to crash inside L-BFGS (the λ search fitted on one 8-token speaker)."""
    sc = PRESETS["null"]
    for g in "ABC":
        sc = sc.with_group(g, n_speakers=n)
    sim = simulate(sc, seed=n, dim=6)
    audit = Audit(sim.embeddings, sim.groups, min_speakers=2, probes={"threads": 1},
                  analysis={"n_perm": 99, "n_boot": 20})
    v = audit.verdicts()
    assert len(v) == 3 and v["accuracy"].between(0, 1).all()
    summary = audit.summary()
    if n < 5:
        assert any("pilot-sized" in w for w in summary["warnings"])


def corpus(groups: dict[str, int]) -> Corpus:
    spk = [(f"{g}{i}", g) for g, n in groups.items() for i in range(n)]
    phones = [dict(recording_id=f"{s}-r", speaker=s, start=0.1 * j, end=0.1 * j + 0.1, phone_raw=p, phone=p)
              for s, _ in spk for j, p in enumerate(["aa", "iy", "s", "t"])]
    return Corpus(phones=pd.DataFrame(phones),
                  recordings=pd.DataFrame([dict(recording_id=f"{s}-r", speaker=s, audio_path=f"{s}.wav",
                                                duration=1.0) for s, _ in spk]),
                  speakers=pd.DataFrame({"speaker": [s for s, _ in spk], "accent": [a for _, a in spk]}))


def cfg(tmp_path: Path, **sections: dict) -> object:
    base = {"corpus": {"kind": "saved", "root": str(tmp_path)}, "groups": {"attribute": "accent", "min_speakers": 3},
            "encoders": [{"model": "tiny:wav2vec2"}], "output": {"dir": str(tmp_path / "out")}}
    return parse_config({**base, **sections})


def test_validate_catches_design_and_encoder_problems_early(tmp_path: Path) -> None:
    errors, warnings = preflight(corpus({"us": 4, "uk": 3}), cfg(tmp_path), tmp_path / "out")
    assert not errors and any("pilot-sized" in w for w in warnings)
    errors, _ = preflight(corpus({"us": 4, "uk": 1}), cfg(tmp_path), tmp_path / "out")  # one usable group
    assert any("need at least 2 groups" in e for e in errors)
    errors, _ = preflight(corpus({"us": 4, "uk": 4}), cfg(tmp_path, groups={"attribute": "accent", "min_speakers": 3,
                                                                             "reference": "in"}), tmp_path / "out")
    assert any("reference group 'in'" in e for e in errors)
    bad_layers = cfg(tmp_path, encoders=[{"model": "tiny:wav2vec2", "layers": [0, 99]}])
    errors, _ = preflight(corpus({"us": 4, "uk": 4}), bad_layers, tmp_path / "out")
    assert any("layer '99'" in e and "[[encoders]]" in e for e in errors)
    import torch

    if not torch.cuda.is_available():
        errors, _ = preflight(corpus({"us": 4, "uk": 4}), cfg(tmp_path, encoders=[{"model": "tiny:wav2vec2",
                                                                                    "device": "cuda"}]),
                              tmp_path / "out")
        assert any("CUDA is not available" in e for e in errors)


def test_concurrent_writers_do_not_collide(tmp_path: Path) -> None:
    """Row 11: two runs on a fresh output folder used to die on a shared temporary name."""
    c = corpus({"us": 4, "uk": 4})
    cache = StageCache(tmp_path)
    table = pd.DataFrame({"x": np.arange(1000)})
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                c.save(tmp_path / "corpus")
                cache.save("probe", "k", {"t": table}, {"i": i})
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert Corpus.load(tmp_path / "corpus").counts["speakers"] == 8
    tables, _ = cache.load("probe", "k")
    assert len(tables["t"]) == 1000
