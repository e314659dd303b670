"""Buckeye Corpus loader: 40 speakers from Columbus, Ohio, conversational interviews, hand-corrected phones.

Tracks ``s0101a.{wav,phones,words}`` are read from extracted folders anywhere under ``root``; the distributed
nested zips (``s01.zip`` -> ``s0101a.zip`` -> files) are extracted on request (``extract_to=``).

``.phones`` / ``.words`` are ESPS/xlabel files: a header up to a line ``#``, then ``<END_TIME> <color> <label>``
lines; the time is the segment's **end** and its start is the previous line's end (the first starts at 0).
Labels lose a ``+1`` suffix and anything after ``;`` (as scjs/buckeye does); a line without a label ends a
segment that is skipped with a warning row.

Labels: Buckeye's lower-case ARPABET-like set plus extras (:data:`BUCKEYE_TO_ARPABET`: nasalised vowels such as
``aan`` -> base vowel, ``tq`` -> ``t``, ``h`` -> ``hh``, syllabic ``el em en eng``, flaps ``dx nx``), mapped to
ARPABET-39 through the ``"arpabet"`` phone map. ``SIL`` is silence (``phone="sil"``). Other non-speech markers
(``VOCNOISE``, ``NOISE``, ``LAUGH``, ``IVER`` = interviewer speech, ``{B_TRANS}``, ``<EXCLUDE...>``, ``CUTOFF``,
``ERROR``, ``UNKNOWN``, ...) are kept as rows with ``phone=<NA>`` (``phone_raw`` keeps the marker) so nothing
disappears; filter ``phone.notna()`` to get speech.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from phonefair.corpus.audio import AudioError, audio_info
from phonefair.corpus.phonesets import check_unknown_policy, normalize_phones
from phonefair.corpus.schema import Corpus, CorpusError, corpus_root, problems_frame
from phonefair.corpus.timit import words_by_midpoint

__all__ = ["BUCKEYE_SPEAKERS", "BUCKEYE_TO_ARPABET", "is_nonspeech", "load_buckeye", "read_xlabel"]

#: speaker -> (sex, age band, interviewer sex); ``y`` = under 30, ``o`` = over 40. From ``SPEAKERS`` in
#: scjs/buckeye ``buckeye/buckeye.py`` (MIT), which follows the corpus documentation.
BUCKEYE_SPEAKERS: dict[str, tuple[str, str, str]] = {
    "s01": ("f", "y", "f"), "s02": ("f", "o", "m"), "s03": ("m", "o", "m"), "s04": ("f", "y", "f"),
    "s05": ("f", "o", "f"), "s06": ("m", "y", "f"), "s07": ("f", "o", "f"), "s08": ("f", "y", "f"),
    "s09": ("f", "y", "f"), "s10": ("m", "o", "f"), "s11": ("m", "y", "m"), "s12": ("f", "y", "m"),
    "s13": ("m", "y", "f"), "s14": ("f", "o", "f"), "s15": ("m", "y", "m"), "s16": ("f", "o", "m"),
    "s17": ("f", "o", "m"), "s18": ("f", "o", "f"), "s19": ("m", "o", "f"), "s20": ("f", "o", "f"),
    "s21": ("f", "y", "m"), "s22": ("m", "o", "f"), "s23": ("m", "o", "m"), "s24": ("m", "o", "m"),
    "s25": ("f", "o", "m"), "s26": ("f", "y", "f"), "s27": ("f", "o", "m"), "s28": ("m", "y", "m"),
    "s29": ("m", "o", "f"), "s30": ("m", "y", "m"), "s31": ("f", "y", "m"), "s32": ("m", "y", "f"),
    "s33": ("m", "y", "f"), "s34": ("m", "y", "m"), "s35": ("m", "o", "m"), "s36": ("m", "o", "f"),
    "s37": ("f", "y", "m"), "s38": ("m", "o", "m"), "s39": ("f", "y", "m"), "s40": ("m", "y", "f"),
}

#: Buckeye labels that are not plain CMU ARPABET -> the ARPABET label they fold to (then ARPABET-39 through
#: the ``"arpabet"`` phone map: ``NX``->n, ``EL``->l, ``EM``->m, ``EN``->n, ``ENG``->ng, ``DX``->dx).
#: Nasalised vowels (Buckeye manual: vowel + ``n``) lose their nasalisation; ``tq`` (glottalised /t/ or glottal
#: stop) is /t/. Plain labels (``aa``, ``b``, ...) go to the ``"arpabet"`` map unchanged.
BUCKEYE_TO_ARPABET: dict[str, str] = {
    "aan": "AA", "aen": "AE", "ahn": "AH", "aon": "AO", "awn": "AW", "ayn": "AY", "ehn": "EH", "ern": "ER",
    "eyn": "EY", "ihn": "IH", "iyn": "IY", "own": "OW", "oyn": "OY", "uhn": "UH", "uwn": "UW",
    "h": "HH", "tq": "T", "nx": "NX", "dx": "DX", "el": "EL", "em": "EM", "en": "EN", "eng": "ENG",
}

_AGE_BAND = {"y": "young", "o": "old"}
_GENDER = {"f": "female", "m": "male"}
# upper-case non-speech markers (scjs/buckeye PAUSE_RE); phone labels are lower case, so no clash
_NONSPEECH = re.compile(r"[<>{}]|TRANS|SIL|IVER|ERROR|CUTOFF|EXCLUDE|VOCNOISE|NOISE|UNKNOWN|LAUGH")
_TRACK = re.compile(r"^(s\d{2})\d{2}[a-z]$", re.IGNORECASE)
_TRACK_ZIP = re.compile(r"(?:^|/)(s\d{4}[a-z])\.zip$", re.IGNORECASE)


def is_nonspeech(label: str) -> bool:
    """True for Buckeye's non-speech markers (``SIL``, ``VOCNOISE``, ``<IVER>``, ``{B_TRANS}``, ...)."""
    return bool(_NONSPEECH.search(label))


