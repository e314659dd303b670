"""Buckeye loader on fake tracks: extracted folders and nested zips, ESPS/xlabel .phones/.words."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair.corpus.buckeye import (BUCKEYE_SPEAKERS, BUCKEYE_TO_ARPABET, is_nonspeech, load_buckeye,
                                      read_xlabel)
from phonefair.corpus.phonesets import map_label
from phonefair.corpus.schema import CorpusError

HEADER = "signal s0101a\ntype 0\ncolor 121\nfont -misc-*-bold-*-*-*-15-*-*-*-*-*-*-*\nseparator ;\nnfields 1\n#\n"
# end times; the first segment starts at 0. "ae+1", "t;" suffixes; a line with no label; nasalised "aan";
# IVER (interviewer) and VOCNOISE markers.
PHONES = HEADER + """\
    0.2000  121 SIL
    0.3000  121 dh
    0.4000  121 ae+1
    0.5000  121 t;
    0.6000  121
    0.7000  121 k
    0.8000  121 aan
    0.9000  121 tq
    1.2000  121 <IVER>
    1.3000  121 VOCNOISE
    1.5000  121 en
"""
WORDS = HEADER + """\
    0.2000  121 <SIL>; U; U; null
    0.5000  121 that; dh ae t; dh ae t; DT
    0.9000  121 cot; k aa t; k aan tq; NN
    1.2000  121 <IVER>; U; U; null
    1.5000  121 and; ae n d; en; CC
