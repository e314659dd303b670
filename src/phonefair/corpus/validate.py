"""Corpus validation: one report of everything that could bias or break a fairness analysis, before any
expensive step.

Checks. Audio: missing / unreadable files, header duration vs the recordings table, audio shorter than one
encoder frame, the samples themselves (NaN / inf, digital silence, clipping, near-silence; ``decode_audio``), a
sampling-rate header that does not fit the alignment. Alignment: phones past the end of their audio (the
extraction rule, :data:`~phonefair.extraction.frames.PAST_END_RULE`), negative / zero-length / overlapping
intervals, unmapped phones (``phone`` <NA>). Speakers: phones without a metadata row, speakers without phones,
groups with fewer than ``min_speakers_per_group`` speakers. The summary records the ARPABET-39 coverage (overall
and per group) so a missing phone class is visible before any probe is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair.corpus.audio import AudioError, audio_content_problems, audio_info
from phonefair.corpus.phonesets import ARPABET39
from phonefair.corpus.schema import Corpus, CorpusError, problems_frame
from phonefair.encoders.frames import RECEPTIVE_FIELD, SAMPLE_RATE
from phonefair.extraction.frames import END_TOLERANCE, PAST_END_RULE, audio_end_masks

__all__ = ["ValidationReport", "validate_corpus"]

#: audio shorter than one wav2vec-style encoder frame (25 ms) has no frame to pool: its phones cannot be embedded
MIN_DURATION = RECEPTIVE_FIELD / SAMPLE_RATE
#: sampling rates tried when a header does not fit the alignment
COMMON_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_EPS = 1e-6
_MAX_PER_CHECK = 50  # problem rows per phone-level check; the rest are summarised in one row
TEXT_ROWS_PER_KIND = 25  # to_text() lines per (severity, field); the problems table keeps every row


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
            shown: dict[tuple[Any, Any], int] = {}
            for r in self.problems.itertuples(index=False):
                kind = (r.severity, r.field)
                shown[kind] = shown.get(kind, 0) + 1
                if shown[kind] > TEXT_ROWS_PER_KIND:  # the table keeps every row; the text stays readable
                    continue
                loc = "" if pd.isna(r.file) else str(r.file)
                if not pd.isna(r.line):
                    loc += f":{int(r.line)}"
                fld = "" if pd.isna(r.field) else f" [{r.field}]"
                act = "" if pd.isna(r.action) else f" -> {r.action}"
                lines.append(f"  {str(r.severity).upper() if not pd.isna(r.severity) else '?'} "
                             f"{loc or '(corpus)'}{fld}: {r.message}{act}")
            for (sev, fld_), n in shown.items():
                if n > TEXT_ROWS_PER_KIND:
                    lines.append(f"  ... and {n - TEXT_ROWS_PER_KIND} more {sev} [{fld_}] problem(s) (every row is "
                                 f"in the problems table)")
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


def _audio_path(corpus: Corpus, audio_path: Any) -> Path:
    p = Path(str(audio_path))
    return p if p.is_absolute() else Path(corpus.source) / p


def _audio_checks(corpus: Corpus, duration: dict[Any, Any], samples: dict[str, tuple[int, int]], *,
                  decode_audio: bool, progress: bool) -> list[dict[str, Any]]:
    """Per recording: header readable, duration vs the recordings table, at least one encoder frame long, and
    (``decode_audio``) the samples: NaN/inf, digital silence, clipping, near-silence. Updates ``duration`` with
    the file's and ``samples`` with (sample count, header rate)."""
    rec = corpus.recordings
    rows: list[dict[str, Any]] = []
    items = zip(rec["recording_id"], rec["audio_path"], rec["channel"], strict=True)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, total=len(rec), desc="validate audio" + ("" if decode_audio else " headers"),
                     unit="rec")
    for rid, audio_path, channel in items:
        path = _audio_path(corpus, audio_path)
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
        samples[str(rid)] = (info.num_frames, info.sampling_rate)
        if info.duration < MIN_DURATION:
            rows.append(_p("error", path, None, "duration", f"recording {rid!r}: audio is {1000 * info.duration:.1f} "
                           f"ms long, shorter than one encoder frame ({1000 * MIN_DURATION:.0f} ms)",
                           "recording excluded (its phones are stored as NaN)"))
            continue
        if decode_audio:
            ch = None if pd.isna(channel) else int(channel)
            rows += audio_content_problems(path, channel=ch, mix=ch is None)
    return rows


