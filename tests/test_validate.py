"""validate_corpus: each check fires on a planted defect and stays quiet on a clean corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair.corpus.schema import Corpus, CorpusError, PROBLEM_COLUMNS
from phonefair.corpus.validate import ValidationReport, validate_corpus


def make_corpus(root: Path, *, n_speakers: int = 6, dur: float = 1.0) -> Corpus:
    rng = np.random.default_rng(0)
    recs, phones = [], []
    for k in range(n_speakers):
        spk = f"s{k}"
        p = root / f"{spk}.wav"
        sf.write(p, (0.1 * rng.standard_normal(int(16000 * dur))).astype(np.float32), 16000)
        recs.append({"recording_id": spk, "speaker": spk, "audio_path": p.name, "sampling_rate": 16000,
                     "num_channels": 1, "duration": dur})
        for j, ph in enumerate(["b", "iy", "t"]):
            phones.append({"recording_id": spk, "speaker": spk, "start": 0.2 * j, "end": 0.2 * (j + 1),
                           "phone_raw": ph.upper(), "phone": ph, "line": 10 + j, "align_file": f"{spk}.TextGrid"})
    speakers = pd.DataFrame({"speaker": [f"s{k}" for k in range(n_speakers)],
                             "gender": ["f" if k % 2 else "m" for k in range(n_speakers)],
                             # explicit NaN: schema._typed cannot cast an added all-<NA> column to float64
                             "age": np.nan})
    return Corpus(phones=pd.DataFrame(phones), speakers=speakers, recordings=pd.DataFrame(recs), name="toy",
                  source=str(root))


def test_clean_corpus_is_ok(tmp_path: Path) -> None:
    rep = validate_corpus(make_corpus(tmp_path), group_by="gender", min_speakers_per_group=3)
    assert isinstance(rep, ValidationReport) and rep.ok and rep.problems.empty
    assert list(rep.problems.columns) == list(PROBLEM_COLUMNS)
    s = rep.summary
    assert (s["speakers"], s["recordings"], s["phones"]) == (6, 6, 18)
    assert s["hours"] == pytest.approx(6 / 3600)
    assert s["coverage"]["present"] == ["iy", "b", "t"] and len(s["coverage"]["missing"]) == 36
    assert s["coverage_by_group"]["f"]["speakers"] == 3
    text = rep.to_text()
    assert "OK" in text and "3/39" in text and "no problems" in text


def test_each_check_fires(tmp_path: Path) -> None:
    c = make_corpus(tmp_path)
    ph = c.phones.copy()
    # s0: last phone past the end of the 1 s audio (midpoint 1.1 s); s1: 5 ms past (tolerated)
    ph.loc[(ph.recording_id == "s0") & (ph.phone == "t"), ["start", "end"]] = [1.0, 1.2]
    ph.loc[(ph.recording_id == "s1") & (ph.phone == "t"), "end"] = 1.005
    ph.loc[(ph.recording_id == "s2") & (ph.phone == "iy"), "start"] = 0.1  # overlaps "b" [0, 0.2]
    ph.loc[(ph.recording_id == "s3") & (ph.phone == "b"), "end"] = 0.0  # zero-length
    ph.loc[(ph.recording_id == "s4") & (ph.phone == "b"), "start"] = -0.1  # negative
    ph.loc[(ph.recording_id == "s5") & (ph.phone == "t"), "phone"] = pd.NA  # unmapped
    extra = pd.DataFrame([{"recording_id": "s5", "speaker": "ghost", "start": 0.7, "end": 0.8, "phone_raw": "B",
                           "phone": "b"}])
    spk = pd.concat([c.speakers, pd.DataFrame({"speaker": ["silent"], "gender": ["x"], "age": [np.nan]})], ignore_index=True)
    (tmp_path / "s1.wav").unlink()
    bad = c.with_tables(phones=pd.concat([ph, extra], ignore_index=True), speakers=spk)
    rep = validate_corpus(bad, group_by="gender", min_speakers_per_group=3)
    assert not rep.ok
    pr = rep.problems

    def one(text: str) -> pd.Series:
        hits = pr[pr["message"].str.contains(text, regex=False)]
        assert len(hits) == 1, (text, pr["message"].tolist())
        return hits.iloc[0]

    past = one("1 phone(s) lie past the end of the audio")
    assert past["severity"] == "error" and past["file"] == "s0.TextGrid" and past["line"] == 12
    assert "s1" not in " ".join(pr.loc[pr["message"].str.contains("past the"), "message"])
    assert one("s1.wav: audio file does not exist")["severity"] == "error"
    assert one("overlaps the previous phone")["file"] == "s2.TextGrid"
    assert one("zero or negative length")["line"] == 10
    assert one("starts before 0")["severity"] == "error"
    assert one("unmapped label 'T'")["severity"] == "warning"
    assert one("speaker 'ghost' has phones but no row")["field"] == "speaker"
    assert one("speaker 'silent' has no phones")["severity"] == "warning"
    assert one("group gender='x' has 0 speaker(s)")["action"] == "too small for per-group analysis"
    assert one("1 speaker(s) with phones have no 'gender'")["severity"] == "warning"
    text = rep.to_text()
    assert "NOT OK" in text and "s0.TextGrid:12" in text and "ERROR" in text
    assert rep.summary["phones_unmapped"] == 1


def test_merges_corpus_problems_and_checks_duration(tmp_path: Path) -> None:
    c = make_corpus(tmp_path, n_speakers=2)
    rec = c.recordings.copy()
    rec.loc[0, "duration"] = 3.0  # table disagrees with the file
    c = Corpus(phones=c.phones, speakers=c.speakers, recordings=rec, source=c.source,
               problems=pd.DataFrame([{"severity": "warning", "file": "x.TextGrid", "line": 3, "message": "loader"}]))
    rep = validate_corpus(c)
    assert rep.problems["message"].iloc[0] == "loader"
    assert rep.problems["message"].str.contains("recordings table says 3.000 s").sum() == 1
    assert rep.ok  # warnings only
    assert validate_corpus(c, check_audio=False).problems["message"].tolist() == ["loader"]


def test_decode_audio_and_bad_args(tmp_path: Path) -> None:
    c = make_corpus(tmp_path, n_speakers=1)
    sf.write(tmp_path / "s0.wav", np.zeros(16000, dtype=np.float32), 16000)
    rep = validate_corpus(c, decode_audio=True)
    assert rep.problems["message"].str.contains("silent audio").sum() == 1
    with pytest.raises(CorpusError, match="group_by='region'"):
        validate_corpus(c, group_by="region")
    with pytest.raises(ValueError, match="min_speakers_per_group"):
        validate_corpus(c, min_speakers_per_group=0)


def test_audio_content_and_alignment_end_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15 rows 2, 5, 10 and part B: validate reads the audio, not only headers. NaN samples, digital silence
    and audio shorter than one encoder frame are errors naming the file; phones past the end of the audio follow
    extraction's rule (midpoint at or after the end: error; only the end past it: warning)."""
    c = make_corpus(tmp_path)  # 1 s of noise per speaker, phones [0, 0.2) [0.2, 0.4) [0.4, 0.6)
    x = sf.read(tmp_path / "s0.wav", dtype="float32")[0]
    x[5] = np.inf
    sf.write(tmp_path / "s0.wav", x, 16000, subtype="FLOAT")
    sf.write(tmp_path / "s1.wav", np.zeros(16000, np.float32), 16000)
    sf.write(tmp_path / "s2.wav", 0.1 * np.ones(160, np.float32), 16000)  # 10 ms
    ph = c.phones.copy()
    t3 = (ph.recording_id == "s3") & (ph.phone == "t")
    ph.loc[t3, ["start", "end"]] = [1.1, 1.2]  # midpoint past the 1 s audio
    t4 = (ph.recording_id == "s4") & (ph.phone == "t")
    ph.loc[t4, ["start", "end"]] = [0.9, 1.05]  # midpoint inside, end 50 ms past
    rep = validate_corpus(c.with_tables(phones=ph), progress=True)
    assert "validate audio" in capsys.readouterr().err  # a progress bar over the recordings
    pr = rep.problems

    def one(file: str, text: str) -> pd.Series:
        hits = pr[pr["file"].fillna("").str.endswith(file) & pr["message"].str.contains(text, regex=False)]
        assert len(hits) == 1, (file, text, pr[["file", "message"]].to_string())
        return hits.iloc[0]

    assert one("s0.wav", "NaN or infinite")["severity"] == "error"
    assert one("s1.wav", "digital silence")["severity"] == "error"
    short = one("s2.wav", "shorter than one encoder frame")
    assert short["severity"] == "error" and short["field"] == "duration"
    past = one("s3.TextGrid", "past the end of the audio")
    assert (past["severity"], past["line"], past["field"]) == ("error", 12, "end")
    part = one("s4.TextGrid", "end past the audio")
    assert (part["severity"], part["line"]) == ("warning", 12)
    assert not rep.ok
    # content checks can be skipped on huge corpora: header checks (duration, alignment end) still run
    quick = validate_corpus(c.with_tables(phones=ph), decode_audio=False).problems
    assert not quick["message"].str.contains("infinite|digital silence").any()
    assert not rep.problems["field"].eq("sampling_rate").any()  # a 50 ms overrun is not a header problem
    assert quick["message"].str.contains("shorter than one encoder frame").sum() == 1


