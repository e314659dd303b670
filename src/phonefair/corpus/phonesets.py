"""Phone-label conventions -> the 39 folded ARPABET classes (Lee & Hon 1989 / kaldi ``phones.60-48-39.map``).

Every source writes phones differently: TIMIT's 61 labels, ARPABET with stress digits (CMUdict, MFA
``english_us_arpa``, L2-ARCTIC), MFA's IPA set with allophones (``english_mfa``) and espeak-ng IPA. The maps are
data, one TSV per scheme in ``phonefair/data/phonemaps/`` (header ``label<TAB>targets<TAB>note``; ``targets`` is a
space-separated list of ARPABET-39 classes, empty = the scheme deletes the label). See ``docs/corpus.md``.

Non-speech (silence, short pause, MFA's ``spn`` spoken noise, TIMIT closures and pauses) maps to the 39-class
``"sil"``: it is kept in the phone table but is not a phoneme to probe (:data:`NON_SPEECH`).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal

import numpy as np
import pandas as pd

from phonefair.errors import DataError

__all__ = [
    "ARPABET39",
    "NON_SPEECH",
    "SCHEMES",
    "UnknownPhoneError",
    "map_label",
    "normalize_phones",
    "phone_map",
    "scheme_coverage",
    "suggest_scheme",
]

#: label conventions of sources (one TSV table each)
SCHEMES: tuple[str, ...] = ("timit", "arpabet", "mfa_ipa", "espeak_ipa")

#: the 39 folded classes, lower case, in the order of kaldi's ``phones.60-48-39.map`` 39-set listing
ARPABET39: tuple[str, ...] = (
    "iy", "ih", "eh", "ae", "ah", "uw", "uh", "aa", "ey", "ay", "oy", "aw", "ow", "er",
    "l", "r", "w", "y", "m", "n", "ng", "ch", "jh", "dh", "b", "d", "dx", "g", "p", "t", "k",
    "z", "v", "f", "th", "s", "sh", "hh", "sil",
)

#: ARPABET-39 classes that are not speech sounds (excluded from phoneme probing by default)
NON_SPEECH: frozenset[str] = frozenset({"sil"})

_TABLE_FILES = {"timit": "timit61.tsv", "arpabet": "arpabet.tsv", "mfa_ipa": "mfa_ipa.tsv",
                "espeak_ipa": "espeak_ipa.tsv"}
# TIMIT and ARPABET labels are case-insensitive in practice (TIMIT files are lower case, CMUdict upper case).
_CASE_INSENSITIVE = {"timit", "arpabet"}
_ARPA_STRESS = re.compile(r"^(.*?[A-Za-z])([012])$")
_IPA_STRESS = {"ˈ": 1, "ˌ": 2, "'": 1}
_IPA_LENGTH = ("ː", "ˑ")


class UnknownPhoneError(DataError):
    """A phone label that the scheme's table does not know."""


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown phone scheme {scheme!r}; expected one of {SCHEMES}")


def _key(label: str, scheme: str) -> str:
    label = unicodedata.normalize("NFC", label.strip())
    return label.casefold() if scheme in _CASE_INSENSITIVE else label


@functools.cache
def _load_table(scheme: str) -> tuple[dict[str, tuple[str, ...]], str, str]:
    """(label -> targets, file name, sha256 prefix). Loaded once per process."""
    _check_scheme(scheme)
    fname = _TABLE_FILES[scheme]
    res = resources.files("phonefair").joinpath("data", "phonemaps", fname)
    if not res.is_file():
        raise FileNotFoundError(f"phone map for scheme {scheme!r} not installed: phonefair/data/phonemaps/{fname}")
    text = res.read_text(encoding="utf-8")
    table: dict[str, tuple[str, ...]] = {}
    lines = text.splitlines()
    if not lines or lines[0].split("\t")[:2] != ["label", "targets"]:
        raise ValueError(f"{fname}: line 1 must be the header 'label<TAB>targets<TAB>note'")
    valid = set(ARPABET39)
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise ValueError(f"{fname} line {lineno}: expected 'label<TAB>targets[<TAB>note]', got {line!r}")
        key = _key(cols[0], scheme)
        targets = tuple(cols[1].split())
        if bad := [t for t in targets if t not in valid]:
            raise ValueError(f"{fname} line {lineno}: target(s) {bad} are not ARPABET-39 classes")
        if key in table:
            raise ValueError(f"{fname} line {lineno}: duplicate label {cols[0]!r}")
        table[key] = targets
    return table, fname, hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def phone_map(scheme: str) -> dict[str, tuple[str, ...]]:
    """The scheme's table as a dict (label -> ARPABET-39 targets; case-folded labels for timit/arpabet)."""
    return dict(_load_table(scheme)[0])


