"""What to align: audio + transcript + speaker for every utterance, from one of three input layouts.

* ``table``: a CSV/TSV with one row per utterance. Columns (case-sensitive, first match wins, or named
  explicitly): audio path ``audio``/``audio_path``/``path``/``file``/``wav``/``filename`` (relative paths are
  relative to the table's folder), transcript ``text``/``transcript``/``transcription``/``sentence``, speaker
  ``speaker``/``speaker_id``/``client_id``. Every other column is speaker metadata.
* ``common_voice``: a Common Voice release folder (``validated.tsv`` + ``clips/``) or one of its clip TSVs
  (``train.tsv``, ...; clips in ``clips/`` beside it). Columns ``client_id, path, sentence`` are used; the
  demographics (``age, gender, accents``/``accent, variant, locale``) are read by phonefair's Common Voice rules
  (``phonefair.corpus.textgrid_corpus.load_common_voice_metadata``) when the aligned corpus is loaded.
* ``folder``: audio files (any extension phonefair reads) with a same-stem ``.lab`` or ``.txt`` transcript beside
  them (``.lab`` preferred, as MFA does). The speaker is the parent folder's name, or comes from a speaker table
  (``speakers=``; utterance-level tables map files to speakers by path or stem).

Every row that cannot be used (no audio path, empty transcript cell, no speaker, a speaker id that cannot be a
folder name, a second utterance with the same output name) becomes a problem row; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from phonefair.corpus.textgrid_corpus import AUDIO_EXTENSIONS, load_speaker_table
from phonefair.errors import ConfigError, DataError

__all__ = ["AUDIO_COLUMNS", "SPEAKER_COLUMNS", "TEXT_COLUMNS", "AlignInput", "InputKind", "detect_kind",
           "read_common_voice", "read_folder", "read_table"]

InputKind = Literal["auto", "table", "common_voice", "folder"]

AUDIO_COLUMNS = ("audio", "audio_path", "path", "file", "wav", "filename")
TEXT_COLUMNS = ("text", "transcript", "transcription", "sentence")
SPEAKER_COLUMNS = ("speaker", "speaker_id", "client_id")
#: Common Voice columns carried into the speaker table (the loader's Common Voice rules read them)
CV_METADATA = ("client_id", "path", "age", "gender", "accents", "accent", "variant", "locale")
UTTERANCE_COLUMNS = ["recording_id", "speaker", "audio", "text", "source", "line"]
_BAD_NAME = re.compile(r"[/\\\x00]")


@dataclass
class AlignInput:
    """The utterances to align and the speaker metadata to write beside the alignments.

    ``utterances``: ``recording_id`` (``<speaker>/<audio stem>``: the output path without suffix), ``speaker``,
    ``audio`` (absolute path), ``text``, ``source`` (input file) and ``line`` (its 1-based line; header = 1).
    ``metadata`` is written to ``out_dir/<metadata_name>`` and read back by the corpus loader.
    """

    kind: str
    source: Path
    utterances: pd.DataFrame
    metadata: pd.DataFrame
    metadata_name: str
    problems: list[dict[str, Any]] = field(default_factory=list)


def _problem(kind: str, file: Any, line: int | None, message: str, *, recording_id: Any = None,
             speaker: Any = None, severity: str = "error", action: str = "skipped utterance") -> dict[str, Any]:
    return {"severity": severity, "kind": kind, "recording_id": recording_id, "speaker": speaker,
            "file": None if file is None else str(file), "line": line, "field": "input", "message": message,
            "action": action}


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV/TSV as strings (blanks <NA>) with ``_line``. TSV is read without quoting: Common Voice sentences
    contain unbalanced quotes."""
    if not path.is_file():
        raise ConfigError(f"{path}: input table does not exist")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    if path.suffix.lower() not in (".tsv", ".tab", ".csv"):
        head = path.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        sep = "\t" if head and "\t" in head[0] else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8",
                         quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot parse the input table: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    for c in df.columns:
        df[c] = df[c].astype("string").str.strip().replace("", pd.NA)
    df["_line"] = range(2, len(df) + 2)
    return df


