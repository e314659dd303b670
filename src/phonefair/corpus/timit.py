"""TIMIT (LDC93S1) loader: the original LDC layout and the Kaggle/lhotse ``data/`` copy, any letter case.

Layout: ``<anything>/{TRAIN,TEST}/DR{1-8}/{M|F}XXXN/{SA,SI,SX}*.{WAV,PHN,WRD,TXT}``; the loader walks ``root``
recursively, so ``root`` may be the ``TIMIT`` folder, its parent, or the Kaggle ``data`` folder's parent.

* ``.PHN`` / ``.WRD`` lines are ``BEGIN END LABEL`` in 16 kHz samples, END exclusive; times are ``sample / 16000``.
* Audio is NIST SPHERE (read by soundfile). Some distributions add RIFF copies named ``SA1.WAV.wav``: the loader
  uses the SPHERE original ``SA1.WAV`` and falls back to the RIFF copy only when the original is missing.
* Speaker ids are the speaker *directory* name upper-cased (``"MABC0"``, sex letter included); ``SPKRINFO.TXT``
  leaves the sex letter out (``ABC0``), so the loader joins on ``Sex + ID``.
* Phones are folded 61 -> 39 with the ``"timit"`` phone map (Lee & Hon 1989); the glottal stop ``q`` has no
  39-class and is deleted, reported as one ``info`` problem row with its count.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from phonefair.corpus.audio import AudioError, audio_info
from phonefair.corpus.phonesets import check_unknown_policy, normalize_phones
from phonefair.corpus.schema import Corpus, CorpusError, corpus_root, problems_frame

__all__ = ["CORE_TEST_SPEAKERS", "DEV_SPEAKERS", "DIALECT_NAMES", "load_timit", "read_spkrinfo",
           "words_by_midpoint"]

TIMIT_SR = 16000

#: TIMIT dialect regions (TIMIT.TXT / NLTK's TIMIT reader docstring)
DIALECT_NAMES: dict[str, str] = {
    "dr1": "New England", "dr2": "Northern", "dr3": "North Midland", "dr4": "South Midland",
    "dr5": "Southern", "dr6": "New York City", "dr7": "Western", "dr8": "Army Brat (moved around)",
}

# SPKRINFO.TXT codes -> readable values (the corpus' own categories, spelled out)
_RACE = {"WHT": "white", "BLK": "black", "AMR": "american_indian", "SPN": "spanish_american",
         "ORN": "oriental", "HIS": "hispanic"}
_EDU = {"HS": "HS", "AS": "AS", "BS": "BS", "MS": "MS", "PHD": "PHD"}

#: The standard 24-speaker core test set (2 male + 1 female per dialect region), as in Kaldi's
#: ``egs/timit/s5/conf/test_spk.list`` and lhotse ``recipes/timit.py::get_speakers`` (lhotse 1.33.0).
CORE_TEST_SPEAKERS: frozenset[str] = frozenset(s.upper() for s in (
    "fdhc0", "felc0", "fjlm0", "fmgd0", "fmld0", "fnlp0", "fpas0", "fpkt0", "mbpm0", "mcmj0", "mdab0", "mgrt0",
    "mjdh0", "mjln0", "mjmp0", "mklt0", "mlll0", "mlnt0", "mnjm0", "mpam0", "mtas1", "mtls0", "mwbt0", "mwew0"))

#: The 50-speaker development set of the Kaldi TIMIT recipe (``conf/dev_spk.list``; lhotse ``get_speakers``).
DEV_SPEAKERS: frozenset[str] = frozenset(s.upper() for s in (
    "fadg0", "faks0", "fcal1", "fcmh0", "fdac1", "fdms0", "fdrw0", "fedw0", "fgjd0", "fjem0", "fjmg0", "fjsj0",
    "fkms0", "fmah0", "fmml0", "fnmr0", "frew0", "fsem0", "majc0", "mbdg0", "mbns0", "mbwm0", "mcsh0", "mdlf0",
    "mdls0", "mdvc0", "mers0", "mgjf0", "mglb0", "mgwt0", "mjar0", "mjfc0", "mjsw0", "mmdb1", "mmdm2", "mmjr0",
    "mmwh0", "mpdf0", "mrcs0", "mreb0", "mrjm4", "mrjr0", "mroa0", "mrtk0", "mrws1", "mtaa0", "mtdt0", "mteb0",
    "mthc0", "mwjg0"))

_SPK_RE = re.compile(r"^[mf][a-z]{3}[0-9]$", re.IGNORECASE)
_DR_RE = re.compile(r"^dr([1-8])$", re.IGNORECASE)
_SPLIT_DIRS = {"train": "train", "test": "test"}
_HEIGHT_RE = re.compile(r"^(\d+)'\s*(\d+)?")


def _problem(severity: str, file: Any, line: int | None, field: str, message: str, action: str) -> dict[str, Any]:
    return {"severity": severity, "file": None if file is None else str(file), "line": line, "field": field,
            "message": message, "action": action}


def words_by_midpoint(starts: Sequence[float], ends: Sequence[float],
                      words: Sequence[tuple[float, float, str]]) -> list[str | None]:
    """The word containing each phone's midpoint (``None`` when no word interval contains it).

    ``words`` are ``(start, end, label)`` intervals sorted by start; a word interval is half-open ``[start, end)``.
    Shared by the TIMIT, L2-ARCTIC, Buckeye and lhotse loaders so every corpus assigns words the same way.
    """
    ws = sorted(words, key=lambda w: w[0])
    wstarts = [w[0] for w in ws]
    out: list[str | None] = []
    for a, b in zip(starts, ends, strict=True):
        mid = (a + b) / 2
        k = bisect.bisect_right(wstarts, mid) - 1
        out.append(ws[k][2] if k >= 0 and mid < ws[k][1] else None)
    return out


def _read_segments(path: Path, problems: list[dict[str, Any]]) -> list[tuple[int, int, str]] | None:
    """``BEGIN END LABEL`` lines of a .PHN/.WRD file; ``None`` (with an error row) if the file is malformed."""
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        problems.append(_problem("error", path, None, "file", f"cannot read {path.name}: {exc}",
                                 "skipped utterance"))
        return None
    segs: list[tuple[int, int, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 3:
                raise ValueError(f"expected 3 fields, got {len(parts)}")
            b, e = int(parts[0]), int(parts[1])
        except ValueError as exc:
            problems.append(_problem("error", path, lineno, "line",
                                     f"malformed line {line.strip()!r} (want 'BEGIN END LABEL'): {exc}",
                                     "skipped utterance"))
            return None
        if e <= b:
            problems.append(_problem("warning", path, lineno, "end", f"segment {b}-{e} {parts[2]!r} has END <= BEGIN",
                                     "dropped segment"))
            continue
        segs.append((b, e, parts[2]))
    return segs


def _parse_date(text: str) -> _dt.date | None:
    """``MM/DD/YY`` with 2-digit years in the 1900s (TIMIT was recorded in 1986-87)."""
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})", text.strip())
    if not m:
        return None
    month, day, year = int(m.group(1)), int(m.group(2)), int(m.group(3))
    year = year + 1900 if year < 100 else year
    try:
        return _dt.date(year, month, day)
    except ValueError:
        return None


def read_spkrinfo(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Parse TIMIT's ``SPKRINFO.TXT`` into a speaker table keyed by the directory-style id (``"MABC0"``).

    Columns: ``speaker, gender, age, dialect, dialect_name, use, race, education, height_cm, rec_date,
    birth_date, comments``. ``age`` is (RecDate − BirthDate) in years (float, 2-digit years are 19xx); unknown
    values (``???``, ``??``, unparsable dates) are <NA> with a warning row. Returns (table, problem dicts).
    """
    path = Path(path)
    problems: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        parts = line.split(None, 9)  # comments (10th column) may contain spaces
        if len(parts) < 9:
            problems.append(_problem("warning", path, lineno, "line",
                                     f"expected >= 9 columns 'ID Sex DR Use RecDate BirthDate Ht Race Edu', "
                                     f"got {len(parts)}: {line.strip()!r}", "skipped speaker line"))
            continue
        sid, sex, dr, use, rec, birth, ht, race, edu = parts[:9]
        sex = sex.upper()
        if sex not in ("M", "F") or not dr.isdigit():
            problems.append(_problem("warning", path, lineno, "Sex/DR",
                                     f"bad Sex {sex!r} or DR {dr!r} for speaker {sid!r}", "skipped speaker line"))
            continue
        speaker = f"{sex}{sid.upper()}"
        rec_d, birth_d = _parse_date(rec), _parse_date(birth)
        age: float | None = None
        if rec_d is None or birth_d is None:
            problems.append(_problem("warning", path, lineno, "RecDate/BirthDate",
                                     f"speaker {speaker}: cannot parse dates {rec!r} / {birth!r}", "age=<NA>"))
        else:
            age = round((rec_d - birth_d).days / 365.25, 2)
        hm = _HEIGHT_RE.match(ht)
        height = round((int(hm.group(1)) * 12 + int(hm.group(2) or 0)) * 2.54, 1) if hm else None
        dialect = f"dr{int(dr)}"
        rows.append({
            "speaker": speaker, "gender": "male" if sex == "M" else "female", "age": age,
            "dialect": dialect, "dialect_name": DIALECT_NAMES.get(dialect),
            "use": use.upper(), "race": _RACE.get(race.upper()), "education": _EDU.get(edu.upper()),
            "height_cm": height, "rec_date": rec_d.isoformat() if rec_d else None,
            "birth_date": birth_d.isoformat() if birth_d else None,
            "comments": parts[9].strip() if len(parts) > 9 else None,
        })
    df = pd.DataFrame(rows, columns=["speaker", "gender", "age", "dialect", "dialect_name", "use", "race",
                                     "education", "height_cm", "rec_date", "birth_date", "comments"])
    if df["speaker"].duplicated().any():
        for sp in df.loc[df["speaker"].duplicated(), "speaker"]:
            problems.append(_problem("warning", path, None, "ID", f"speaker {sp} listed twice", "kept first"))
        df = df.drop_duplicates("speaker", keep="first")
    df["age"] = df["age"].astype("float64")
    df["height_cm"] = df["height_cm"].astype("float64")
    return df.reset_index(drop=True), problems