def test_sample_rate_header_that_does_not_fit_the_alignment(tmp_path: Path) -> None:
    """Issue 15 row 2 (a 48 kHz header on 16 kHz data): the audio looks 3x shorter than its alignment; validate
    says which rate would fit."""
    c = make_corpus(tmp_path, n_speakers=1)
    x = sf.read(tmp_path / "s0.wav", dtype="float32")[0]
    sf.write(tmp_path / "s0.wav", x, 48000)
    rep = validate_corpus(c)
    hint = rep.problems[rep.problems["field"] == "sampling_rate"]
    assert len(hint) == 1 and "48000" in hint["message"].iloc[0] and "16000" in hint["message"].iloc[0]
    assert hint["file"].iloc[0].endswith("s0.wav") and not rep.ok


def test_real_loader_output_validates(real_samples: Path, tmp_path: Path) -> None:
    import shutil

    from phonefair.corpus.textgrid_corpus import load_textgrid_corpus
    d = tmp_path / "r" / "spk"
    d.mkdir(parents=True)
    shutil.copy(real_samples / "praatio" / "bobby.wav", d)
    shutil.copy(real_samples / "praatio" / "bobby_phones.TextGrid", d / "bobby.TextGrid")
    rep = validate_corpus(load_textgrid_corpus(d.parent))
    assert not rep.ok  # the unknown "PT" token was dropped: an error row from the loader
    assert rep.problems["message"].str.contains("'PT'").sum() == 1
    assert rep.summary["phones"] == 12
