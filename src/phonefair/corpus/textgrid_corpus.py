"""Generic loader: a folder of audio files with same-stem TextGrid / JSON alignments (MFA output layout), plus
speaker metadata from a CSV/TSV table or a Common Voice clip TSV.

Layout assumptions (see ``docs/corpus.md``):

* ``root`` is searched recursively for audio (``.wav .flac .mp3 .ogg .opus .sph .aif .aiff``, any case); each
  audio file's alignment is the file with the same stem and suffix ``.TextGrid`` / ``.json`` in the same folder
  (or, with ``alignments=``, at the same relative path, or with the same unique stem, under that folder).
* ``recording_id`` is the audio path relative to ``root`` without suffix (``spk1/utt01``): unique by
  construction.
* The speaker comes from the parent folder name (``speaker_from="dirname"``, MFA's layout), from the file name up
  to the first ``speaker_sep`` (``"filename-prefix"``), or from an utterance-level metadata table
  (``"table"``). Multi-speaker MFA TextGrids (tiers ``"<spk> - phones"``) give one recording whose phones carry
  the tier speakers; such a recording's own ``speaker`` is <NA> unless all its phones share one speaker.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from phonefair.corpus.audio import AudioError, audio_info
from phonefair.corpus.phonesets import SCHEMES, normalize_phones
from phonefair.corpus.schema import PHONE_COLUMNS, SPEAKER_COLUMNS, Corpus, CorpusError, problems_frame
from phonefair.corpus.textgrid import textgrid_phones

__all__ = ["AUDIO_EXTENSIONS", "load_common_voice_metadata", "load_speaker_table", "load_textgrid_corpus"]

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".sph", ".aif", ".aiff")
ALIGNMENT_EXTENSIONS: tuple[str, ...] = (".textgrid", ".json")
LOADER_VERSION = "1"

_SPEAKER_KEYS = ("speaker", "client_id", "speaker_id")
_UTTERANCE_KEYS = ("recording_id", "path", "utterance", "utterance_id", "file")

#: Common Voice gender vocabularies (<=16: male/female/other; >=17 the longer set; >=25 intersex) -> ``gender``.
#: The finer self-description is kept in ``gender_raw``; group by it when the analysis needs it.
CV_GENDER: dict[str, str | None] = {
    "male": "male", "male_masculine": "male",
    "female": "female", "female_feminine": "female",
    "other": "other", "transgender": "other", "non-binary": "other", "intersex": "other",
    "do_not_wish_to_say": None,
}
#: Common Voice age buckets -> ``age_band`` (``fourties`` is Common Voice's spelling)
CV_AGE: dict[str, str] = {b: b for b in ("teens", "twenties", "thirties", "forties", "fifties", "sixties",
                                         "seventies", "eighties", "nineties")} | {"fourties": "forties"}


def _problem(severity: str, file: Any, line: int | None, field: str, message: str, action: str) -> dict[str, Any]:
    return {"severity": severity, "file": None if file is None else str(file), "line": line, "field": field,
            "message": message, "action": action}


# ---------------------------------------------------------------------------------------------- metadata
def _read_table(path: Path) -> pd.DataFrame:
    """A CSV/TSV as strings, blanks as <NA>, with a ``_line`` column (1-based line in the file; header = 1)."""
    if not path.is_file():
        raise CorpusError(f"{path}: metadata table does not exist")
    # the encodings spreadsheet programs write: UTF-8 (with or without BOM) and UTF-16 with BOM ("Unicode text")
    with open(path, "rb") as f:
        bom = f.read(4)
    encoding = "utf-16" if bom.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab", ".txt"):
        sep = "\t"
    elif suffix == ".csv":
        sep = ","
    else:
        head = path.read_text(encoding=encoding, errors="replace").splitlines()[:1]
        sep = "\t" if head and "\t" in head[0] else ","
    try:
        # QUOTE_NONE for TSV: Common Voice sentences contain unbalanced quotes
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=encoding,
                         quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL, skip_blank_lines=True)
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: cannot decode metadata table ({exc}); save it as UTF-8, UTF-8 with BOM or "
                          f"UTF-16 with BOM") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CorpusError(f"{path}: cannot parse metadata table: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    for c in df.columns:
        df[c] = df[c].astype("string").str.strip().replace("", pd.NA)
    df["_line"] = range(2, len(df) + 2)  # assumes one record per line (no embedded newlines), true for CV
    return df


def _aggregate(df: pd.DataFrame, key: str, attrs: list[str], path: Path, problems: list[dict[str, Any]]
               ) -> pd.DataFrame:
    """One row per ``key``: for each attribute the most frequent non-empty value (ties: first seen), with a
    warning per speaker and attribute whose rows disagree."""
    rows: list[dict[str, Any]] = []
    for spk, g in df.groupby(key, sort=False, dropna=True):
        row: dict[str, Any] = {"speaker": str(spk)}
        for a in attrs:
            vals = g[a].dropna()
            if vals.empty:
                row[a] = pd.NA
                continue
            counts = Counter(vals.tolist())
            best = max(counts.items(), key=lambda kv: kv[1])[0]  # max keeps the first of equal counts
            row[a] = best
            if len(counts) > 1:
                other = g.loc[g[a].notna() & (g[a] != best), "_line"]
                problems.append(_problem(
                    "warning", path, int(other.iloc[0]), a,
                    f"speaker {spk!r}: conflicting {a} values {dict(counts.most_common())}; using {best!r}",
                    "kept most frequent value"))
        rows.append(row)
    return pd.DataFrame(rows, columns=["speaker", *attrs])


def _split_accents(s: Any) -> tuple[Any, Any]:
    if s is pd.NA or s is None:
        return pd.NA, pd.NA
    parts = [p.strip() for p in str(s).replace(",", "|").split("|") if p.strip()]
    return (parts[0], "|".join(parts)) if parts else (pd.NA, pd.NA)


def _common_voice(tsv: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    df = _read_table(tsv)
    if "client_id" not in df.columns:
        raise CorpusError(f"{tsv}: not a Common Voice clip table (no 'client_id' column; has {list(df.columns)})")
    problems: list[dict[str, Any]] = []
    if (n := int(df["client_id"].isna().sum())):
        problems.append(_problem("error", tsv, int(df.loc[df["client_id"].isna(), "_line"].iloc[0]), "client_id",
                                 f"{n} row(s) without client_id", "skipped rows"))
        df = df[df["client_id"].notna()]
    out = pd.DataFrame({"speaker": df["client_id"], "_line": df["_line"]})
    if "gender" in df.columns:
        raw = df["gender"].str.lower()
        out["gender_raw"] = raw
        unknown = sorted(set(raw.dropna()) - set(CV_GENDER))
        for v in unknown:
            line = int(df.loc[raw == v, "_line"].iloc[0])
            problems.append(_problem("warning", tsv, line, "gender", f"unknown Common Voice gender value {v!r} "
                                     f"({int((raw == v).sum())} rows)", "gender=<NA>, kept in gender_raw"))
        out["gender"] = raw.map(lambda v: pd.NA if v is pd.NA else CV_GENDER.get(v) or pd.NA).astype("string")
    if "age" in df.columns:
        raw = df["age"].str.lower()
        for v in sorted(set(raw.dropna()) - set(CV_AGE)):
            line = int(df.loc[raw == v, "_line"].iloc[0])
            problems.append(_problem("warning", tsv, line, "age", f"unknown Common Voice age bucket {v!r}",
                                     "age_band=<NA>"))
        out["age_band"] = raw.map(lambda v: pd.NA if v is pd.NA else CV_AGE.get(v, pd.NA)).astype("string")
    acc_col = "accents" if "accents" in df.columns else "accent" if "accent" in df.columns else None
    if acc_col is not None:
        split = df[acc_col].map(_split_accents)
        out["accent"] = pd.array([a for a, _ in split], dtype="string")
        out["accents"] = pd.array([b for _, b in split], dtype="string")
    for extra in ("variant", "locale"):
        if extra in df.columns:
            out[extra] = df[extra]
    attrs = [c for c in ("gender", "gender_raw", "age_band", "accent", "accents", "variant", "locale")
             if c in out.columns]
    speakers = _aggregate(out, "speaker", attrs, tsv, problems)
    utt = pd.DataFrame({"utterance": df["path"] if "path" in df.columns else pd.NA, "speaker": df["client_id"]})
    return speakers, utt, problems


def load_common_voice_metadata(tsv: str | os.PathLike[str]) -> pd.DataFrame:
    """Speaker table from a Common Voice clip TSV (``validated.tsv``, ``train.tsv``, ...).

    ``client_id`` -> ``speaker``; ``gender`` normalised to ``male`` / ``female`` / ``other`` / <NA> across both
    vocabularies (:data:`CV_GENDER`; ``do_not_wish_to_say`` and empty -> <NA>) with the raw value in
    ``gender_raw``; ``age`` bucket -> ``age_band`` (``fourties`` -> ``forties``); ``accents`` ("|"- or
    ","-separated, renamed from ``accent`` in CV 17) -> ``accent`` = the first listed value, ``accents`` = all
    values joined by "|". Conflicting values of one client across rows -> the most frequent, with a problem.
    Problem dicts are in ``df.attrs["problems"]``; ``df.attrs["utterances"]`` maps clip ``path`` -> speaker.
    """
    p = Path(tsv)
    speakers, utt, problems = _common_voice(p)
    speakers.attrs["problems"] = problems
    speakers.attrs["utterances"] = utt
    speakers.attrs["provenance"] = {"source": str(p), "loader": "common_voice", "rows": int(len(utt)),
                                    "gender_map": {k: v for k, v in CV_GENDER.items()}}
    return speakers


def load_speaker_table(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame | None,
                                                               list[dict[str, Any]]]:
    """Read speaker metadata: ``(speakers, utterances or None, problems)``.

    A table with a ``speaker`` (or ``client_id`` / ``speaker_id``) column and attribute columns is speaker-level;
    one that also has ``path`` / ``recording_id`` / ``utterance`` is utterance-level, and ``utterances`` maps
    each utterance to its speaker (attributes are then aggregated per speaker, conflicts reported). Tables with
    ``client_id`` plus Common Voice columns are read with :func:`load_common_voice_metadata`'s rules.
    ``age`` must be numeric (years); other values are reported and set to <NA>.
    """
    p = Path(path)
    df = _read_table(p)
    if "client_id" in df.columns and ({"gender", "age"} & set(df.columns)) and "speaker" not in df.columns:
        speakers, utt, problems = _common_voice(p)
        return speakers, (utt if utt["utterance"].notna().any() else None), problems
    key = next((k for k in _SPEAKER_KEYS if k in df.columns), None)
    if key is None:
        raise CorpusError(f"{p}: metadata table needs a 'speaker' (or 'client_id') column; has "
                          f"{[c for c in df.columns if c != '_line']}")
    problems: list[dict[str, Any]] = []
    if (n := int(df[key].isna().sum())):
        problems.append(_problem("error", p, int(df.loc[df[key].isna(), "_line"].iloc[0]), key,
                                 f"{n} row(s) without a speaker id", "skipped rows"))
        df = df[df[key].notna()]
    ukey = next((k for k in _UTTERANCE_KEYS if k in df.columns), None)
    if "age" in df.columns:
        num = pd.to_numeric(df["age"], errors="coerce")
        bad = df["age"].notna() & num.isna()
        for _, r in df[bad].head(20).iterrows():
            problems.append(_problem("warning", p, int(r["_line"]), "age", f"age {r['age']!r} of speaker "
                                     f"{r[key]!r} is not a number of years", "age=<NA>"))
        if int(bad.sum()) > 20:
            problems.append(_problem("warning", p, None, "age", f"{int(bad.sum()) - 20} more non-numeric ages",
                                     "age=<NA>"))
        df = df.assign(age=num.astype("string").where(num.notna(), pd.NA))
    attrs = [c for c in df.columns if c not in (key, ukey, "_line")]
    speakers = _aggregate(df, key, attrs, p, problems)
    if "age" in speakers.columns:
        speakers["age"] = pd.to_numeric(speakers["age"])
    utt = None if ukey is None else pd.DataFrame({"utterance": df[ukey], "speaker": df[key]})
    return speakers, utt, problems


# ---------------------------------------------------------------------------------------------- files
def _index_alignments(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    by_rel: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in ALIGNMENT_EXTENSIONS:
            rel = p.relative_to(folder).with_suffix("").as_posix()
            # prefer .TextGrid over .json when both exist (ALIGNMENT_EXTENSIONS order)
            if rel not in by_rel or ALIGNMENT_EXTENSIONS.index(p.suffix.lower()) < ALIGNMENT_EXTENSIONS.index(
                    by_rel[rel].suffix.lower()):
                by_rel[rel] = p
            by_stem.setdefault(p.stem, []).append(p)
    return by_rel, by_stem


def _utterance_key(s: str) -> str:
    return Path(str(s)).with_suffix("").as_posix()


def load_textgrid_corpus(root: str | os.PathLike[str], *, speakers: str | os.PathLike[str] | None = None,
                         speaker_from: Literal["dirname", "filename-prefix", "table"] = "dirname",
                         speaker_sep: str = "_", phone_scheme: str = "arpabet",
                         unknown: Literal["drop", "keep", "error"] = "drop",
                         multi: Literal["split", "first", "drop"] = "split", mix: bool = False,
                         channel: int | None = None, name: str | None = None,
                         alignments: str | os.PathLike[str] | None = None, phone_tier: str | None = None,
                         word_tier: str | None = None) -> Corpus:
    """Load a folder of audio + same-stem TextGrid/JSON alignments as a :class:`Corpus`.

    ``speakers``: a CSV/TSV speaker table or utterance table (see :func:`load_speaker_table`), e.g. Common Voice's
    ``validated.tsv``. ``phone_scheme``: the alignment labels' convention (:data:`~phonefair.corpus.phonesets.
    SCHEMES`), normalised with ``unknown`` / ``multi`` policies (:func:`~phonefair.corpus.phonesets.
    normalize_phones`). Multi-channel audio: ``mix=True`` averages channels, ``channel=k`` picks one; otherwise
    such recordings are skipped with an error problem. Nothing is dropped silently: unreadable audio, broken or
    missing alignments, unknown labels, missing speaker metadata all become rows of ``corpus.problems``.
    """
    root_p = Path(root).resolve()
    if not root_p.is_dir():
        raise CorpusError(f"{root}: corpus folder does not exist")
    if speaker_from not in ("dirname", "filename-prefix", "table"):
        raise ValueError(f"speaker_from={speaker_from!r}: expected 'dirname', 'filename-prefix' or 'table'")
    if phone_scheme not in SCHEMES:
        raise ValueError(f"phone_scheme={phone_scheme!r}: expected one of {SCHEMES}")
    if speaker_from == "table" and speakers is None:
        raise ValueError("speaker_from='table' needs speakers=<utterance-level metadata table>")
    align_root = Path(alignments).resolve() if alignments is not None else root_p
    if not align_root.is_dir():
        raise CorpusError(f"{alignments}: alignment folder does not exist")
    problems: list[dict[str, Any]] = []

    # metadata
    meta: pd.DataFrame | None = None
    utt_map: dict[str, str] = {}
    if speakers is not None:
        meta, utt, mprob = load_speaker_table(speakers)
        problems += mprob
        if utt is not None:
            for u, s in zip(utt["utterance"], utt["speaker"], strict=True):
                if u is not pd.NA:
                    utt_map.setdefault(_utterance_key(u), str(s))
                    utt_map.setdefault(Path(_utterance_key(u)).name, str(s))
        elif speaker_from == "table":
            raise CorpusError(f"{speakers}: speaker_from='table' needs an utterance-level table "
                              f"(a 'path' or 'recording_id' column)")

    # pair audio with alignments
    by_rel, by_stem = _index_alignments(align_root)
    audio_files = sorted(p for p in root_p.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    used_alignments: set[Path] = set()
    seen_ids: dict[str, Path] = {}
    rec_rows: list[dict[str, Any]] = []
    phone_frames: list[pd.DataFrame] = []
    for audio in audio_files:
        rel = audio.relative_to(root_p).with_suffix("").as_posix()
        if rel in seen_ids:
            problems.append(_problem("error", audio, None, "audio_path", f"second audio file for recording {rel!r}"
                                     f" (first: {seen_ids[rel].name})", "skipped recording"))
            continue
        seen_ids[rel] = audio
        align = by_rel.get(rel)
        if align is None and alignments is not None:
            cands = by_stem.get(audio.stem, [])
            if len(cands) > 1:
                problems.append(_problem("error", audio, None, "alignment", f"several alignment files named "
                                         f"{audio.stem!r} under {align_root}: {[str(c) for c in cands[:3]]}",
                                         "skipped recording"))
                continue
            align = cands[0] if cands else None
        if align is None:
            problems.append(_problem("warning", audio, None, "alignment", "no same-stem .TextGrid/.json alignment",
                                     "skipped recording"))
            continue
        used_alignments.add(align)

        # speaker of the recording
        if speaker_from == "dirname":
            spk = audio.parent.name if audio.parent != root_p else None
        elif speaker_from == "filename-prefix":
            spk = audio.stem.split(speaker_sep, 1)[0] if speaker_sep in audio.stem else None
        else:
            spk = utt_map.get(rel) or utt_map.get(audio.stem)
        if spk is None and speaker_from != "table":
            spk = audio.stem
            problems.append(_problem("warning", audio, None, "speaker", f"cannot infer speaker from "
                                     f"{speaker_from}; using the file stem {spk!r}", "kept"))

        try:
            info = audio_info(audio)
        except AudioError as exc:
            problems.append(_problem("error", audio, None, "audio", str(exc), "skipped recording"))
            continue
        if info.num_frames == 0:
            problems.append(_problem("error", audio, None, "audio", f"{audio}: audio is empty", "skipped recording"))
            continue
        if info.num_channels > 1 and channel is None and not mix:
            problems.append(_problem("error", audio, None, "audio", f"{audio}: {info.num_channels} channels; load "
                                     f"with mix=True to average them or channel=<k> to pick one",
                                     "skipped recording"))
            continue
        if channel is not None and not 0 <= channel < info.num_channels:
            problems.append(_problem("error", audio, None, "audio", f"{audio}: channel={channel} out of range "
                                     f"({info.num_channels} channel(s))", "skipped recording"))
            continue
        try:
            ph, aprob = textgrid_phones(align, phone_tier=phone_tier, word_tier=word_tier)
        except CorpusError as exc:
            problems.append(_problem("error", align, None, "alignment", str(exc), "skipped recording"))
            continue
        problems += aprob
        if ph["speaker"].isna().all():
            if spk is None:
                problems.append(_problem("error", audio, None, "speaker", f"recording {rel!r} is not in the "
                                         f"utterance table {speakers}", "skipped recording"))
                continue
            ph["speaker"] = pd.array([spk] * len(ph), dtype="string")
            rec_spk: Any = spk
        else:  # multi-speaker file: phones carry their tier's speaker
            ph["speaker"] = ph["speaker"].fillna(spk) if spk is not None else ph["speaker"]
            uniq = ph["speaker"].dropna().unique()
            rec_spk = str(uniq[0]) if len(uniq) == 1 else pd.NA
        if ph.empty:
            problems.append(_problem("warning", align, None, "alignment", "no non-empty phone intervals",
                                     "kept recording without phones"))
        ph.insert(0, "recording_id", rel)
        ph["align_file"] = str(align)
        phone_frames.append(ph)
        rec_rows.append({"recording_id": rel, "speaker": rec_spk,
                         "audio_path": audio.relative_to(root_p).as_posix(),
                         "sampling_rate": info.sampling_rate, "num_channels": info.num_channels,
                         "duration": info.duration, "channel": channel,
                         "mix": bool(mix and channel is None and info.num_channels > 1)})
    for rel, align in sorted(by_rel.items()):
        if align not in used_alignments and alignments is None:
            problems.append(_problem("warning", align, None, "audio", "alignment without a same-stem audio file",
                                     "skipped"))

    if phone_frames:
        phones = pd.concat(phone_frames, ignore_index=True)
    else:
        phones = pd.DataFrame({c: pd.Series([], dtype=d) for c, d in PHONE_COLUMNS.items() if c in
                               ("recording_id", "speaker", "start", "end", "phone_raw", "word")})
        phones["line"] = pd.Series([], dtype="Int64")
        phones["align_file"] = pd.Series([], dtype="string")
    phones, pprob = normalize_phones(phones, phone_scheme, unknown=unknown, multi=multi, file_column="align_file")
    problems += pprob

    # speaker table: every speaker with phones or recordings, with metadata where the table has it
    ids = sorted(set(phones["speaker"].dropna().astype(str)) |
                 {str(s) for s in (r["speaker"] for r in rec_rows) if s is not pd.NA and s is not None})
    spk_df = pd.DataFrame({"speaker": ids})
    if meta is not None:
        spk_df = spk_df.merge(meta, on="speaker", how="left")
        missing = sorted(set(ids) - set(meta["speaker"].astype(str)))
        for s in missing:
            problems.append(_problem("warning", speakers, None, "speaker", f"speaker {s!r} has no row in the "
                                     f"metadata table", "kept speaker, attributes <NA>"))
    for col, dtype in SPEAKER_COLUMNS.items():
        # typed empty columns: Corpus() cannot cast an all-<NA> object column to float64 (age)
        if col not in spk_df.columns:
            spk_df[col] = pd.Series([float("nan") if dtype == "float64" else pd.NA] * len(spk_df), dtype=dtype)
    recordings = pd.DataFrame(rec_rows, columns=["recording_id", "speaker", "audio_path", "sampling_rate",
                                                 "num_channels", "duration", "channel", "mix"])
    options = {"speakers": None if speakers is None else str(Path(speakers).resolve()),
               "speaker_from": speaker_from, "speaker_sep": speaker_sep, "phone_scheme": phone_scheme,
               "unknown": unknown, "multi": multi, "mix": mix, "channel": channel,
               "alignments": None if alignments is None else str(align_root), "phone_tier": phone_tier,
               "word_tier": word_tier}
    corpus = Corpus(phones=phones, speakers=spk_df, recordings=recordings, name=name or root_p.name,
                    source=str(root_p), phone_set="arpabet39", loader="textgrid_corpus",
                    loader_version=LOADER_VERSION, problems=problems_frame(problems), extra=options)
    prov = {"loader": "textgrid_corpus", "loader_version": LOADER_VERSION, "source": str(root_p), **options,
            "phone_map": phones.attrs.get("provenance", {}).get("phone_map"),
            "phone_map_sha256": phones.attrs.get("provenance", {}).get("phone_map_sha256")}
    for table in (corpus.phones, corpus.speakers, corpus.recordings, corpus.problems):
        table.attrs["provenance"] = dict(prov)
    return corpus