def _find_spkrinfo(root: Path) -> list[Path]:
    found = [p for p in root.rglob("*") if p.name.lower() == "spkrinfo.txt" and p.is_file()]
    # prefer DOC/SPKRINFO.TXT (the LDC location), then the shortest path
    return sorted(found, key=lambda p: (p.parent.name.lower() != "doc", len(p.parts), str(p)))


@dataclass
class _Utt:
    phn: Path
    speaker: str
    sentence: str
    dr: str
    split: str  # "train" / "test" (the corpus' own division)


def _scan(root: Path, problems: list[dict[str, Any]]) -> list[_Utt]:
    utts: list[_Utt] = []
    for phn in sorted(p for p in root.rglob("*") if p.suffix.lower() == ".phn" and p.is_file()):
        spk_dir, dr_dir, split_dir = phn.parent, phn.parent.parent, phn.parent.parent.parent
        if not (_SPK_RE.match(spk_dir.name) and _DR_RE.match(dr_dir.name)
                and split_dir.name.lower() in _SPLIT_DIRS):
            problems.append(_problem("warning", phn, None, "path",
                                     "not in the TIMIT layout <TRAIN|TEST>/<DRn>/<speaker>/<sentence>.PHN",
                                     "skipped utterance"))
            continue
        utts.append(_Utt(phn=phn, speaker=spk_dir.name.upper(), sentence=phn.stem.upper(),
                         dr=f"dr{_DR_RE.match(dr_dir.name).group(1)}",  # type: ignore[union-attr]
                         split=_SPLIT_DIRS[split_dir.name.lower()]))
    return utts


