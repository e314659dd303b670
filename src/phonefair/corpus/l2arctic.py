"""L2-ARCTIC loader: 24 non-native English speakers (6 L1s x 2 male + 2 female), read CMU ARCTIC prompts.

Layout ``<root>/<SPK>/{wav,transcript,textgrid,annotation}/arctic_a0001.{wav,txt,TextGrid}``; audio is 44.1 kHz
(recorded at its native rate; :func:`phonefair.corpus.audio.read_audio` resamples to 16 kHz). The spontaneous
``suitcase_corpus/`` is not loaded (reported in ``corpus.extra``).

Two sources of phones:

``source="textgrid"``
    the forced alignments (every utterance). The label is the *canonical* (dictionary) phone: ``canonical`` holds
    it normalised, ``perceived`` and ``error_type`` are <NA>, and ``label`` has no effect.
``source="annotation"``
    the manually corrected TextGrids (about 150 utterances per speaker). A correctly pronounced phone is a bare
    label (``AH0``); an error is a triple ``CPL,PPL,type`` with type ``s`` (substitution), ``d`` (deletion,
    ``PPL = sil``) or ``a`` (addition, ``CPL = sil``); ``PPL`` may end with ``*`` (a distortion).
    ``label="perceived"`` (default): ``phone_raw`` is what the annotators heard (``PPL``, ``*`` stripped);
    deleted phones are not tokens of the perceived side (counted, one ``info`` row). ``label="canonical"``:
    ``phone_raw`` is ``CPL``; added phones are not canonical tokens (counted, one ``info`` row).

Extra phone-table columns (after the standard ones): ``canonical`` and ``perceived`` (ARPABET-39, <NA> if absent
or unmappable), ``error_type`` (``"s"``/``"d"``/``"a"``/<NA>) and ``distortion`` (bool; ``*`` on ``PPL``).
Stray characters seen in the release (``ER)``, ``V``\\`\\` ``, spaces) are removed with a warning row.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from phonefair.corpus.audio import AudioError, audio_info
from phonefair.corpus.phonesets import UnknownPhoneError, check_unknown_policy, map_label, normalize_phones
from phonefair.corpus.schema import Corpus, CorpusError, corpus_root, problems_frame
from phonefair.corpus.textgrid import textgrid_phones

__all__ = ["KNOWN_BROKEN", "L2ARCTIC_SPEAKERS", "load_l2arctic", "parse_annotation_label"]

#: speaker -> (gender, L1). From the L2-ARCTIC documentation (speaker table, as copied in lhotse
#: ``recipes/l2_arctic.py``; the corpus documentation calls the Chinese speakers' L1 Mandarin).
L2ARCTIC_SPEAKERS: dict[str, tuple[str, str]] = {
    "ABA": ("male", "Arabic"), "SKA": ("female", "Arabic"), "YBAA": ("male", "Arabic"),
    "ZHAA": ("female", "Arabic"),
    "BWC": ("male", "Mandarin"), "LXC": ("female", "Mandarin"), "NCC": ("female", "Mandarin"),
    "TXHC": ("male", "Mandarin"),
    "ASI": ("male", "Hindi"), "RRBI": ("male", "Hindi"), "SVBI": ("female", "Hindi"), "TNI": ("female", "Hindi"),
    "HJK": ("female", "Korean"), "HKK": ("male", "Korean"), "YDCK": ("female", "Korean"),
    "YKWK": ("male", "Korean"),
    "EBVS": ("male", "Spanish"), "ERMS": ("male", "Spanish"), "MBMPS": ("female", "Spanish"),
    "NJS": ("female", "Spanish"),
    "HQTV": ("male", "Vietnamese"), "PNV": ("female", "Vietnamese"), "THV": ("female", "Vietnamese"),
    "TLV": ("male", "Vietnamese"),
}

#: annotation files that public preprocessing recipes skip as broken: (speaker, utterance)
KNOWN_BROKEN: frozenset[tuple[str, str]] = frozenset({("YDCK", "arctic_a0209"), ("YDCK", "arctic_a0272")})

_JUNK = re.compile(r"[^A-Za-z0-9]")
_SILENCE_WORDS = {"", "sil", "sp", "spn", "<unk>"}


def _problem(severity: str, file: Any, field: str, message: str, action: str,
             line: int | None = None) -> dict[str, Any]:
    return {"severity": severity, "file": None if file is None else str(file), "line": line, "field": field,
            "message": message, "action": action}


def parse_annotation_label(text: str) -> tuple[str, str, str | None, bool, bool]:
    """Split an L2-ARCTIC annotation label into ``(canonical, perceived, error_type, distortion, cleaned)``.

    ``"AH0"`` -> ``("AH0", "AH0", None, False, False)``; ``"DH,D*,s"`` -> ``("DH", "D", "s", True, False)``.
    Stray non-alphanumeric characters are removed (``cleaned=True``). Raises ``ValueError`` for a label with
    two fields, more than three, an empty phone or an error type other than ``s``/``d``/``a``.
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        parts = [parts[0], parts[0], ""]
    if len(parts) != 3:
        raise ValueError(f"expected 'PHONE' or 'CPL,PPL,s|d|a', got {text!r}")
    cpl, ppl, etype = parts
    distortion = ppl.endswith("*")
    ppl = ppl.rstrip("*")
    c, p = _JUNK.sub("", cpl), _JUNK.sub("", ppl)
    if not c or not p:
        raise ValueError(f"empty phone in {text!r}")
    etype = etype.lower()
    if etype not in ("", "s", "d", "a"):
        raise ValueError(f"error type {etype!r} in {text!r} is not s, d or a")
    return c, p, etype or None, distortion, (c != cpl or p != ppl)