def _problem(severity: str, file: Any, line: int | None, field: str, message: str, action: str) -> dict[str, Any]:
    return {"severity": severity, "file": None if file is None else str(file), "line": line, "field": field,
            "message": message, "action": action}


def read_xlabel(path: str | os.PathLike[str], kind: Literal["phones", "words"] = "phones"
                ) -> tuple[list[tuple[float, float, str, int]], list[dict[str, Any]]]:
    """Segments ``(start, end, label, line)`` of a Buckeye ``.phones`` / ``.words`` file, plus problem dicts.

    The start of a segment is the previous line's time (0 for the first). ``.phones`` labels lose ``+1`` and
    anything after ``;``; ``.words`` labels are the word (first ``;`` field). Lines without a label and segments
    with a non-increasing time are skipped with a warning. Raises :class:`CorpusError` if the file has no ``#``
    header terminator.
    """
    path = Path(path)
    lines = path.read_text(encoding="latin-1").splitlines()
    try:
        body = next(i for i, ln in enumerate(lines) if ln.startswith("#")) + 1
    except StopIteration:
        raise CorpusError(f"{path}: no header terminator line '#' (not an ESPS/xlabel file)") from None
    problems: list[dict[str, Any]] = []
    out: list[tuple[float, float, str, int]] = []
    prev = 0.0
    for lineno, line in enumerate(lines[body:], start=body + 1):
        if not line.strip():
            continue
        parts = line.split(None, 2)
        try:
            t = float(parts[0])
        except ValueError:
            problems.append(_problem("warning", path, lineno, "time", f"bad time in {line.strip()!r}",
                                     "skipped line"))
            continue
        label = parts[2] if len(parts) > 2 else ""
        label = label.split(";")[0].replace("+1", "").strip() if kind == "phones" else label.split(";")[0].strip()
        if not label:
            problems.append(_problem("warning", path, lineno, "label", f"no label at time {t}", "skipped segment"))
        elif t <= prev:
            problems.append(_problem("warning", path, lineno, "time", f"segment {label!r} ends at {t} <= its start "
                                     f"{prev}", "skipped segment"))
        else:
            out.append((prev, t, label, lineno))
        prev = t
    return out, problems


def _extract_zips(root: Path, extract_to: Path, have: set[str], problems: list[dict[str, Any]]) -> int:
    """Extract the tracks' wav/phones/words from (nested) zips under ``root`` into ``extract_to/<track>/``."""
    n = 0
    for z in sorted(p for p in root.rglob("*") if p.suffix.lower() == ".zip" and p.is_file()):
        try:
            with zipfile.ZipFile(z) as outer:
                if m := _TRACK_ZIP.search(z.name):  # a track zip on disk
                    inner_zips = [(m.group(1), outer)]
                else:
                    inner_zips = [(mm.group(1), zipfile.ZipFile(io.BytesIO(outer.read(name))))
                                  for name in outer.namelist() if (mm := _TRACK_ZIP.search(name))]
                for track, inner in inner_zips:
                    if track.lower() in have:
                        continue
                    dest = extract_to / track.lower()
                    dest.mkdir(parents=True, exist_ok=True)
                    for name in inner.namelist():
                        base = name.rsplit("/", 1)[-1]
                        if base.lower().endswith((".wav", ".phones", ".words")):
                            (dest / base).write_bytes(inner.read(name))
                    have.add(track.lower())
                    n += 1
        except (zipfile.BadZipFile, OSError, KeyError) as exc:
            problems.append(_problem("error", z, None, "zip", f"cannot read zip: {exc}", "skipped archive"))
    return n