def _sibling(phn: Path, suffix: str, cache: dict[Path, dict[str, Path]]) -> Path | None:
    """The file next to ``phn`` named ``<stem><suffix>``, any letter case."""
    d = phn.parent
    if d not in cache:
        cache[d] = {p.name.lower(): p for p in d.iterdir()}
    return cache[d].get(f"{phn.stem}{suffix}".lower())


def _split_of(utt: _Utt, splits: str) -> str | None:
    if splits == "none":
        return None
    if splits == "corpus" or utt.split == "train":
        return utt.split
    if utt.speaker in CORE_TEST_SPEAKERS:
        return "test"
    return "dev" if utt.speaker in DEV_SPEAKERS else "test_other"


def load_timit(root: str | os.PathLike[str], *, include_sa: bool = False,
               splits: Literal["corpus", "core-test", "none"] = "corpus",
               unknown: Literal["drop", "keep", "error"] = "drop") -> Corpus:
    """Load TIMIT from ``root`` (LDC or Kaggle/lhotse layout, any case) into a :class:`Corpus`.

    Parameters
    ----------
    include_sa
        keep the two SA "dialect" sentences read by every speaker (excluded by default, as in the standard
        recipes; the number excluded is reported as an ``info`` problem row).
    splits
        ``"corpus"``: ``split`` is the corpus' own ``train``/``test`` folder. ``"core-test"``: the Kaldi recipe's
        division: TRAIN -> ``"train"``, the 24 core-test speakers -> ``"test"``, the 50 Kaldi dev speakers ->
        ``"dev"``, the remaining TEST speakers -> ``"test_other"``. ``"none"``: ``split`` is <NA>.
    unknown
        what to do with a phone label the TIMIT map does not know (see
        :func:`phonefair.corpus.phonesets.normalize_phones`).

    A bad utterance (unreadable audio, malformed ``.PHN``) gives an ``error`` row in ``corpus.problems`` and is
    skipped; the rest of the corpus still loads. Raises :class:`CorpusError` if ``root`` holds no TIMIT utterance.
    """
    if splits not in ("corpus", "core-test", "none"):
        raise ValueError(f"splits={splits!r}: expected 'corpus', 'core-test' or 'none'")
    check_unknown_policy(unknown)
    root = corpus_root(root, "TIMIT")
    problems: list[dict[str, Any]] = []
    utts = _scan(root, problems)
    if not utts:
        raise CorpusError(f"{root}: no TIMIT utterances found (expected <TRAIN|TEST>/<DRn>/<speaker>/*.PHN, "
                          f"any case)")

    cache: dict[Path, dict[str, Path]] = {}
    phone_rows: list[dict[str, Any]] = []
    rec_rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    speaker_fallback: dict[str, tuple[str, str, str]] = {}  # speaker -> (sex letter, dr, corpus split)
    n_sa = 0
    n_riff = 0
    for u in utts:
        if u.sentence.startswith("SA") and not include_sa:
            n_sa += 1
            continue
        rec_id = f"{u.speaker}_{u.sentence}"
        if rec_id in seen:
            problems.append(_problem("error", u.phn, None, "recording_id",
                                     f"utterance {rec_id} also found at {seen[rec_id]}", "skipped duplicate"))
            continue
        wav = _sibling(u.phn, ".wav", cache)
        if wav is None:
            wav = _sibling(u.phn, ".wav.wav", cache)
            n_riff += wav is not None
        if wav is None:
            problems.append(_problem("error", u.phn, None, "audio", f"no {u.phn.stem}.WAV next to the .PHN file",
                                     "skipped utterance"))
            continue
        try:
            info = audio_info(wav)
        except (AudioError, OSError, RuntimeError) as exc:
            problems.append(_problem("error", wav, None, "audio", f"unreadable audio: {exc}", "skipped utterance"))
            continue
        segs = _read_segments(u.phn, problems)
        if segs is None:
            continue
        if not segs:
            problems.append(_problem("error", u.phn, None, "file", "no phone segments", "skipped utterance"))
            continue
        if info.sampling_rate != TIMIT_SR:
            problems.append(_problem("warning", wav, None, "sampling_rate",
                                     f"{info.sampling_rate} Hz; .PHN times assume {TIMIT_SR} Hz samples", "kept"))
        if segs[-1][1] > info.num_frames:
            problems.append(_problem("warning", u.phn, None, "end",
                                     f"last phone ends at sample {segs[-1][1]} > audio length {info.num_frames}",
                                     "kept"))
        if any(segs[i][0] != segs[i - 1][1] for i in range(1, len(segs))):
            problems.append(_problem("warning", u.phn, None, "begin",
                                     "phone segments do not tile (a gap or an overlap)", "kept"))
        wrd = _sibling(u.phn, ".wrd", cache)
        words: list[tuple[float, float, str]] = []
        if wrd is None:
            problems.append(_problem("warning", u.phn, None, "words", "no .WRD file: word=<NA>", "kept"))
        else:
            wsegs = _read_segments(wrd, problems)
            words = [(b / TIMIT_SR, e / TIMIT_SR, w) for b, e, w in (wsegs or [])]
        starts = [b / TIMIT_SR for b, _, _ in segs]
        ends = [e / TIMIT_SR for _, e, _ in segs]
        for (_, _, label), a, b, w in zip(segs, starts, ends, words_by_midpoint(starts, ends, words), strict=True):
            phone_rows.append({"recording_id": rec_id, "speaker": u.speaker, "start": a, "end": b,
                               "phone_raw": label, "word": w, "split": _split_of(u, splits), "_file": str(u.phn)})
        rec_rows.append({"recording_id": rec_id, "speaker": u.speaker, "audio_path": str(wav.relative_to(root)),
                         "sampling_rate": info.sampling_rate, "num_channels": info.num_channels,
                         "duration": info.duration, "channel": None})
        seen[rec_id] = u.phn
        speaker_fallback.setdefault(u.speaker, (u.speaker[0], u.dr, u.split))
    if n_sa:
        problems.append(_problem("info", None, None, "sentence", f"{n_sa} SA utterance(s) excluded (include_sa=False)",
                                 "skipped utterance"))

    phones, prob = _normalise(phone_rows, unknown)
    problems.extend(prob)
    speakers = _speaker_table(root, speaker_fallback, problems)
    corpus = Corpus(
        phones=phones, speakers=speakers, recordings=pd.DataFrame(rec_rows, columns=list(_REC_COLS)),
        name="timit", source=str(root), loader="phonefair.corpus.timit", loader_version="1",
        problems=problems_frame(problems),
        extra={"include_sa": include_sa, "splits": splits, "unknown": unknown, "phone_scheme": "timit",
               "excluded_sa_utterances": n_sa, "riff_wav_fallbacks": n_riff,
               "deleted_q": int(phones.attrs.get("provenance", {}).get("n_deleted", 0)),
               "audio_choice": "SPHERE <stem>.WAV; RIFF <stem>.WAV.wav only when the original is missing"},
    )
    corpus.phones.attrs["provenance"] = {**phones.attrs.get("provenance", {}), "loader": "phonefair.corpus.timit",
                                         "source": str(root), "include_sa": include_sa, "splits": splits}
    return corpus


