"""Corpus validation: one report of everything that could bias or break a fairness analysis.

Checks: audio missing / unreadable, alignments past the end of the audio (10 ms tolerance), negative /
zero-length / overlapping phone intervals, unmapped phones (``phone`` <NA>), speakers with phones but no
metadata row, speakers without phones, and groups with fewer than ``min_speakers_per_group`` speakers. The
summary records the ARPABET-39 coverage (overall and per group) so a missing phone class is visible before any
probe is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from phonefair.corpus.audio import AudioError, audio_info, audio_problems, read_audio
from phonefair.corpus.phonesets import ARPABET39
from phonefair.corpus.schema import Corpus, CorpusError, problems_frame

__all__ = ["ValidationReport", "validate_corpus"]

#: alignment may run past the audio by this much (MFA snaps the last boundary to the file end; rounding)
END_TOLERANCE = 0.010
_EPS = 1e-6
_MAX_PER_CHECK = 50  # problem rows per check and recording-level issue; the rest are summarised in one row


@dataclass
class ValidationReport:
    """Result of :func:`validate_corpus`: ``problems`` (schema ``PROBLEM_COLUMNS``, the corpus' own problems
    first), ``summary`` (counts, hours, phone-set coverage) and ``ok`` (no problem of severity ``"error"``)."""

    problems: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    ok: bool = True

    def to_text(self) -> str:
        """A readable multi-line report: summary, then every problem with its file and line."""
        s = self.summary
        lines = [f"corpus {s.get('name', '?')!r}: {'OK' if self.ok else 'NOT OK'} "
                 f"({s.get('errors', 0)} errors, {s.get('warnings', 0)} warnings)",
                 f"  speakers {s.get('speakers')}, recordings {s.get('recordings')}, "
                 f"hours {s.get('hours', 0.0):.3f}, phones {s.get('phones')}"]
        cov = s.get("coverage", {})
        if cov:
            lines.append(f"  ARPABET-39 coverage: {len(cov.get('present', []))}/39; missing: "
                         f"{' '.join(cov.get('missing', [])) or '-'}")
        for g, gc in s.get("coverage_by_group", {}).items():
            lines.append(f"    group {g!r}: {gc['speakers']} speakers, {gc['phones']} phones, "
                         f"missing {' '.join(gc['missing']) or '-'}")
        if self.problems.empty:
            lines.append("no problems")
        else:
            lines.append(f"problems ({len(self.problems)}):")
            for r in self.problems.itertuples(index=False):
                loc = "" if pd.isna(r.file) else str(r.file)
                if not pd.isna(r.line):
                    loc += f":{int(r.line)}"
                fld = "" if pd.isna(r.field) else f" [{r.field}]"
                act = "" if pd.isna(r.action) else f" -> {r.action}"
                lines.append(f"  {str(r.severity).upper() if not pd.isna(r.severity) else '?'} "
                             f"{loc or '(corpus)'}{fld}: {r.message}{act}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _p(severity: str, file: Any, line: Any, field_: str, message: str, action: str) -> dict[str, Any]:
    return {"severity": severity, "file": None if file is None or file is pd.NA else str(file),
            "line": None if line is None or line is pd.NA or (isinstance(line, float) and np.isnan(line))
            else int(line), "field": field_, "message": message, "action": action}


def _capped(rows: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    if len(rows) <= _MAX_PER_CHECK:
        return rows
    rest = len(rows) - _MAX_PER_CHECK
    return rows[:_MAX_PER_CHECK] + [_p(rows[_MAX_PER_CHECK]["severity"], None, None, rows[0]["field"],
                                       f"... and {rest} more {what}", rows[0]["action"])]


def _coverage(phones: pd.Series) -> dict[str, Any]:
    counts = phones.dropna().value_counts()
    present = [p for p in ARPABET39 if counts.get(p, 0) > 0]
    return {"present": present, "missing": [p for p in ARPABET39 if p not in present],
            "counts": {p: int(counts.get(p, 0)) for p in ARPABET39}}


def validate_corpus(corpus: Corpus, *, check_audio: bool = True, decode_audio: bool = False,
                    min_speakers_per_group: int = 5, group_by: str | None = None) -> ValidationReport:
    """Check a corpus and summarise it.

    ``check_audio`` reads every recording's header (missing / unreadable audio, real duration);
    ``decode_audio`` also decodes it and reports clipping and silence (slow on big corpora). ``group_by`` is a
    speaker-table column: speakers per group, coverage per group and groups smaller than
    ``min_speakers_per_group`` are reported. The returned problems start with ``corpus.problems``.
    """
    if group_by is not None and group_by not in corpus.speakers.columns:
        raise CorpusError(f"group_by={group_by!r} is not a speaker-table column; columns are "
                          f"{list(corpus.speakers.columns)}")
    if min_speakers_per_group < 1:
        raise ValueError(f"min_speakers_per_group must be >= 1, got {min_speakers_per_group}")
    ph, rec, spk = corpus.phones, corpus.recordings, corpus.speakers
    new: list[dict[str, Any]] = []
    align_file = ph["align_file"] if "align_file" in ph.columns else pd.Series(pd.NA, index=ph.index)
    line_col = ph["line"] if "line" in ph.columns else pd.Series(pd.NA, index=ph.index)

    # audio: existence / readability, true duration
    duration = dict(zip(rec["recording_id"], rec["duration"], strict=True))
    if check_audio:
        rows: list[dict[str, Any]] = []
        for rid in rec["recording_id"]:
            path = corpus.audio_path(rid)
            try:
                info = audio_info(path)
            except AudioError as exc:
                rows.append(_p("error", path, None, "audio", str(exc), "recording unusable"))
                continue
            old = duration.get(rid)
            if old is not None and not pd.isna(old) and abs(old - info.duration) > END_TOLERANCE:
                rows.append(_p("warning", path, None, "duration", f"recordings table says {old:.3f} s, file "
                               f"has {info.duration:.3f} s", "using the file's duration"))
            duration[rid] = info.duration
            if decode_audio:
                try:
                    x = read_audio(path, mix=True)
                except AudioError as exc:
                    rows.append(_p("error", path, None, "audio", str(exc), "recording unusable"))
                    continue
                rows += audio_problems(path, x)
        new += _capped(rows, "audio problems")
    unknown_rec = sorted(set(ph["recording_id"].dropna()) - set(rec["recording_id"]))
    for rid in unknown_rec[:_MAX_PER_CHECK]:
        new.append(_p("error", None, None, "recording_id", f"phones reference recording {rid!r} that is not "
                      "in the recordings table", "phones unusable"))

    # alignment past the end of the audio
    rows = []
    ends = ph.groupby("recording_id", sort=True)["end"].max()
    for rid, end in ends.items():
        d = duration.get(rid)
        if d is not None and not pd.isna(d) and end > d + END_TOLERANCE:
            i = ph.index[(ph["recording_id"] == rid)][ph.loc[ph["recording_id"] == rid, "end"].argmax()]
            rows.append(_p("error", align_file.loc[i], line_col.loc[i], "end",
                           f"recording {rid!r}: alignment ends at {end:.3f} s, audio is {d:.3f} s long",
                           "phones past the end are unusable"))
    new += _capped(rows, "recordings aligned past the end of the audio")

    # interval sanity (phones are sorted by recording, start)
    start, end = ph["start"].to_numpy(), ph["end"].to_numpy()
    same_rec = np.r_[False, ph["recording_id"].to_numpy()[1:] == ph["recording_id"].to_numpy()[:-1]]
    prev_end = np.r_[-np.inf, end[:-1]]
    same_spk = np.r_[False, ph["speaker"].astype("object").to_numpy()[1:] ==
                     ph["speaker"].astype("object").to_numpy()[:-1]]
    checks = [
        ("negative", start < 0, "error", "starts before 0"),
        ("zero-length", end - start <= _EPS, "error", "has zero or negative length"),
        # overlaps between different speakers of a multi-speaker file are legitimate (cross-talk)
        ("overlapping", same_rec & same_spk & (start < prev_end - _EPS), "warning", "overlaps the previous phone"),
    ]
    for what, mask, sev, text in checks:
        rows = []
        for i in np.flatnonzero(mask):
            r = ph.iloc[i]
            rows.append(_p(sev, align_file.iloc[i], line_col.iloc[i], "start",
                           f"recording {r['recording_id']!r}: phone {r['phone_raw']!r} [{r['start']:.4f}, "
                           f"{r['end']:.4f}] {text}", "unusable" if sev == "error" else "kept"))
        new += _capped(rows, f"{what} intervals")

    # unmapped phones
    unk = ph[ph["phone"].isna()]
    if len(unk):
        for label, g in unk.groupby(unk["phone_raw"].astype("object").fillna("<NA>"), sort=True):
            i = g.index[0]
            new.append(_p("warning", align_file.loc[i], line_col.loc[i], "phone",
                          f"{len(g)} phone(s) with unmapped label {label!r} (phone <NA>), e.g. recording "
                          f"{g['recording_id'].iloc[0]!r}", "excluded from probing"))

    # speakers
    with_phones = set(ph["speaker"].dropna().astype(str))
    in_table = set(spk["speaker"].dropna().astype(str))
    no_meta = sorted(with_phones - in_table)
    new += _capped([_p("warning", None, None, "speaker", f"speaker {s!r} has phones but no row in the speakers "
                       "table (no metadata)", "kept, attributes <NA>") for s in no_meta], "speakers without metadata")
    no_phones = sorted(in_table - with_phones)
    new += _capped([_p("warning", None, None, "speaker", f"speaker {s!r} has no phones", "nothing to analyse")
                    for s in no_phones], "speakers without phones")
    if ph["speaker"].isna().any():
        new.append(_p("error", None, None, "speaker", f"{int(ph['speaker'].isna().sum())} phone(s) without a "
                      "speaker", "unusable"))

    summary: dict[str, Any] = {
        "name": corpus.name, "speakers": int(len(with_phones | in_table)),
        "speakers_with_phones": int(len(with_phones)), "recordings": int(len(rec)),
        "hours": float(sum(v for v in duration.values() if v is not None and not pd.isna(v)) / 3600),
        "phones": int(len(ph)), "phones_unmapped": int(ph["phone"].isna().sum()),
        "coverage": _coverage(ph["phone"]),
    }
    if group_by is not None:
        groups = spk.set_index(spk["speaker"].astype(str))[group_by]
        labels = ph["speaker"].astype("object").map(groups)
        by_group: dict[str, Any] = {}
        for g in sorted(set(groups.dropna().astype(str))):
            members = set(groups.index[groups.astype("object") == g]) & with_phones
            cov = _coverage(ph.loc[labels == g, "phone"])
            by_group[g] = {"speakers": len(members), "phones": int((labels == g).sum()),
                           "present": cov["present"], "missing": cov["missing"]}
            if len(members) < min_speakers_per_group:
                new.append(_p("warning", None, None, group_by, f"group {group_by}={g!r} has {len(members)} "
                              f"speaker(s) with phones (< {min_speakers_per_group})",
                              "too small for per-group analysis"))
        n_na = len(with_phones & set(groups.index[groups.isna()])) + len(with_phones - set(groups.index))
        if n_na:
            new.append(_p("warning", None, None, group_by, f"{n_na} speaker(s) with phones have no {group_by!r} "
                          "value", "not in any group"))
        summary["group_by"] = group_by
        summary["coverage_by_group"] = by_group

    problems = pd.concat([corpus.problems, problems_frame(new)], ignore_index=True)
    problems = problems_frame(problems.to_dict("records")) if len(problems) else problems_frame([])
    sev = problems["severity"].fillna("")
    summary["errors"] = int((sev == "error").sum())
    summary["warnings"] = int((sev == "warning").sum())
    problems.attrs["provenance"] = {"validated": corpus.name, "fingerprint": corpus.fingerprint(),
                                    "check_audio": check_audio, "decode_audio": decode_audio,
                                    "group_by": group_by, "min_speakers_per_group": min_speakers_per_group,
                                    "end_tolerance_s": END_TOLERANCE}
    return ValidationReport(problems=problems, summary=summary, ok=summary["errors"] == 0)