def _end_checks(corpus: Corpus, duration: dict[Any, Any], samples: dict[str, tuple[int, int]],
                align_file: pd.Series, line_col: pd.Series) -> list[dict[str, Any]]:
    """Phones against the end of their audio, with extraction's own rule (:data:`PAST_END_RULE`): past the end
    is an error (NaN rows), truncated a warning; plus a hint when another sampling rate would fit the alignment."""
    ph = corpus.phones
    rows: list[dict[str, Any]] = []
    start = ph["start"].to_numpy(dtype=np.float64, na_value=np.nan)
    end = ph["end"].to_numpy(dtype=np.float64, na_value=np.nan)
    raw = ph["phone_raw"].astype("object").to_numpy()
    path_of = dict(zip(corpus.recordings["recording_id"], corpus.recordings["audio_path"], strict=True))
    for rid, idx in ph.groupby("recording_id", sort=True).indices.items():
        d = duration.get(rid)
        if d is None or pd.isna(d):
            continue
        past, truncated = audio_end_masks(start[idx], end[idx], float(d))
        for mask, severity, text, action in (
                (past, "error", "lie past the end of the audio ({d:.3f} s: midpoint at or after the end)",
                 "stored as NaN by extraction (excluded)"),
                (truncated, "warning", "end past the audio ({d:.3f} s) with their midpoint inside",
                 "pooled over the frames inside the audio")):
            if not mask.any():
                continue
            i = int(idx[np.flatnonzero(mask)[0]])
            rows.append(_p(severity, align_file.iloc[i], line_col.iloc[i], "end",
                           f"recording {rid!r}: {int(mask.sum())} phone(s) {text.format(d=float(d))}, first "
                           f"{raw[i]!r} [{start[i]:.3f}, {end[i]:.3f}] s", action))
        if str(rid) in samples and rid in path_of:
            hint = _rate_hint(samples[str(rid)], float(np.nanmax(end[idx])) if len(idx) else 0.0)
            if hint:
                rows.append(_p("warning", _audio_path(corpus, path_of[rid]), None, "sampling_rate",
                               f"recording {rid!r}: {hint}", "check the file's header"))
    return rows


def _rate_hint(n_and_rate: tuple[int, int], align_end: float) -> str | None:
    """A sampling-rate header that does not fit the alignment: the alignment runs more than 25 % past the audio
    and a lower common rate would make the audio long enough (16 kHz preferred), or it ends before half the audio
    and a higher common rate would make the audio end within 10 % of where the alignment does. A short overrun
    (a truncated file, MFA rounding) gives no hint."""
    n, sr = n_and_rate
    d = n / sr
    if not np.isfinite(align_end) or n <= 0 or align_end <= 0:
        return None
    if align_end > 1.25 * d:  # audio looks too short: the header claims a higher rate than the data has
        fits = [r for r in COMMON_RATES if r < sr and align_end <= n / r + END_TOLERANCE]
        if not fits:
            return None
        r = 16000 if 16000 in fits else max(fits)
        return (f"the header says {sr} Hz, so the audio lasts {d:.3f} s, but its alignment runs to {align_end:.3f} s;"
                f" at {r} Hz the audio would last {n / r:.3f} s. Is the sampling-rate header wrong?")
    if align_end < d / 2:  # audio looks too long: the header may claim a lower rate than the data has
        fits = [r for r in COMMON_RATES if r > sr and abs(n / r - align_end) <= 0.1 * (n / r) + END_TOLERANCE]
        if fits:
            r = min(fits, key=lambda r: abs(n / r - align_end))
            return (f"the alignment ends at {align_end:.3f} s but the audio lasts {d:.3f} s at the header's {sr} Hz;"
                    f" at {r} Hz it would last {n / r:.3f} s, matching the alignment. Is the sampling-rate header "
                    f"wrong?")
    return None


def validate_corpus(corpus: Corpus, *, check_audio: bool = True, decode_audio: bool = True,
                    min_speakers_per_group: int = 5, group_by: str | None = None,
                    progress: bool = False) -> ValidationReport:
    """Check a corpus and summarise it: the early gate for everything that would fail or bias a run later.

    ``check_audio`` reads every recording's header (missing / unreadable audio, real duration, shorter than one
    encoder frame, a sampling-rate header that does not fit the alignment); ``decode_audio`` also reads the
    samples (NaN / inf, digital silence, clipping, near-silence; in blocks, so hour-long files are fine) - turn it
    off on huge corpora when a header check is enough. Phones past the end of their audio follow extraction's rule
    (:data:`~phonefair.extraction.frames.PAST_END_RULE`), so what is reported as excluded here is exactly what
    extraction stores as NaN. ``group_by`` is a speaker-table column: speakers per group, coverage per group and
    groups smaller than ``min_speakers_per_group`` are reported. ``progress``: a progress bar over the recordings.
    The returned problems start with ``corpus.problems``.
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

    # audio: existence / readability, true duration, content; then alignment end vs audio end
    duration = dict(zip(rec["recording_id"], rec["duration"], strict=True))
    samples: dict[str, tuple[int, int]] = {}  # recording -> (samples, header rate): for the rate plausibility hint
    if check_audio:
        new += _audio_checks(corpus, duration, samples, decode_audio=decode_audio, progress=progress)
    unknown_rec = sorted(set(ph["recording_id"].dropna()) - set(rec["recording_id"]))
    for rid in unknown_rec[:_MAX_PER_CHECK]:
        new.append(_p("error", None, None, "recording_id", f"phones reference recording {rid!r} that is not "
                      "in the recordings table", "phones unusable"))
    new += _end_checks(corpus, duration, samples, align_file, line_col)

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
                                    "end_tolerance_s": END_TOLERANCE, "past_end_rule": PAST_END_RULE}
    return ValidationReport(problems=problems, summary=summary, ok=summary["errors"] == 0)