_REC_COLS = ("recording_id", "speaker", "audio_path", "sampling_rate", "num_channels", "duration", "channel")


def _normalise(phone_rows: list[dict[str, Any]], unknown: str) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    cols = ["recording_id", "speaker", "start", "end", "phone_raw", "word", "split", "_file"]
    raw = pd.DataFrame(phone_rows, columns=cols)
    phones, prob = normalize_phones(raw, "timit", unknown=unknown, file_column="_file")  # type: ignore[arg-type]
    for p in prob:
        # q is deleted by the standard folding: expected, so info rather than a warning
        if "deleted-by-scheme" in str(p.get("message", "")):
            p["severity"] = "info"
    attrs = dict(phones.attrs)
    phones = phones.drop(columns=["_file"])
    phones.attrs = attrs
    return phones, prob


def _speaker_table(root: Path, fallback: dict[str, tuple[str, str, str]],
                   problems: list[dict[str, Any]]) -> pd.DataFrame:
    def from_dirs(spk: str) -> dict[str, Any]:
        sex, dr, _ = fallback[spk]
        return {"speaker": spk, "gender": "male" if sex.upper() == "M" else "female", "dialect": dr,
                "dialect_name": DIALECT_NAMES.get(dr)}

    infos = _find_spkrinfo(root)
    if not infos:
        problems.append(_problem("warning", root, None, "SPKRINFO.TXT",
                                 "no SPKRINFO.TXT under the root: gender from the speaker directory's first letter, "
                                 "dialect from the DR folder; age, race, education unknown", "kept"))
        out = pd.DataFrame([from_dirs(s) for s in sorted(fallback)])
        out["age"] = np.nan  # float column: the schema cannot cast an all-<NA> object column to float64
        return out
    if len(infos) > 1:
        problems.append(_problem("warning", infos[0], None, "SPKRINFO.TXT",
                                 f"{len(infos)} SPKRINFO.TXT files found; using this one", "kept"))
    table, prob = read_spkrinfo(infos[0])
    problems.extend(prob)
    by_id = table.set_index("speaker")
    rows: list[dict[str, Any]] = []
    for spk in sorted(fallback):
        _, dr, split = fallback[spk]
        if spk not in by_id.index:
            problems.append(_problem("warning", infos[0], None, "ID",
                                     f"speaker {spk} (ID {spk[1:]}) not in SPKRINFO.TXT: attributes from directories",
                                     "kept"))
            rows.append(from_dirs(spk))
            continue
        row = {"speaker": spk, **by_id.loc[spk].to_dict()}
        if row["dialect"] != dr:
            problems.append(_problem("warning", infos[0], None, "DR",
                                     f"speaker {spk}: SPKRINFO says {row['dialect']}, directory says {dr}",
                                     "kept SPKRINFO value"))
        if {"TRN": "train", "TST": "test"}.get(str(row["use"])) not in (None, split):
            problems.append(_problem("warning", infos[0], None, "Use",
                                     f"speaker {spk}: SPKRINFO Use={row['use']} but directory is {split.upper()}",
                                     "kept directory"))
        rows.append(row)
    out = pd.DataFrame(rows)
    out["age"] = out["age"].astype("float64")
    return out
