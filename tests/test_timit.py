"""TIMIT loader on fake TIMIT trees (NIST SPHERE audio written by soundfile), both layouts, both letter cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair.corpus.schema import CorpusError
from phonefair.corpus.timit import (CORE_TEST_SPEAKERS, DEV_SPEAKERS, load_timit, read_spkrinfo,
                                    words_by_midpoint)

# (begin, end, label) in 16 kHz samples: h# sh ix q ae d h#  (q is deleted by the 61->39 folding)
PHN = [(0, 3050, "h#"), (3050, 4559, "sh"), (4559, 5723, "ix"), (5723, 6000, "q"), (6000, 7000, "ae"),
       (7000, 8000, "d"), (8000, 9600, "h#")]
WRD = [(3050, 5723, "she"), (5723, 8000, "had")]
N_SAMPLES = 9600

SPKRINFO = """\
; This file lists speaker information
;
;  ID  Sex DR Use  RecDate   BirthDate  Ht    Race Edu  Comments
;
ABC0  M  1  TRN  03/03/86  06/17/60  5'11"  WHT  BS   a comment with spaces
CJF0  F  1  TRN  02/15/86  01/15/61  5'4"   BLK  MS
DHC0  F  2  TST  01/01/87  ??/??/??  5'6"   ???  ??
ADG0  F  4  TST  01/01/87  01/01/57  5'2"   ORN  PHD
XYZ1  M  3  TST  01/01/87  01/01/50  6'0"   SPN  HS
"""

SPEAKERS = [("TRAIN", "DR1", "MABC0"), ("TRAIN", "DR1", "FCJF0"), ("TEST", "DR2", "FDHC0"),
            ("TEST", "DR4", "FADG0"), ("TEST", "DR3", "MXYZ1")]


def _lines(segs: list[tuple[int, int, str]]) -> str:
    return "".join(f"{b} {e} {w}\n" for b, e, w in segs)


def make_timit(base: Path, *, lower: bool = False, kaggle: bool = False, spkrinfo: bool = True,
               sentences: tuple[str, ...] = ("SA1", "SI943", "SX43"), riff_copy: bool = False) -> Path:
    """Write a fake TIMIT tree; returns the root to pass to the loader."""
    c = str.lower if lower else str
    top = base / ("data" if kaggle else c("TIMIT"))
    rng = np.random.default_rng(0)
    for split, dr, spk in SPEAKERS:
        d = top / c(split) / c(dr) / c(spk)
        d.mkdir(parents=True)
        for sent in sentences:
            x = (rng.standard_normal(N_SAMPLES) * 1000).astype(np.int16)
            wav = d / c(f"{sent}.WAV")
            sf.write(wav, x, 16000, format="NIST", subtype="PCM_16")
            if riff_copy:
                sf.write(d / (c(f"{sent}.WAV") + ".wav"), x, 16000, format="WAV", subtype="PCM_16")
            (d / c(f"{sent}.PHN")).write_text(_lines(PHN))
            (d / c(f"{sent}.WRD")).write_text(_lines(WRD))
            (d / c(f"{sent}.TXT")).write_text(f"0 {N_SAMPLES} She had.\n")
    if spkrinfo:
        doc = top / c("DOC")
        doc.mkdir(parents=True)
        (doc / c("SPKRINFO.TXT")).write_text(SPKRINFO)
    return base


@pytest.mark.parametrize("lower,kaggle", [(False, False), (True, False), (False, True), (True, True)])
def test_layouts_and_cases(tmp_path: Path, lower: bool, kaggle: bool) -> None:
    corpus = load_timit(make_timit(tmp_path, lower=lower, kaggle=kaggle))
    assert set(corpus.speakers["speaker"]) == {s for _, _, s in SPEAKERS}
    # SA excluded by default: 5 speakers x 2 sentences
    assert len(corpus.recordings) == 10
    assert set(corpus.recordings["recording_id"]) >= {"MABC0_SI943", "FCJF0_SX43"}
    assert not corpus.recordings["recording_id"].str.contains("SA1").any()
    assert (corpus.recordings["sampling_rate"] == 16000).all()
    assert np.allclose(corpus.recordings["duration"], N_SAMPLES / 16000)
    # paths are relative to the source and resolve to real files
    for rid in corpus.recordings["recording_id"]:
        assert corpus.audio_path(rid).is_file()


def test_phones_times_words_and_folding(tmp_path: Path) -> None:
    corpus = load_timit(make_timit(tmp_path))
    ph = corpus.phones[corpus.phones["recording_id"] == "MABC0_SI943"]
    # q deleted: 7 segments -> 6 tokens
    assert list(ph["phone_raw"]) == ["h#", "sh", "ix", "ae", "d", "h#"]
    assert list(ph["phone"]) == ["sil", "sh", "ih", "ae", "d", "sil"]
    assert ph["start"].iloc[1] == pytest.approx(3050 / 16000)
    assert ph["end"].iloc[1] == pytest.approx(4559 / 16000)
    assert ph["end"].iloc[-1] == pytest.approx(9600 / 16000)
    # words by midpoint; h# outside any word
    assert list(ph["word"].astype(object).where(ph["word"].notna(), None)) == [None, "she", "she", "had", "had",
                                                                                None]
    assert (ph["split"] == "train").all()
    assert ph["stress"].isna().all()
    # q deletion is reported as info with its count (10 utterances x 1 q)
    q = corpus.problems[corpus.problems["message"].str.contains("'q'")]
    assert len(q) == 1 and q["severity"].iloc[0] == "info" and "10 token" in q["message"].iloc[0]
    assert corpus.extra["deleted_q"] == 10
    assert not (corpus.problems["severity"] == "error").any()
    assert corpus.phones.attrs["provenance"]["phone_scheme"] == "timit"


def test_speaker_table_from_spkrinfo(tmp_path: Path) -> None:
    corpus = load_timit(make_timit(tmp_path, lower=True))
    sp = corpus.speakers.set_index("speaker")
    assert sp.loc["MABC0", "gender"] == "male" and sp.loc["FCJF0", "gender"] == "female"
    assert sp.loc["MABC0", "dialect"] == "dr1" and sp.loc["MABC0", "dialect_name"] == "New England"
    # 1986-03-03 minus 1960-06-17 = 9390 days
    assert sp.loc["MABC0", "age"] == pytest.approx(round(9390 / 365.25, 2))
    assert sp.loc["MABC0", "race"] == "white" and sp.loc["MABC0", "education"] == "BS"
    assert sp.loc["MABC0", "height_cm"] == pytest.approx(71 * 2.54, abs=0.05)
    assert sp.loc["MABC0", "comments"] == "a comment with spaces"
    assert pd.isna(sp.loc["FDHC0", "age"]) and pd.isna(sp.loc["FDHC0", "race"])
    assert pd.isna(sp.loc["FDHC0", "education"])
    assert corpus.problems["message"].str.contains("FDHC0: cannot parse dates").any()


def test_without_spkrinfo_falls_back_with_warning(tmp_path: Path) -> None:
    corpus = load_timit(make_timit(tmp_path, spkrinfo=False))
    sp = corpus.speakers.set_index("speaker")
    assert sp.loc["FADG0", "gender"] == "female" and sp.loc["MXYZ1", "gender"] == "male"
    assert sp.loc["FADG0", "dialect"] == "dr4"
    assert sp["age"].isna().all()
    warn = corpus.problems[corpus.problems["field"] == "SPKRINFO.TXT"]
    assert len(warn) == 1 and warn["severity"].iloc[0] == "warning"


def test_include_sa(tmp_path: Path) -> None:
    root = make_timit(tmp_path)
    without = load_timit(root)
    with_sa = load_timit(root, include_sa=True)
    assert len(with_sa.recordings) == 15
    assert "MABC0_SA1" in set(with_sa.recordings["recording_id"])
    assert without.extra["excluded_sa_utterances"] == 5
    assert without.problems["message"].str.contains("5 SA utterance").any()


def test_core_test_splits(tmp_path: Path) -> None:
    corpus = load_timit(make_timit(tmp_path), splits="core-test")
    split = corpus.phones.groupby("speaker")["split"].first()
    assert split["MABC0"] == "train"
    assert split["FDHC0"] == "test"  # core test
    assert split["FADG0"] == "dev"  # Kaldi dev list
    assert split["MXYZ1"] == "test_other"
    none = load_timit(tmp_path, splits="none")
    assert none.phones["split"].isna().all()
    assert len(CORE_TEST_SPEAKERS) == 24 and len(DEV_SPEAKERS) == 50
    assert not CORE_TEST_SPEAKERS & DEV_SPEAKERS
    # 2 male + 1 female per dialect region in the core test set
    assert sum(s.startswith("F") for s in CORE_TEST_SPEAKERS) == 8


def test_bad_files_are_reported_and_skipped(tmp_path: Path) -> None:
    root = make_timit(tmp_path)
    spk = tmp_path / "TIMIT" / "TRAIN" / "DR1" / "MABC0"
    (spk / "SI943.PHN").write_text("0 3050 h#\n3050 oops sh\n")
    (spk / "SX43.WAV").write_bytes(b"not audio at all")
    (tmp_path / "TIMIT" / "TRAIN" / "DR1" / "FCJF0" / "SX43.WRD").unlink()
    corpus = load_timit(root)
    rec = set(corpus.recordings["recording_id"])
    assert "MABC0_SI943" not in rec and "MABC0_SX43" not in rec and "FCJF0_SX43" in rec
    pr = corpus.problems
    bad_line = pr[pr["file"].str.endswith("SI943.PHN", na=False) & (pr["severity"] == "error")]
    assert len(bad_line) == 1 and bad_line["line"].iloc[0] == 2
    assert ((pr["severity"] == "error") & pr["file"].str.endswith("SX43.WAV", na=False)).any()
    assert corpus.phones.loc[corpus.phones["recording_id"] == "FCJF0_SX43", "word"].isna().all()


def test_riff_copy_is_not_preferred(tmp_path: Path) -> None:
    corpus = load_timit(make_timit(tmp_path, riff_copy=True, sentences=("SI943",)))
    assert len(corpus.recordings) == 5  # the .WAV.wav copies are not extra utterances
    assert all(p.endswith("SI943.WAV") for p in corpus.recordings["audio_path"])
    # the fallback is used when the SPHERE original is missing
    (tmp_path / "TIMIT" / "TRAIN" / "DR1" / "MABC0" / "SI943.WAV").unlink()
    again = load_timit(tmp_path)
    path = again.recordings.set_index("recording_id").loc["MABC0_SI943", "audio_path"]
    assert path.endswith("SI943.WAV.wav") and again.extra["riff_wav_fallbacks"] == 1


def test_unknown_label_policy(tmp_path: Path) -> None:
    root = make_timit(tmp_path, sentences=("SI943",))
    (tmp_path / "TIMIT" / "TRAIN" / "DR1" / "MABC0" / "SI943.PHN").write_text(
        _lines([(0, 3050, "h#"), (3050, 4559, "zz"), (4559, 9600, "h#")]))
    dropped = load_timit(root)
    assert "zz" not in set(dropped.phones["phone_raw"])
    assert dropped.problems["message"].str.contains("'zz'").any()
    kept = load_timit(root, unknown="keep")
    row = kept.phones[kept.phones["phone_raw"] == "zz"]
    assert len(row) == 1 and pd.isna(row["phone"].iloc[0])
    with pytest.raises(ValueError, match="zz"):
        load_timit(root, unknown="error")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not a directory"):
        load_timit(tmp_path / "missing")
    with pytest.raises(CorpusError, match="no TIMIT utterances"):
        load_timit(tmp_path)
    with pytest.raises(ValueError, match="splits"):
        load_timit(tmp_path, splits="kaldi")  # type: ignore[arg-type]


def test_read_spkrinfo_and_words_by_midpoint(tmp_path: Path) -> None:
    p = tmp_path / "spkrinfo.txt"
    p.write_text(SPKRINFO + "BAD LINE\n")
    table, problems = read_spkrinfo(p)
    assert len(table) == 5 and table["speaker"].iloc[0] == "MABC0"
    assert any(pr["line"] == 10 and pr["field"] == "line" for pr in problems)
    assert words_by_midpoint([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [(0.9, 2.0, "a"), (2.4, 3.0, "b")]) == [
        None, "a", "b"]