@functools.cache
def map_label(label: str, scheme: str) -> tuple[tuple[str, ...], int | None]:
    """Raw label -> (ARPABET-39 targets, stress).

    ``()`` means "deleted by the scheme" (TIMIT ``q``); several targets mean a multi-segment label (e.g. espeak
    ``ʊɹ`` -> ``('uh', 'r')``). ARPABET stress digits (``AH0``) and IPA stress marks (``ˈ`` = 1, ``ˌ`` = 2) are
    stripped and returned (``None`` if absent). The empty label is silence (``('sil',)``). For IPA schemes a label
    missing from the table is retried without length marks (``ː``). Raises :class:`UnknownPhoneError` for a label
    the table does not know.
    """
    _check_scheme(scheme)
    table = _load_table(scheme)[0]
    raw = unicodedata.normalize("NFC", str(label).strip())
    if raw == "":
        return ("sil",), None  # MFA / Praat write silence as an empty interval
    stress: int | None = None
    if scheme == "arpabet":
        if (m := _ARPA_STRESS.match(raw)) is not None:
            raw, stress = m.group(1), int(m.group(2))
    elif scheme in ("mfa_ipa", "espeak_ipa"):
        for mark, level in _IPA_STRESS.items():
            if mark in raw:
                stress = level if stress is None else min(stress, level)
                raw = raw.replace(mark, "")
    key = _key(raw, scheme)
    if key in table:
        return table[key], stress
    if scheme in ("mfa_ipa", "espeak_ipa"):
        short = key
        for mark in _IPA_LENGTH:
            short = short.replace(mark, "")
        if short in table:
            return table[short], stress
    raise UnknownPhoneError(f"phone label {label!r} is not in the {scheme!r} phone map ({_TABLE_FILES[scheme]})")


def _safe_map(label: Any, scheme: str) -> tuple[tuple[str, ...], int | None] | None:
    if label is None or label is pd.NA or (isinstance(label, float) and np.isnan(label)):
        label = ""
    try:
        return map_label(str(label), scheme)
    except UnknownPhoneError:
        return None


UNKNOWN_POLICIES = ("drop", "keep", "error")


def scheme_coverage(labels: Sequence[Any]) -> dict[str, float]:
    """For every scheme, the fraction of ``labels`` (tokens, not distinct labels) its table knows."""
    counts = pd.Series([("" if x is None or x is pd.NA else str(x)) for x in labels], dtype=object).value_counts()
    total = float(counts.sum()) or 1.0
    return {sc: float(sum(n for lab, n in counts.items() if _safe_map(lab, sc) is not None)) / total
            for sc in SCHEMES}


def suggest_scheme(labels: Sequence[Any], scheme: str, *,
                   min_coverage: float = 0.9) -> tuple[str, dict[str, float]] | None:
    """The scheme the labels look like when it is not ``scheme``: ``(name, coverage of every scheme)``, or None.

    A suggestion needs the other scheme to know at least ``min_coverage`` of the tokens and clearly more than
    ``scheme`` does (10 points), so a few odd labels under the right scheme never trigger one."""
    cov = scheme_coverage(labels)
    best = max(SCHEMES, key=lambda sc: cov[sc])  # ties: SCHEMES order
    if best != scheme and cov[best] >= min_coverage and cov[best] >= cov[scheme] + 0.1:
        return best, cov
    return None


def _scheme_hint(suggestion: tuple[str, dict[str, float]] | None, scheme: str) -> str:
    if suggestion is None:
        return ""
    best, cov = suggestion
    return (f"; the labels look like {best!r} ({cov[best]:.0%} of the tokens are in its map, {cov[scheme]:.0%} in "
            f"{scheme!r}): set phone_scheme = \"{best}\" ([corpus.options] in the config; --option "
            f"phone_scheme={best} for phonefair validate)")


def check_unknown_policy(unknown: str) -> None:
    """Loaders call this before scanning a corpus, so a bad policy fails before any work is done."""
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown={unknown!r}: expected 'drop', 'keep' or 'error'")