def load_buckeye(root: str | os.PathLike[str], *, speakers: pd.DataFrame | None = None,
                 extract_to: str | os.PathLike[str] | None = None,
                 unknown: Literal["drop", "keep", "error"] = "drop") -> Corpus:
    """Load the Buckeye Corpus under ``root`` into a :class:`Corpus` (one recording per track ``s0101a``).

    ``speakers``: a table with a ``speaker`` column (``"s01"``) whose other columns override or extend the built-in
    :data:`BUCKEYE_SPEAKERS` attributes (``gender``, ``age_band``, ``interviewer_gender``). ``extract_to``: where
    to extract tracks found only inside zips (zips are ignored, with a warning, when it is not given).
    ``unknown``: policy for a speech label the phone map does not know. Bad files give problem rows and are
    skipped. Raises :class:`CorpusError` when no track is found.
    """
    check_unknown_policy(unknown)
    root = corpus_root(root, "Buckeye")
    problems: list[dict[str, Any]] = []

    def tracks_under(d: Path) -> dict[str, Path]:
        return {p.stem.lower(): p for p in sorted(d.rglob("*")) if p.suffix.lower() == ".phones" and p.is_file()}

    found = tracks_under(root)
    n_zips = sum(1 for p in root.rglob("*") if p.suffix.lower() == ".zip")
    sources = {"extracted": len(found), "from_zips": 0}
    if n_zips and extract_to is None:
        problems.append(_problem("warning", root, None, "zip", f"{n_zips} zip archive(s) under the root were not "
                                 "read; pass extract_to=<folder> to extract the tracks they hold", "ignored"))
    elif n_zips and extract_to is not None:
        dest = Path(extract_to).resolve()
        sources["from_zips"] = _extract_zips(root, dest, set(found), problems)
        for k, v in tracks_under(dest).items():
            found.setdefault(k, v)
    if not found:
        raise CorpusError(f"{root}: no Buckeye track (s0101a.phones) found" +
                          ("" if extract_to or not n_zips else "; the corpus is zipped: pass extract_to="))

    phone_rows: list[dict[str, Any]] = []
    recs: list[dict[str, Any]] = []
    markers: Counter[str] = Counter()
    for track, phones_path in sorted(found.items()):
        m = _TRACK.match(track)
        if m is None:
            problems.append(_problem("warning", phones_path, None, "file", "file name is not a Buckeye track "
                                     "(s0101a.phones)", "skipped"))
            continue
        spk = m.group(1).lower()
        sib = {p.name.lower(): p for p in phones_path.parent.iterdir()}
        wav = sib.get(f"{track}.wav")
        if wav is None:
            problems.append(_problem("error", phones_path, None, "audio", f"no {track}.wav next to it",
                                     "skipped recording"))
            continue
        try:
            info = audio_info(wav)
        except (AudioError, OSError) as exc:
            problems.append(_problem("error", wav, None, "audio", f"unreadable audio: {exc}", "skipped recording"))
            continue
        try:
            segs, prob = read_xlabel(phones_path, "phones")
        except (CorpusError, OSError) as exc:
            problems.append(_problem("error", phones_path, None, "file", str(exc), "skipped recording"))
            continue
        problems.extend(prob)
        words: list[tuple[float, float, str]] = []
        words_path = sib.get(f"{track}.words")
        if words_path is None:
            problems.append(_problem("warning", phones_path, None, "words", f"no {track}.words: word=<NA>", "kept"))
        else:
            try:
                wsegs, wprob = read_xlabel(words_path, "words")
                problems.extend(wprob)
                words = [(a, b, w) for a, b, w, _ in wsegs if not w.startswith(("<", "{"))]
            except (CorpusError, OSError) as exc:
                problems.append(_problem("warning", words_path, None, "file", str(exc), "word=<NA>"))
        if segs and segs[-1][1] > info.duration + 0.5:
            problems.append(_problem("warning", phones_path, None, "time", f"last segment ends at {segs[-1][1]:.2f} s,"
                                     f" after the audio ({info.duration:.2f} s)", "kept"))
        wlist = words_by_midpoint([s[0] for s in segs], [s[1] for s in segs], words)
        for (a, b, label, line), w in zip(segs, wlist, strict=True):
            ns = is_nonspeech(label)
            if ns and label != "SIL":
                markers[label] += 1
            phone_rows.append({"recording_id": track, "speaker": spk, "start": a, "end": b, "phone_raw": label,
                               "word": None if ns else w, "_arpa": "SIL" if ns else
                               BUCKEYE_TO_ARPABET.get(label, label), "_nonspeech": ns and label != "SIL",
                               "_file": str(phones_path)})
        recs.append({"recording_id": track, "speaker": spk, "audio_path": _rel(wav, root),
                     "sampling_rate": info.sampling_rate, "num_channels": info.num_channels,
                     "duration": info.duration, "channel": None})
    if markers:
        problems.append(_problem("info", None, None, "phone_raw", "non-speech segments kept with phone=<NA>: " +
                                 ", ".join(f"{k} x{v}" for k, v in markers.most_common()), "kept"))

    phones = _normalise(phone_rows, unknown, problems)
    spk_table = _speakers(sorted({r["speaker"] for r in recs}), speakers, problems)
    corpus = Corpus(phones=phones, speakers=spk_table,
                    recordings=pd.DataFrame(recs, columns=["recording_id", "speaker", "audio_path", "sampling_rate",
                                                           "num_channels", "duration", "channel"]),
                    name="buckeye", source=str(root), loader="phonefair.corpus.buckeye", loader_version="1",
                    problems=problems_frame(problems),
                    extra={"unknown": unknown, "phone_scheme": "buckeye->arpabet", "tracks": sources,
                           "extract_to": None if extract_to is None else str(extract_to),
                           "nonspeech_kept": dict(markers)})
    corpus.phones.attrs["provenance"] = {**phones.attrs.get("provenance", {}), "loader": "phonefair.corpus.buckeye",
                                         "source": str(root), "label_map": "BUCKEYE_TO_ARPABET"}
    return corpus


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:  # extracted outside the root: keep it absolute
        return str(p)