"""


def _track_files(track: str) -> dict[str, bytes]:
    buf = io.BytesIO()
    sf.write(buf, (np.random.default_rng(0).standard_normal(16000 * 2) * 0.1), 16000, format="WAV",
             subtype="PCM_16")
    return {f"{track}.wav": buf.getvalue(), f"{track}.phones": PHONES.encode(), f"{track}.words": WORDS.encode()}


def make_extracted(base: Path, tracks: tuple[str, ...] = ("s0101a", "s0201b")) -> Path:
    for t in tracks:
        d = base / t[:3] / t
        d.mkdir(parents=True)
        for name, data in _track_files(t).items():
            (d / name).write_bytes(data)
    return base


def make_zipped(base: Path, speaker: str = "s03", tracks: tuple[str, ...] = ("s0301a",)) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(base / f"{speaker}.zip", "w") as outer:
        for t in tracks:
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w") as z:
                for name, data in _track_files(t).items():
                    z.writestr(f"{t}/{name}" if t.endswith("a") else name, data)
            outer.writestr(f"{speaker}/{t}.zip", inner.getvalue())
    return base


def test_extracted_tracks(tmp_path: Path) -> None:
    corpus = load_buckeye(make_extracted(tmp_path))
    assert set(corpus.recordings["recording_id"]) == {"s0101a", "s0201b"}
    assert corpus.recordings["sampling_rate"].iloc[0] == 16000
    assert corpus.audio_path("s0101a").is_file()
    ph = corpus.phones[corpus.phones["recording_id"] == "s0101a"].reset_index(drop=True)
    # the unlabeled segment (0.5-0.6) is skipped; the next starts at its end
    assert list(ph["phone_raw"]) == ["SIL", "dh", "ae", "t", "k", "aan", "tq", "<IVER>", "VOCNOISE", "en"]
    assert list(ph["phone"].fillna("-")) == ["sil", "dh", "ae", "t", "k", "aa", "t", "-", "-", "n"]
    assert np.allclose(ph["start"], [0.0, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 1.2, 1.3])
    assert np.allclose(ph["end"], [0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 1.2, 1.3, 1.5])
    assert list(ph["word"].fillna("-")) == ["-", "that", "that", "that", "cot", "cot", "cot", "-", "-", "and"]
    pr = corpus.problems
    nolabel = pr[pr["field"] == "label"]
    assert len(nolabel) == 2 and set(nolabel["line"]) == {12}  # one per track, at the right line
    assert pr["message"].str.contains(r"<IVER> x2").any()
    sp = corpus.speakers.set_index("speaker")
    assert sp.loc["s01", "gender"] == "female" and sp.loc["s01", "age_band"] == "young"
    assert sp.loc["s02", "gender"] == "female" and sp.loc["s02", "age_band"] == "old"
    assert sp.loc["s02", "interviewer_gender"] == "male"


def test_zipped_tracks_need_extract_to(tmp_path: Path) -> None:
    root = make_zipped(tmp_path / "corpus")
    with pytest.raises(CorpusError, match="extract_to"):
        load_buckeye(root)
    corpus = load_buckeye(root, extract_to=tmp_path / "cache")
    assert list(corpus.recordings["recording_id"]) == ["s0301a"]
    assert Path(corpus.recordings["audio_path"].iloc[0]).is_absolute()  # outside the root
    assert corpus.audio_path("s0301a").is_file()
    assert corpus.extra["tracks"]["from_zips"] == 1
    assert corpus.speakers["gender"].iloc[0] == "male"
    # mixed: extracted tracks are used as they are, zips only for the missing ones
    make_extracted(root, tracks=("s0301a", "s0401a"))
    mixed = load_buckeye(root, extract_to=tmp_path / "cache2")
    assert set(mixed.recordings["recording_id"]) == {"s0301a", "s0401a"}
    assert mixed.extra["tracks"] == {"extracted": 2, "from_zips": 0}


def test_user_speaker_table_overrides(tmp_path: Path) -> None:
    user = pd.DataFrame({"speaker": ["S01", "s99"], "age_band": ["old", "young"], "age": [45.0, 20.0]})
    corpus = load_buckeye(make_extracted(tmp_path), speakers=user)
    sp = corpus.speakers.set_index("speaker")
    assert sp.loc["s01", "age_band"] == "old" and sp.loc["s01", "age"] == 45.0
    assert sp.loc["s02", "age_band"] == "old" and pd.isna(sp.loc["s02", "age"])
    assert corpus.problems["message"].str.contains("s99").any()
    with pytest.raises(CorpusError, match="speaker"):
        load_buckeye(tmp_path, speakers=pd.DataFrame({"who": ["s01"]}))


def test_bad_files(tmp_path: Path) -> None:
    root = make_extracted(tmp_path, tracks=("s0101a", "s0102a", "s0103a"))
    (root / "s01" / "s0102a" / "s0102a.phones").write_text("no header at all\n 0.1 121 aa\n")
    (root / "s01" / "s0103a" / "s0103a.wav").unlink()
    corpus = load_buckeye(root)
    assert list(corpus.recordings["recording_id"]) == ["s0101a"]
    errors = corpus.problems[corpus.problems["severity"] == "error"]
    assert len(errors) == 2
    assert errors["message"].str.contains("header").any() and errors["message"].str.contains("s0103a.wav").any()


def test_read_xlabel_and_maps(tmp_path: Path) -> None:
    p = tmp_path / "x.phones"
    p.write_text(HEADER + " 0.1 121 aa\n 0.05 121 b\n 0.3 121 ih; *\n")
    segs, problems = read_xlabel(p)
    assert [(a, b, lab) for a, b, lab, _ in segs] == [(0.0, 0.1, "aa"), (0.05, 0.3, "ih")]
    assert problems[0]["field"] == "time" and problems[0]["line"] == 9
    assert is_nonspeech("{B_TRANS}") and is_nonspeech("SIL") and not is_nonspeech("en")
    # every Buckeye extra maps to exactly one ARPABET-39 class
    for label, arpa in BUCKEYE_TO_ARPABET.items():
        targets, _ = map_label(arpa, "arpabet")
        assert len(targets) == 1, label
    assert map_label(BUCKEYE_TO_ARPABET["ern"], "arpabet")[0] == ("er",)
    assert len(BUCKEYE_SPEAKERS) == 40
    assert sum(v[0] == "f" for v in BUCKEYE_SPEAKERS.values()) == 20
    assert sum(v[1] == "y" for v in BUCKEYE_SPEAKERS.values()) == 20