def _norm(label: str | None) -> str | None:
    """ARPABET-39 class of a label, or None (absent, unknown, deleted or multi-segment)."""
    if label is None:
        return None
    try:
        targets, _ = map_label(label, "arpabet")
    except UnknownPhoneError:
        return None
    return targets[0] if len(targets) == 1 else None


def _child(d: Path, name: str) -> Path | None:
    """Sub-folder ``name`` of ``d``, any letter case."""
    for p in d.iterdir():
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def load_l2arctic(root: str | os.PathLike[str], *, source: Literal["textgrid", "annotation"] = "textgrid",
                  label: Literal["canonical", "perceived"] = "perceived",
                  unknown: Literal["drop", "keep", "error"] = "drop") -> Corpus:
    """Load L2-ARCTIC read speech from ``root`` (the folder holding ``ABA/``, ``SKA/``, ...) into a Corpus.

    ``source`` picks forced alignments (``"textgrid"``) or manual annotations (``"annotation"``); ``label`` picks
    the side of an annotated error that becomes ``phone_raw`` (module docstring). A bad file (unreadable
    TextGrid, missing wav, bad label) gives a problem row and is skipped. Raises :class:`CorpusError` when ``root``
    holds no speaker folder.
    """
    if source not in ("textgrid", "annotation"):
        raise ValueError(f"source={source!r}: expected 'textgrid' or 'annotation'")
    if label not in ("canonical", "perceived"):
        raise ValueError(f"label={label!r}: expected 'canonical' or 'perceived'")
    check_unknown_policy(unknown)
    root = corpus_root(root, "L2-ARCTIC")
    spk_dirs = sorted(d for d in root.iterdir() if d.is_dir() and _child(d, "wav") is not None
                      and d.name.lower() != "suitcase_corpus")
    if not spk_dirs:
        raise CorpusError(f"{root}: no L2-ARCTIC speaker folder (<SPK>/wav/) found")

    problems: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    recs: list[dict[str, Any]] = []
    n_not_token = 0
    for spk_dir in spk_dirs:
        spk = spk_dir.name.upper()
        tg_dir = _child(spk_dir, source)
        if tg_dir is None:
            problems.append(_problem("warning", spk_dir, source, f"speaker {spk} has no {source}/ folder",
                                     "skipped speaker"))
            continue
        wav_dir = _child(spk_dir, "wav")
        assert wav_dir is not None
        wavs = {p.name.lower(): p for p in wav_dir.iterdir()}
        for tg in sorted(p for p in tg_dir.iterdir() if p.suffix.lower() == ".textgrid"):
            stem = tg.stem
            if source == "annotation" and (spk, stem) in KNOWN_BROKEN:
                problems.append(_problem("error", tg, "file", "known broken annotation file in the L2-ARCTIC "
                                         "release (skipped by public recipes)", "skipped utterance"))
                continue
            wav = wavs.get(f"{stem}.wav".lower())
            if wav is None:
                problems.append(_problem("error", tg, "audio", f"no wav/{stem}.wav for this TextGrid",
                                         "skipped utterance"))
                continue
            try:
                info = audio_info(wav)
            except (AudioError, OSError) as exc:
                problems.append(_problem("error", wav, "audio", f"unreadable audio: {exc}", "skipped utterance"))
                continue
            try:
                table, prob = textgrid_phones(tg)
            except (CorpusError, OSError, ValueError) as exc:
                problems.append(_problem("error", tg, "phones", f"cannot read the phones tier: {exc}",
                                         "skipped utterance"))
                continue
            problems.extend(prob)
            rec_id = f"{spk}-{stem}"
            utt_rows: list[dict[str, Any]] = []
            for a, b, text, word, line in zip(table["start"], table["end"], table["phone_raw"], table["word"],
                                              table["line"], strict=True):
                line = None if pd.isna(line) else int(line)
                try:
                    cpl, ppl, etype, distortion, cleaned = parse_annotation_label(str(text))
                except ValueError as exc:
                    problems.append(_problem("warning", tg, "phones", str(exc), "dropped phone", line))
                    continue
                if cleaned:
                    problems.append(_problem("warning", tg, "phones", f"stray characters removed from label {text!r}",
                                             "kept", line))
                if source == "textgrid":
                    raw, canon, perc, etype, distortion = cpl, _norm(cpl), None, None, False
                else:
                    canon, perc = _norm(cpl), _norm(ppl)
                    if (label == "perceived" and etype == "d") or (label == "canonical" and etype == "a"):
                        n_not_token += 1  # a deleted phone was not heard; an added one was not in the prompt
                        continue
                    raw = ppl if label == "perceived" else cpl
                if etype == "d":
                    perc = None
                elif etype == "a":
                    canon = None
                w = None if pd.isna(word) or str(word).strip().lower() in _SILENCE_WORDS else str(word)
                utt_rows.append({"recording_id": rec_id, "speaker": spk, "start": float(a), "end": float(b),
                                 "phone_raw": raw, "word": w, "canonical": canon, "perceived": perc,
                                 "error_type": etype, "distortion": distortion, "_file": str(tg)})
            rows.extend(utt_rows)
            recs.append({"recording_id": rec_id, "speaker": spk, "audio_path": str(wav.relative_to(root)),
                         "sampling_rate": info.sampling_rate, "num_channels": info.num_channels,
                         "duration": info.duration, "channel": None})
    if n_not_token:
        what = "deleted (CPL,sil,d)" if label == "perceived" else "added (sil,PPL,a)"
        problems.append(_problem("info", None, "error_type", f"{n_not_token} {what} phone(s) are not tokens of the "
                                 f"{label} side", "dropped phone"))

    cols = ["recording_id", "speaker", "start", "end", "phone_raw", "word", "canonical", "perceived",
            "error_type", "distortion", "_file"]
    raw_df = pd.DataFrame(rows, columns=cols)
    phones, prob = normalize_phones(raw_df, "arpabet", unknown=unknown, file_column="_file")
    problems.extend(prob)
    attrs = dict(phones.attrs)
    phones = phones.drop(columns=["_file"])
    for c in ("canonical", "perceived", "error_type"):
        phones[c] = phones[c].astype("string")
    phones["distortion"] = phones["distortion"].astype("bool")
    phones.attrs = attrs

    speakers = _speakers(sorted({r["speaker"] for r in recs}), problems)
    corpus = Corpus(phones=phones, speakers=speakers,
                    recordings=pd.DataFrame(recs, columns=["recording_id", "speaker", "audio_path", "sampling_rate",
                                                           "num_channels", "duration", "channel"]),
                    name="l2arctic", source=str(root), loader="phonefair.corpus.l2arctic", loader_version="1",
                    problems=problems_frame(problems),
                    extra={"source": source, "label": label if source == "annotation" else "canonical",
                           "unknown": unknown, "phone_scheme": "arpabet", "not_tokens": n_not_token,
                           "suitcase_corpus_loaded": False})
    corpus.phones.attrs["provenance"] = {**attrs, "loader": "phonefair.corpus.l2arctic", "source": str(root),
                                         "annotation_source": source, "label": label}
    return corpus


def _speakers(found: list[str], problems: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for spk in found:
        gender, l1 = L2ARCTIC_SPEAKERS.get(spk, (None, None))
        if gender is None:
            problems.append(_problem("warning", None, "speaker", f"speaker {spk} is not one of the 24 L2-ARCTIC "
                                     "speakers: gender and L1 unknown", "kept"))
        rows.append({"speaker": spk, "gender": gender, "l1": l1, "age": np.nan})
    return pd.DataFrame(rows, columns=["speaker", "gender", "l1", "age"])