def _normalise(rows: list[dict[str, Any]], unknown: str, problems: list[dict[str, Any]]) -> pd.DataFrame:
    cols = ["recording_id", "speaker", "start", "end", "phone_raw", "word", "_arpa", "_nonspeech", "_file"]
    df = pd.DataFrame(rows, columns=cols)
    speech = df[~df["_nonspeech"].astype(bool)].copy()
    speech["_buckeye"] = speech["phone_raw"]
    speech["phone_raw"] = speech["_arpa"]  # normalise the ARPABET spelling, then restore the Buckeye label
    out, prob = normalize_phones(speech, "arpabet", unknown=unknown, file_column="_file")  # type: ignore[arg-type]
    for p in prob:
        p["message"] = f"{p['message']} (Buckeye label mapped through BUCKEYE_TO_ARPABET)"
    problems.extend(prob)
    attrs = dict(out.attrs)
    out["phone_raw"] = out["_buckeye"]
    other = df[df["_nonspeech"].astype(bool)].copy()
    other["phone"] = pd.NA
    other["stress"] = pd.NA
    both = pd.concat([out.drop(columns=["_buckeye"]), other], ignore_index=True)
    both = both.drop(columns=["_arpa", "_nonspeech", "_file"])
    both["phone"] = both["phone"].astype("string")
    both.attrs = attrs
    return both


def _speakers(found: list[str], user: pd.DataFrame | None, problems: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for spk in found:
        sex, age, iv = BUCKEYE_SPEAKERS.get(spk, (None, None, None))
        if sex is None:
            problems.append(_problem("warning", None, None, "speaker", f"speaker {spk} not in BUCKEYE_SPEAKERS: "
                                     "attributes unknown (pass speakers=)", "kept"))
        rows.append({"speaker": spk, "gender": _GENDER.get(sex or ""), "age_band": _AGE_BAND.get(age or ""),
                     "interviewer_gender": _GENDER.get(iv or ""), "age": np.nan})
    table = pd.DataFrame(rows, columns=["speaker", "gender", "age_band", "interviewer_gender", "age"])
    if user is None:
        return table
    if "speaker" not in user.columns:
        raise CorpusError(f"speakers= table lacks a 'speaker' column; has {list(user.columns)}")
    u = user.copy()
    u["speaker"] = u["speaker"].astype(str).str.lower()
    if u["speaker"].duplicated().any():
        raise CorpusError(f"speakers= table repeats speaker(s) {u.loc[u['speaker'].duplicated(), 'speaker'].tolist()}")
    table = table.set_index("speaker")
    for col in u.columns.drop("speaker"):
        vals = u.set_index("speaker")[col]
        if col not in table.columns:
            table[col] = pd.Series(pd.NA, index=table.index, dtype=vals.dtype if vals.dtype.kind in "fiub"
                                   else "object")
        known = vals[vals.index.isin(table.index) & vals.notna()]
        table.loc[known.index, col] = known
    if extra := sorted(set(u["speaker"]) - set(table.index)):
        problems.append(_problem("warning", None, None, "speaker", f"speakers= rows for speaker(s) without "
                                 f"recordings ignored: {extra[:10]}", "ignored"))
    if "age" in table.columns:
        table["age"] = pd.to_numeric(table["age"], errors="coerce").astype("float64")
    return table.reset_index()
