"""lhotse adapter: corpus -> (RecordingSet, SupervisionSet) -> corpus round trip, and reading lhotse manifests."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair.corpus.lhotse_io import from_lhotse, to_lhotse
from phonefair.corpus.schema import Corpus

lhotse = pytest.importorskip("lhotse")
from lhotse.supervision import AlignmentItem  # noqa: E402


def small_corpus(tmp_path: Path) -> Corpus:
    for rid in ("r1", "r2"):
        sf.write(tmp_path / f"{rid}.wav", np.zeros(16000), 16000, subtype="PCM_16")
    phones = pd.DataFrame({
        "recording_id": ["r1", "r1", "r1", "r2", "r2"],
        "speaker": ["A", "A", "A", "B", "B"],
        "start": [0.0, 0.1, 0.25, 0.2, 0.3],
        "end": [0.1, 0.25, 0.4, 0.3, 0.5],
        "phone_raw": ["sil", "DH", "AH0", "IY1", "T"],
        "phone": ["sil", "dh", "ah", "iy", "t"],
        "stress": [None, None, 0, 1, None],
        "word": [None, "the", "the", "eat", "eat"],
        "split": ["train"] * 3 + ["test"] * 2,
    })
    speakers = pd.DataFrame({"speaker": ["A", "B"], "gender": ["female", "male"], "age": [31.5, np.nan],
                             "l1": ["Korean", "English"], "dialect": [None, "dr1"]})
    recordings = pd.DataFrame({"recording_id": ["r1", "r2"], "speaker": ["A", "B"],
                               "audio_path": ["r1.wav", "r2.wav"], "sampling_rate": [16000, 16000],
                               "num_channels": [1, 1], "duration": [1.0, 1.0], "channel": [None, None]})
    return Corpus(phones=phones, speakers=speakers, recordings=recordings, source=str(tmp_path))


def test_to_lhotse_fields(tmp_path: Path) -> None:
    recs, sups = to_lhotse(small_corpus(tmp_path))
    assert len(recs) == 2 and len(sups) == 2
    r1 = recs["r1"]
    assert r1.sampling_rate == 16000 and r1.num_samples == 16000
    assert Path(r1.sources[0].source).is_absolute() and Path(r1.sources[0].source).is_file()
    assert r1.load_audio().shape == (1, 16000)  # lhotse can read what we wrote
    s = next(iter(sups.find(recording_id="r1")))
    assert s.speaker == "A" and s.gender == "female"
    assert s.custom == {"age": 31.5, "l1": "Korean", "split": "train"}
    ali = s.alignment["phone"]
    assert [a.symbol for a in ali] == ["sil", "DH", "AH0"]
    assert ali[1].start == pytest.approx(0.1) and ali[1].duration == pytest.approx(0.15)
    assert [(w.symbol, w.start, round(w.end, 6)) for w in s.alignment["word"]] == [("the", 0.1, 0.4)]
    # manifests survive lhotse's own serialisation
    recs.to_file(tmp_path / "recs.jsonl.gz")
    sups.to_file(tmp_path / "sups.jsonl.gz")
    back = lhotse.load_manifest(tmp_path / "sups.jsonl.gz")
    assert next(iter(back.find(recording_id="r2"))).alignment["phone"][0].symbol == "IY1"


def test_round_trip(tmp_path: Path) -> None:
    c = small_corpus(tmp_path)
    back = from_lhotse(*to_lhotse(c), phone_scheme="arpabet")
    cols = ["recording_id", "speaker", "start", "end", "phone_raw", "phone", "stress", "word", "split"]
    pd.testing.assert_frame_equal(back.phones[cols], c.phones[cols], check_exact=False, atol=1e-9)
    sp_a = back.speakers.set_index("speaker").sort_index()
    sp_b = c.speakers.set_index("speaker").sort_index()
    for col in ("gender", "age", "l1", "dialect"):
        pd.testing.assert_series_equal(sp_a[col], sp_b[col], check_names=False, check_dtype=False)
    assert back.recordings.set_index("recording_id").loc["r1", "speaker"] == "A"
    assert back.audio_path("r1") == c.audio_path("r1")
    assert not (back.problems["severity"] == "error").any()


def test_from_lhotse_recipe_style(tmp_path: Path) -> None:
    """Manifests as lhotse recipes write them: 'M'/'F' genders, custom accent, alignment times on the recording."""
    sf.write(tmp_path / "a.wav", np.zeros(32000), 16000, subtype="PCM_16")
    rec = lhotse.Recording.from_file(tmp_path / "a.wav", recording_id="a")
    sup = lhotse.SupervisionSegment(
        id="a-1", recording_id="a", start=1.0, duration=0.5, speaker="aba", gender="M",
        custom={"accent": "Arabic"},
        alignment={"phone": [AlignmentItem("HH", 1.0, 0.1), AlignmentItem("AY1", 1.1, 0.3),
                             AlignmentItem("XX", 1.4, 0.1)]})
    c = from_lhotse(lhotse.RecordingSet.from_recordings([rec]), lhotse.SupervisionSet.from_segments([sup]))
    assert list(c.phones["start"]) == [1.0, 1.1]  # recording-relative, not shifted by the supervision start
    assert list(c.phones["phone"]) == ["hh", "ay"] and list(c.phones["stress"].fillna(-1)) == [-1, 1]
    assert c.problems["message"].str.contains("'XX'").any()  # unknown symbol dropped and reported
    sp = c.speakers.set_index("speaker")
    assert sp.loc["aba", "gender"] == "male" and sp.loc["aba", "accent"] == "Arabic"
    # a supervision without phone alignment is reported, not fatal
    sup2 = lhotse.SupervisionSegment(id="a-2", recording_id="a", start=0.0, duration=0.5, speaker="aba")
    c2 = from_lhotse(lhotse.RecordingSet.from_recordings([rec]), lhotse.SupervisionSet.from_segments([sup2]))
    assert len(c2.phones) == 0 and c2.problems["message"].str.contains("no phone alignment").any()


def test_clear_error_without_lhotse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "lhotse" or name.startswith("lhotse."):
            raise ImportError("No module named 'lhotse'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'phonefair\[lhotse\]'"):
        to_lhotse(small_corpus(tmp_path))


def test_load_corpus_reads_a_lhotse_manifest_directory(tmp_path: Path) -> None:
    from phonefair.corpus import load_corpus

    corpus = small_corpus(tmp_path)
    recs, sups = to_lhotse(corpus)
    man = tmp_path / "manifests"
    man.mkdir()
    recs.to_file(man / "demo_recordings.jsonl.gz")
    sups.to_file(man / "demo_supervisions.jsonl.gz")
    back = load_corpus("lhotse", man)
    assert len(back.phones) == len(corpus.phones)
    assert back.phones["phone"].tolist() == corpus.phones["phone"].tolist()
    (man / "extra_recordings.jsonl").write_text("")
    with pytest.raises(Exception, match="exactly one"):
        load_corpus("lhotse", man)
