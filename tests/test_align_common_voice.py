"""Common Voice end to end on a small Common-Voice-shaped fixture built from synthetic speech: MP3 clips and a
``validated.tsv`` with Common Voice's real columns -> ``phonefair align`` -> the generic loader (Common Voice
demographics) -> ``phonefair.run`` with accent groups -> alignment quality per group.

The pipeline API (``phonefair.run`` and its TOML) is being rewritten; only the last part of this test depends on it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair import pipeline
from phonefair.align import align_corpus
from phonefair.synth.corpus import build_synthetic_corpus

CV_COLUMNS = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "variant",
              "locale", "segment"]
ACCENT_NAMES = {"en-US": "United States English", "en-GB-scotland": "Scottish English"}


def make_common_voice(root: Path, work: Path) -> pd.DataFrame:
    """A Common Voice release folder (``validated.tsv`` + ``clips/*.mp3``) from a synthetic corpus: 2 accents x
    4 speakers x 1 sentence. Returns the clip table."""
    corpus = build_synthetic_corpus(work, accents=["en-US", "en-GB-scotland"], speakers_per_group=2,
                                    families=("m", "f"), sentences_per_speaker=1, seed=3, progress=False)
    texts = pd.read_csv(work / "utterances.csv").set_index("recording_id")["text"]
    spk = corpus.speakers.set_index("speaker")
    (root / "clips").mkdir(parents=True)
    rows = []
    for i, rec in enumerate(corpus.recordings.itertuples()):
        x, sr = sf.read(corpus.audio_path(rec.recording_id), dtype="float32")
        clip = f"common_voice_en_{1000 + i}.mp3"
        sf.write(root / "clips" / clip, x, sr, format="MP3")
        s = spk.loc[rec.speaker]
        rows.append({"client_id": hashlib.sha256(rec.speaker.encode()).hexdigest(), "path": clip,
                     "sentence": texts[rec.recording_id], "up_votes": "2", "down_votes": "0",
                     "age": "fourties" if s["gender"] == "male" else "twenties",
                     "gender": "male_masculine" if s["gender"] == "male" else "female_feminine",
                     "accents": ACCENT_NAMES[s["accent"]], "variant": "", "locale": "en", "segment": ""})
    clips = pd.DataFrame(rows, columns=CV_COLUMNS)
    clips.to_csv(root / "validated.tsv", sep="\t", index=False)
    return clips


@pytest.mark.slow
def test_common_voice_end_to_end_align_then_run(tmp_path: Path) -> None:
    clips = make_common_voice(tmp_path / "cv", tmp_path / "synth")
    res = align_corpus(tmp_path / "cv", tmp_path / "aligned", progress=False)  # kind detected: common_voice
    assert res.counts["aligned"] == len(clips) and res.speakers_path.name == "speakers.tsv"

    corpus = res.load()
    spk = corpus.speakers.set_index("speaker")
    assert set(spk.index) == set(clips["client_id"])
    assert set(spk["accent"]) == set(ACCENT_NAMES.values())
    assert set(spk["gender"]) == {"male", "female"} and set(spk["age_band"]) == {"forties", "twenties"}
    assert corpus.recordings["audio_path"].str.endswith(".mp3").all()
    assert corpus.problems.query("severity == 'error'").empty

    out = tmp_path / "run"
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[corpus]
kind = "textgrid"
root = "{res.out_dir}"

[corpus.options]
speakers = "{res.speakers_path}"
phone_scheme = "{res.phone_scheme}"

[groups]
attribute = "accent"
min_speakers = 2

[split]
use_corpus_split = false
test_fraction = 0.5
seed = 0

[[encoders]]
model = "tiny:wav2vec2"
name = "tiny"
dtype = "float32"
batch_size = 2

[baseline]
enabled = false

[lenses]
enabled = false

[probes]
folds = 2
l2_grid = [0.01]
threads = 1

[analysis]
n_perm = 99
n_boot = 30

[output]
dir = "{out}"
""")
    result = pipeline.run(cfg, stages=["corpus", "groups", "extract", "probe"], progress=False)
    acc = result.tables["probe_accuracy"]
    assert set(acc["test_group"].dropna()) >= set(ACCENT_NAMES.values())
    assert acc["estimate"].dropna().between(0, 1).all()

    groups = corpus.speakers.set_index("speaker")["accent"]
    by_group, tests, _ = res.quality_by_group(groups, n_perm=99, n_boot=100)
    assert set(by_group["group"]) == set(ACCENT_NAMES.values())
    assert np.isfinite(by_group.query("metric == 'confidence'")["estimate"]).all()
    assert tests["p_value"].notna().all()