def normalize_phones(phones: pd.DataFrame, scheme: str, *, unknown: Literal["drop", "keep", "error"] = "drop",
                     multi: Literal["split", "first", "drop"] = "split", file_column: str | None = None,
                     line_column: str | None = "line") -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Fill the ``phone`` and ``stress`` columns of a phone table from ``phone_raw``.

    ``unknown``: drop the row / keep it with ``phone=<NA>`` / raise :class:`UnknownPhoneError` (the message names
    the label, recording and file). ``multi``: split a multi-segment label's interval evenly into its parts (an
    approximation: the true sub-boundaries are unknown), keep only the first part, or drop the row. Labels the
    scheme deletes (TIMIT ``q``) are dropped.

    Returns the new table (index reset, input row order kept) and a list of problem dicts with keys of
    :data:`phonefair.corpus.schema.PROBLEM_COLUMNS`, so nothing disappears silently. Severity: ``"error"`` when
    tokens are dropped (unknown, or multi-segment with ``multi="drop"``), ``"warning"`` when kept but degraded,
    ``"info"`` for the scheme's intended behaviour (TIMIT ``q`` deletion, even split). Errors and warnings get one
    row per label and file (``file_column``; else recording) with the first ``line_column`` line of that file in
    ``line`` and up to 10 lines and the counts in the message; ``info`` one row per label. When many labels are
    unknown and another scheme knows them, a first problem (field ``phone_scheme``) suggests it
    (:func:`suggest_scheme`). ``out.attrs["provenance"]`` records the scheme, options and map file.
    """
    _check_scheme(scheme)
    check_unknown_policy(unknown)
    if multi not in ("split", "first", "drop"):
        raise ValueError(f"multi={multi!r}: expected 'split', 'first' or 'drop'")
    if "phone_raw" not in phones.columns:
        raise ValueError(f"phone table lacks column 'phone_raw'; has {list(phones.columns)}")
    if file_column is not None and file_column not in phones.columns:
        raise ValueError(f"file_column {file_column!r} is not a column of the phone table")
    _, fname, sha = _load_table(scheme)

    df = phones.reset_index(drop=True)
    raw = df["phone_raw"].astype("object")
    mapped = [_safe_map(x, scheme) for x in raw]
    lines = (df[line_column].astype("Int64") if line_column is not None and line_column in df.columns
             else pd.Series(pd.NA, index=df.index, dtype="Int64"))
    unknown_idx = [i for i, m in enumerate(mapped) if m is None]
    suggestion = suggest_scheme(raw.tolist(), scheme) if unknown_idx else None

    def where(i: int) -> tuple[str | None, str]:
        rec = str(df["recording_id"].iloc[i]) if "recording_id" in df.columns else None
        f = str(df[file_column].iloc[i]) if file_column is not None else None
        ctx = ", ".join(p for p in (f"recording {rec!r}" if rec else "", f"file {f}" if f else "") if p)
        return f, ctx

    # group the rows by what happens to them, keeping the first occurrence for the report
    unknown_rows: dict[str, list[int]] = {}
    deleted_rows: dict[str, list[int]] = {}
    multi_rows: dict[str, list[int]] = {}
    for i, m in enumerate(mapped):
        label = "" if raw.iloc[i] is None or raw.iloc[i] is pd.NA else str(raw.iloc[i])
        if m is None:
            if unknown == "error":
                f, ctx = where(i)
                at = "" if pd.isna(lines.iloc[i]) else f" line {int(lines.iloc[i])}"
                raise UnknownPhoneError(f"unknown {scheme} phone label {label!r} ({ctx or f'row {i}'}{at}); "
                                        f"not in {fname}{_scheme_hint(suggestion, scheme)}")
            unknown_rows.setdefault(label, []).append(i)
        elif len(m[0]) == 0:
            deleted_rows.setdefault(label, []).append(i)
        elif len(m[0]) > 1:
            multi_rows.setdefault(label, []).append(i)

    problems: list[dict[str, Any]] = []

    # severities follow corpus.schema: "error" = item excluded, "warning" = kept but look at it; "info" marks
    # documented, intended behaviour of the scheme (TIMIT q deletion, even split of multi-segment labels).
    file_key = (df[file_column].astype("object") if file_column is not None
                else df["recording_id"].astype("object") if "recording_id" in df.columns
                else pd.Series(None, index=df.index, dtype=object))

    def report(rows: dict[str, list[int]], what: str, action: str, severity: str) -> None:
        # errors and warnings: one row per label and file, so every file (and its first line) is named; "info"
        # (the scheme's intended behaviour, e.g. TIMIT q deletion in thousands of files): one row per label
        for label, idx in rows.items():
            by_file: dict[Any, list[int]] = {}
            for i in idx:
                by_file.setdefault(file_key.iloc[i] if severity != "info" else None, []).append(i)
            n_files = len({file_key.iloc[i] for i in idx})
            overall = f"; {len(idx)} token(s) in {n_files} file(s) in all" if n_files > 1 else ""
            for first, *rest in by_file.values():
                f, ctx = where(first)
                ln = [int(lines.iloc[i]) for i in (first, *rest) if not pd.isna(lines.iloc[i])]
                at = ("" if not ln else f", line{'s' if len(ln) > 1 else ''} "
                      + ", ".join(map(str, ln[:10])) + (", ..." if len(ln) > 10 else ""))
                if severity == "info":  # aggregated over files: name the first one
                    at = "" if not ln else f", line {ln[0]}"
                    text = f"{len(idx)} token(s), first in {ctx or f'row {first}'}{at}"
                    text += f" ({n_files} file(s))" if n_files > 1 else ""
                else:
                    text = f"{1 + len(rest)} token(s) in {ctx or f'row {first}'}{at}{overall}"
                problems.append({"severity": severity, "file": f, "line": ln[0] if ln else None,
                                 "field": "phone_raw", "message": f"{what} {scheme} phone label {label!r}: {text}",
                                 "action": action})

    if suggestion is not None:
        n_unknown = len(unknown_idx)
        problems.append({"severity": "error" if unknown == "drop" else "warning", "file": None, "line": None,
                         "field": "phone_scheme",
                         "message": f"{n_unknown} of {len(df)} phone token(s) are not in the {scheme!r} map"
                                    f"{_scheme_hint(suggestion, scheme)}",
                         "action": "dropped phones" if unknown == "drop" else "kept with phone=<NA>"})

    if unknown == "drop":
        report(unknown_rows, "unknown", "dropped phone", "error")
    else:
        report(unknown_rows, "unknown", "kept with phone=<NA>", "warning")
    report(deleted_rows, "deleted-by-scheme", "dropped phone", "info")
    multi_action = {"split": ("split interval evenly (approximate boundaries)", "info"),
                    "first": ("kept first segment only", "warning"), "drop": ("dropped phone", "error")}[multi]
    report(multi_rows, "multi-segment", *multi_action)

    # build the output: one (source row, phone, stress, start, end) per kept segment
    src: list[int] = []
    phone: list[Any] = []
    stress: list[Any] = []
    starts: list[float] = []
    ends: list[float] = []
    has_times = "start" in df.columns and "end" in df.columns
    st = df["start"].to_numpy(dtype="float64", na_value=np.nan) if has_times else None
    en = df["end"].to_numpy(dtype="float64", na_value=np.nan) if has_times else None
    for i, m in enumerate(mapped):
        if m is None:
            if unknown == "keep":
                src.append(i)
                phone.append(pd.NA)
                stress.append(pd.NA)
                if has_times:
                    starts.append(st[i])  # type: ignore[index]
                    ends.append(en[i])  # type: ignore[index]
            continue
        targets, s = m
        if not targets or (len(targets) > 1 and multi == "drop"):
            continue
        if len(targets) > 1 and multi == "first":
            targets = targets[:1]
        k = len(targets)
        for j, t in enumerate(targets):
            src.append(i)
            phone.append(t)
            stress.append(pd.NA if s is None else s)
            if has_times:
                a, b = st[i], en[i]  # type: ignore[index]
                starts.append(a + (b - a) * j / k)
                ends.append(a + (b - a) * (j + 1) / k)
    out = df.iloc[src].reset_index(drop=True).copy()
    out["phone"] = pd.array(phone, dtype="string")
    out["stress"] = pd.array(stress, dtype="Int8")
    if has_times:
        out["start"] = np.asarray(starts, dtype="float64")
        out["end"] = np.asarray(ends, dtype="float64")
    out.attrs["provenance"] = {
        **dict(phones.attrs.get("provenance", {})),
        "phone_scheme": scheme, "phone_map": fname, "phone_map_sha256": sha,
        "unknown": unknown, "multi": multi,
        "n_in": len(df), "n_out": len(out),
        "n_unknown": int(sum(len(v) for v in unknown_rows.values())),
        "n_deleted": int(sum(len(v) for v in deleted_rows.values())),
        "n_multi": int(sum(len(v) for v in multi_rows.values())),
    }
    return out, problems
