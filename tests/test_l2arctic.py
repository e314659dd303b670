"""L2-ARCTIC loader on a fake tree: 44.1 kHz wavs, forced-alignment and annotation TextGrids written as text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair.corpus.l2arctic import L2ARCTIC_SPEAKERS, load_l2arctic, parse_annotation_label
from phonefair.corpus.schema import CorpusError

Interval = tuple[float, float, str]


def textgrid(tiers: dict[str, list[Interval]], xmax: float) -> str:
    out = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {xmax}",
           "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for i, (name, ivs) in enumerate(tiers.items(), start=1):
        out += [f"    item [{i}]:", '        class = "IntervalTier"', f'        name = "{name}"', "        xmin = 0",
                f"        xmax = {xmax}", f"        intervals: size = {len(ivs)}"]
        for j, (a, b, lab) in enumerate(ivs, start=1):
            out += [f"        intervals [{j}]:", f"            xmin = {a}", f"            xmax = {b}",
                    f'            text = "{lab}"']
    return "\n".join(out) + "\n"


WORDS = [(0.0, 0.1, ""), (0.1, 0.5, "this"), (0.5, 0.9, "thing"), (0.9, 1.0, "")]
ALIGNED = [(0.0, 0.1, "sil"), (0.1, 0.2, "DH"), (0.2, 0.3, "IH1"), (0.3, 0.5, "S"), (0.5, 0.6, "TH"),
           (0.6, 0.7, "IH1"), (0.7, 0.9, "NG"), (0.9, 1.0, "sil")]
# DH->D substitution, S deleted, an added AH, a distortion on TH (T*), a stray ')' in "NG)"
ANNOTATED = [(0.0, 0.1, "sil"), (0.1, 0.2, "DH,D,s"), (0.2, 0.3, "IH1"), (0.3, 0.45, "S,sil,d"),
             (0.45, 0.5, "sil,AH,a"), (0.5, 0.6, "TH,T*,s"), (0.6, 0.7, "IH1"), (0.7, 0.9, "NG)"),
             (0.9, 1.0, "")]


def make_l2arctic(base: Path, speakers: tuple[str, ...] = ("ABA", "SKA"), utts: tuple[str, ...] = (
        "arctic_a0001", "arctic_a0002")) -> Path:
    rng = np.random.default_rng(0)
    for spk in speakers:
        for sub in ("wav", "transcript", "textgrid", "annotation"):
            (base / spk / sub).mkdir(parents=True)
        for u in utts:
            sf.write(base / spk / "wav" / f"{u}.wav", rng.standard_normal(44100) * 0.1, 44100, subtype="PCM_16")
            (base / spk / "transcript" / f"{u}.txt").write_text("this thing")
            (base / spk / "textgrid" / f"{u}.TextGrid").write_text(
                textgrid({"words": WORDS, "phones": ALIGNED}, 1.0))
        (base / spk / "annotation" / f"{utts[0]}.TextGrid").write_text(
            textgrid({"words": WORDS, "phones": ANNOTATED}, 1.0))
    return base


def test_forced_alignments(tmp_path: Path) -> None:
    corpus = load_l2arctic(make_l2arctic(tmp_path))
    assert corpus.counts["recordings"] == 4 and corpus.counts["speakers"] == 2
    rec = corpus.recordings.set_index("recording_id")
    assert rec.loc["ABA-arctic_a0001", "sampling_rate"] == 44100
    assert rec.loc["ABA-arctic_a0001", "duration"] == pytest.approx(1.0)
    assert corpus.audio_path("SKA-arctic_a0002").is_file()
    ph = corpus.phones[corpus.phones["recording_id"] == "ABA-arctic_a0001"]
    assert list(ph["phone"]) == ["sil", "dh", "ih", "s", "th", "ih", "ng", "sil"]
    assert list(ph["stress"].astype("Float64").fillna(-1)) == [-1, -1, 1, -1, -1, 1, -1, -1]
    assert list(ph["canonical"]) == list(ph["phone"])
    assert ph["perceived"].isna().all() and ph["error_type"].isna().all()
    assert list(ph["word"].fillna("-")) == ["-", "this", "this", "this", "thing", "thing", "thing", "-"]
    sp = corpus.speakers.set_index("speaker")
    assert sp.loc["ABA", "gender"] == "male" and sp.loc["ABA", "l1"] == "Arabic"
    assert sp.loc["SKA", "gender"] == "female"
    assert not (corpus.problems["severity"] == "error").any()


def test_annotation_perceived(tmp_path: Path) -> None:
    corpus = load_l2arctic(make_l2arctic(tmp_path), source="annotation")
    assert corpus.counts["recordings"] == 2  # only annotated utterances
    ph = corpus.phones[corpus.phones["recording_id"] == "ABA-arctic_a0001"].reset_index(drop=True)
    # S deleted -> not a perceived token; added AH is one; T* -> t with distortion
    assert list(ph["phone_raw"]) == ["sil", "D", "IH1", "AH", "T", "IH1", "NG"]
    assert list(ph["phone"]) == ["sil", "d", "ih", "ah", "t", "ih", "ng"]
    assert list(ph["canonical"].fillna("-")) == ["sil", "dh", "ih", "-", "th", "ih", "ng"]
    assert list(ph["perceived"].fillna("-")) == ["sil", "d", "ih", "ah", "t", "ih", "ng"]
    assert list(ph["error_type"].fillna("-")) == ["-", "s", "-", "a", "s", "-", "-"]
    assert list(ph["distortion"]) == [False, False, False, False, True, False, False]
    pr = corpus.problems
    assert pr["message"].str.contains("2 deleted").any()  # one per speaker
    cleaned = pr[pr["message"].str.contains("stray characters")]
    assert len(cleaned) == 2 and cleaned["line"].notna().all()
    assert corpus.extra["label"] == "perceived"


def test_annotation_canonical(tmp_path: Path) -> None:
    corpus = load_l2arctic(make_l2arctic(tmp_path, speakers=("ABA",)), source="annotation", label="canonical")
    ph = corpus.phones.reset_index(drop=True)
    # the added AH is not a canonical token; the deleted S is
    assert list(ph["phone_raw"]) == ["sil", "DH", "IH1", "S", "TH", "IH1", "NG"]
    assert list(ph["error_type"].fillna("-")) == ["-", "s", "-", "d", "s", "-", "-"]
    assert pd.isna(ph.loc[3, "perceived"]) and ph.loc[3, "canonical"] == "s"
    assert corpus.problems["message"].str.contains("1 added").any()


def test_known_broken_and_bad_files(tmp_path: Path) -> None:
    root = make_l2arctic(tmp_path, speakers=("YDCK",), utts=("arctic_a0209", "arctic_a0001"))
    (root / "YDCK" / "annotation" / "arctic_a0001.TextGrid").write_text(
        textgrid({"words": WORDS, "phones": ANNOTATED}, 1.0))
    (root / "YDCK" / "annotation" / "arctic_a0209.TextGrid").write_text(
        textgrid({"words": WORDS, "phones": ANNOTATED}, 1.0))
    ann = load_l2arctic(root, source="annotation")
    assert set(ann.recordings["recording_id"]) == {"YDCK-arctic_a0001"}
    assert ann.problems["message"].str.contains("known broken").any()
    # a truncated TextGrid and a missing wav are errors, the rest still loads
    (root / "YDCK" / "textgrid" / "arctic_a0001.TextGrid").write_text('File type = "ooTextFile"\nxmin = 0\n')
    (root / "YDCK" / "wav" / "arctic_a0209.wav").unlink()
    tg = load_l2arctic(root)
    assert tg.counts["recordings"] == 0
    errors = tg.problems[tg.problems["severity"] == "error"]
    assert len(errors) == 2
    assert errors["file"].str.endswith("arctic_a0001.TextGrid").any()


def test_parse_annotation_label() -> None:
    assert parse_annotation_label("AH0") == ("AH0", "AH0", None, False, False)
    assert parse_annotation_label(" DH , D* , s") == ("DH", "D", "s", True, False)
    assert parse_annotation_label("V``") == ("V", "V", None, False, True)
    for bad in ("DH,D", "DH,D,x", "a,b,c,d", ",D,s"):
        with pytest.raises(ValueError):
            parse_annotation_label(bad)


def test_speaker_table_and_errors(tmp_path: Path) -> None:
    assert len(L2ARCTIC_SPEAKERS) == 24
    assert sum(g == "female" for g, _ in L2ARCTIC_SPEAKERS.values()) == 12
    assert {l1 for _, l1 in L2ARCTIC_SPEAKERS.values()} == {"Arabic", "Mandarin", "Hindi", "Korean", "Spanish",
                                                            "Vietnamese"}
    corpus = load_l2arctic(make_l2arctic(tmp_path, speakers=("ZZZ",), utts=("arctic_a0001",)))
    assert pd.isna(corpus.speakers["gender"].iloc[0])
    assert corpus.problems["message"].str.contains("ZZZ is not one of").any()
    with pytest.raises(CorpusError, match="no L2-ARCTIC speaker"):
        load_l2arctic(tmp_path / "ZZZ" / "transcript")
    with pytest.raises(ValueError, match="source"):
        load_l2arctic(tmp_path, source="mfa")  # type: ignore[arg-type]