def _pick(df: pd.DataFrame, given: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    if given is not None:
        if given not in df.columns:
            raise ConfigError(f"{path}: no column {given!r} for the {what}; columns: "
                              f"{[c for c in df.columns if c != '_line']}")
        return given
    for c in candidates:
        if c in df.columns:
            return c
    raise ConfigError(f"{path}: no {what} column (looked for {list(candidates)}); columns: "
                      f"{[c for c in df.columns if c != '_line']}; name it explicitly")


def _speaker_ok(spk: Any) -> str | None:
    """Why ``spk`` cannot be a folder name, or None when it can."""
    s = str(spk)
    if s in (".", "..") or _BAD_NAME.search(s):
        return f"speaker id {s!r} cannot be a folder name (contains '/', '\\' or NUL, or is '.'/'..')"
    return None


def _finish(kind: str, source: Path, rows: list[dict[str, Any]], metadata: pd.DataFrame, metadata_name: str,
            problems: list[dict[str, Any]]) -> AlignInput:
    """Check speakers and output names; every rejected row becomes a problem."""
    keep: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        if (why := _speaker_ok(r["speaker"])) is not None:
            problems.append(_problem("bad_input", r["source"], r["line"], why, speaker=r["speaker"]))
            continue
        rid = f"{r['speaker']}/{Path(r['audio']).stem}"
        if rid in seen:
            problems.append(_problem("duplicate", r["source"], r["line"], f"utterance {rid!r} again (first at line "
                                     f"{seen[rid]['line']}: {seen[rid]['audio']}); output names are "
                                     f"<speaker>/<audio stem>", recording_id=rid, speaker=r["speaker"]))
            continue
        r = {**r, "recording_id": rid}
        seen[rid] = r
        keep.append(r)
    utt = pd.DataFrame(keep, columns=UTTERANCE_COLUMNS)
    for c in ("recording_id", "speaker", "audio", "text", "source"):
        utt[c] = utt[c].astype("string")
    utt["line"] = utt["line"].astype("Int64")
    return AlignInput(kind=kind, source=source, utterances=utt, metadata=metadata, metadata_name=metadata_name,
                      problems=problems)


# ---------------------------------------------------------------------------------------------- table
def read_table(path: str | os.PathLike[str], *, audio_column: str | None = None, text_column: str | None = None,
               speaker_column: str | None = None) -> AlignInput:
    """Utterances from a CSV/TSV table (see the module docstring); other columns become speaker metadata."""
    p = Path(path).resolve()
    df = _read_csv(p)
    a = _pick(df, audio_column, AUDIO_COLUMNS, "audio path", p)
    t = _pick(df, text_column, TEXT_COLUMNS, "transcript", p)
    s = _pick(df, speaker_column, SPEAKER_COLUMNS, "speaker", p)
    problems: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    meta_rows: list[dict[str, Any]] = []
    attrs = [c for c in df.columns if c not in (a, t, s, "_line", "recording_id", "path")]
    for rec in df.to_dict("records"):
        line = int(rec["_line"])
        missing = [n for n, c in (("audio path", a), ("transcript", t), ("speaker", s)) if pd.isna(rec[c])]
        if missing:
            problems.append(_problem("bad_input", p, line, f"row without {' / '.join(missing)}",
                                     speaker=None if pd.isna(rec[s]) else rec[s]))
            continue
        audio = Path(str(rec[a]))
        audio = audio if audio.is_absolute() else p.parent / audio
        rows.append({"speaker": str(rec[s]), "audio": str(audio), "text": str(rec[t]), "source": str(p),
                     "line": line})
        meta_rows.append({"speaker": str(rec[s]), "path": f"{rec[s]}/{audio.stem}",
                          **{c: rec[c] for c in attrs}})
    meta = pd.DataFrame(meta_rows, columns=["speaker", "path", *attrs])
    return _finish("table", p, rows, meta, "speakers.csv", problems)


# ---------------------------------------------------------------------------------------------- Common Voice
def read_common_voice(path: str | os.PathLike[str], *, clips: str | os.PathLike[str] | None = None) -> AlignInput:
    """Utterances from a Common Voice folder (``validated.tsv`` + ``clips/``) or clip TSV."""
    p = Path(path).resolve()
    tsv = p / "validated.tsv" if p.is_dir() else p
    if not tsv.is_file():
        raise ConfigError(f"{p}: no Common Voice clip table (expected {tsv.name} in the folder, or a .tsv path)")
    clip_dir = Path(clips).resolve() if clips is not None else tsv.parent / "clips"
    if not clip_dir.is_dir():
        raise ConfigError(f"{tsv}: clips folder {clip_dir} does not exist")
    df = _read_csv(tsv)
    if missing := [c for c in ("client_id", "path", "sentence") if c not in df.columns]:
        raise ConfigError(f"{tsv}: not a Common Voice clip table, column(s) {missing} missing; has "
                          f"{[c for c in df.columns if c != '_line']}")
    problems: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for rec in df.to_dict("records"):
        line = int(rec["_line"])
        missing = [n for n, c in (("path", "path"), ("sentence", "sentence"), ("client_id", "client_id"))
                   if pd.isna(rec[c])]
        if missing:
            problems.append(_problem("bad_input", tsv, line, f"row without {' / '.join(missing)}",
                                     speaker=None if pd.isna(rec["client_id"]) else rec["client_id"]))
            continue
        rows.append({"speaker": str(rec["client_id"]), "audio": str(clip_dir / str(rec["path"])),
                     "text": str(rec["sentence"]), "source": str(tsv), "line": line})
    cols = [c for c in CV_METADATA if c in df.columns]
    meta = df.loc[df["client_id"].notna(), cols].copy()
    for c in cols:  # the copy is written as TSV without quoting
        meta[c] = meta[c].str.replace(r"[\t\r\n]+", " ", regex=True)
    return _finish("common_voice", tsv, rows, meta, "speakers.tsv", problems)


# ---------------------------------------------------------------------------------------------- folder
def read_folder(root: str | os.PathLike[str], *, speakers: str | os.PathLike[str] | None = None) -> AlignInput:
    """Utterances from a folder of audio + same-stem ``.lab``/``.txt`` transcripts."""
    r = Path(root).resolve()
    if not r.is_dir():
        raise ConfigError(f"{root}: input folder does not exist")
    problems: list[dict[str, Any]] = []
    utt_map: dict[str, str] = {}
    meta = pd.DataFrame({"speaker": pd.Series([], dtype="string")})
    if speakers is not None:
        meta_df, utt, mprob = load_speaker_table(speakers)
        problems += [{**q, "kind": "metadata", "recording_id": None, "speaker": None} for q in mprob]
        meta = meta_df
        if utt is not None:
            for u, s in zip(utt["utterance"], utt["speaker"], strict=True):
                if u is not pd.NA:
                    key = Path(str(u)).with_suffix("").as_posix()
                    utt_map.setdefault(key, str(s))
                    utt_map.setdefault(Path(key).name, str(s))
    rows: list[dict[str, Any]] = []
    for audio in sorted(x for x in r.rglob("*") if x.is_file() and x.suffix.lower() in AUDIO_EXTENSIONS):
        text_file = next((audio.with_suffix(ext) for ext in (".lab", ".txt") if audio.with_suffix(ext).is_file()),
                         None)
        if text_file is None:
            problems.append(_problem("bad_input", audio, None, "no same-stem .lab/.txt transcript"))
            continue
        try:
            text = text_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(_problem("bad_input", text_file, None, f"cannot read the transcript: {exc}"))
            continue
        rel = audio.relative_to(r).with_suffix("").as_posix()
        spk = utt_map.get(rel) or utt_map.get(audio.stem)
        if spk is None:
            if audio.parent == r:
                problems.append(_problem("bad_input", audio, None, "no speaker: the file is not in a speaker folder "
                                         "and no speaker table maps it"))
                continue
            spk = audio.parent.name
        rows.append({"speaker": spk, "audio": str(audio), "text": text, "source": str(text_file), "line": None})
    meta = meta.drop(columns=[c for c in meta.columns if c.startswith("_")])
    return _finish("folder", r, rows, meta, "speakers.csv", problems)


def detect_kind(source: str | os.PathLike[str]) -> Literal["table", "common_voice", "folder"]:
    """``common_voice`` for a folder with ``validated.tsv`` or a TSV with ``client_id``/``path``/``sentence``,
    ``folder`` for any other folder, ``table`` for any other file."""
    p = Path(source)
    if p.is_dir():
        return "common_voice" if (p / "validated.tsv").is_file() else "folder"
    if not p.exists():
        raise ConfigError(f"{source}: input does not exist")
    if p.suffix.lower() == ".tsv":
        head = p.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        cols = set(head[0].split("\t")) if head else set()
        if {"client_id", "path", "sentence"} <= cols:
            return "common_voice"
    return "table"
