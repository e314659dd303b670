"""Praat TextGrids (long and short text formats, UTF-8 / UTF-16) and MFA / praatio JSON alignments.

Why not praatio's reader: on real data it (a) turns a negative time ``-0.1`` into ``0.1`` and (b) raises on the
first overlapping or zero-length interval, so one bad interval would lose a whole file (checked with praatio 6.2).
The reader here tokenises like Praat itself (numbers, quoted strings and ``<exists>`` flags, ignoring the
``key =`` decorations of the long format), so both text formats share one parser, every entry keeps its line
number, and bad intervals become problem rows instead of crashes. The tests cross-check it against praatio on
the real sample files.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from phonefair.corpus.schema import CorpusError

__all__ = ["TextGrid", "Tier", "find_tier", "read_intervals", "read_textgrid", "textgrid_phones"]

Entry = tuple[float, float, str]

#: tier names tried (case-insensitively) when no tier is given
PHONE_TIER_NAMES = ("phones", "phone", "phonemes", "phoneme", "segments")
WORD_TIER_NAMES = ("words", "word")
_SPEAKER_TIER = re.compile(r"^(?P<spk>.+?) - (?P<kind>phones?|words?)$", re.IGNORECASE)
# Overlap / zero-length tolerance: TextGrid times are written with ~15 digits, so anything below 1 µs is rounding.
_EPS = 1e-6

_TOKEN = re.compile(
    r'"(?P<str>(?:[^"]|"")*)"'
    r'|=[ \t]*(?P<bad>(?![-+.\d"<])\S+)'  # long format: a value that is neither number nor string
    r"|(?P<flag><exists>|<absent>)"
    r"|(?P<index>\[\s*\d+\s*\])"
    # a whole numeric-looking run, checked against _NUMBER afterwards: matching only a valid prefix or suffix would
    # read "0.0.7" as 0.7 and "0.5.3" as 5.3, and split "0,5" into two numbers
    r"|(?P<num>[-+]?\.?\d[^\s\"!\[\]]*)"
    r"|(?P<comment>!.*)"
    r"|(?P<word>[A-Za-z_][\w?]*)"
    r"|(?P<other>\S)"
)

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\Z")


@dataclass(frozen=True)
class Tier:
    """One tier. Interval entries are ``(start, end, label)``; point entries are ``(time, time, label)``.
    ``lines`` holds the 1-based line of each entry in the file (``None`` for JSON)."""

    name: str
    kind: Literal["interval", "point"]
    xmin: float
    xmax: float
    entries: tuple[Entry, ...]
    lines: tuple[int | None, ...]


@dataclass
class TextGrid:
    """A parsed TextGrid: its tiers by name (in file order) and notes on how it was read."""

    path: str
    xmin: float
    xmax: float
    tiers: dict[str, Tier]
    notes: list[str] = field(default_factory=list)  # e.g. duplicated tier names renamed, decoding fallbacks


# ---------------------------------------------------------------------------------------------- reading
def _decode(path: str, data: bytes) -> tuple[str, list[str]]:
    notes: list[str] = []
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), notes
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), notes
    if len(data) > 1 and data[1:2] == b"\x00" or data[:1] == b"\x00":  # UTF-16 without BOM
        try:
            return data.decode("utf-16-le" if data[1:2] == b"\x00" else "utf-16-be"), notes
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), notes
    except UnicodeDecodeError:
        notes.append("not valid UTF-8 or UTF-16; decoded as Latin-1")
        return data.decode("latin-1"), notes


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
    out: list[tuple[str, Any, int]] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        line = bisect.bisect_right(starts, m.start())
        if kind == "str":
            out.append(("str", m.group("str").replace('""', '"'), line))
        elif kind == "num":
            text_ = m.group("num")
            if _NUMBER.match(text_):
                out.append(("num", float(text_), line))  # float("-0") == -0.0: parses, compares equal to 0
            else:
                out.append(("badnum", text_, line))
        elif kind == "flag":
            out.append(("flag", m.group("flag"), line))
        elif kind == "bad":
            out.append(("bad", m.group("bad"), line))
    return out


class _Stream:
    def __init__(self, path: str, toks: list[tuple[str, Any, int]]) -> None:
        self.path, self.toks, self.i = path, toks, 0

    def take(self, kind: str, what: str) -> tuple[Any, int]:
        if self.i >= len(self.toks):
            last = self.toks[-1][2] if self.toks else 1
            raise CorpusError(f"{self.path} line {last}: file ends early, expected {what}")
        k, v, line = self.toks[self.i]
        if k == "badnum":
            raise CorpusError(f"{self.path} line {line}: {v!r} is not a number (reading {what}){_comma_hint(v)}")
        if k != kind:  # a "bad" token never matches, so the error names its line
            raise CorpusError(f"{self.path} line {line}: expected {what} ({'number' if kind == 'num' else kind}), "
                              f"got {v!r}")
        self.i += 1
        return v, line

    def peek_flag(self) -> str | None:
        if self.i < len(self.toks) and self.toks[self.i][0] == "flag":
            self.i += 1
            return str(self.toks[self.i - 1][1])
        return None


def _comma_hint(v: str) -> str:
    """Comma decimals are refused, not guessed: a file written under a comma-decimal locale may have other
    damage too, and Praat itself cannot read it. The message says how to fix it."""
    if "," in v and _NUMBER.match(v.replace(",", ".")):
        return ("; it uses a comma as the decimal separator, but TextGrid numbers need a decimal point ('0.5', "
                "not '0,5'): re-save the file from Praat, or replace the commas in its numbers with points")
    return ""


def _parse_text(path: str, text: str) -> tuple[float, float, list[Tier]]:
    s = _Stream(path, _tokens(text))
    ftype, _ = s.take("str", 'File type = "ooTextFile"')
    if not str(ftype).startswith("ooTextFile"):
        raise CorpusError(f"{path} line 1: file type {ftype!r} is not a Praat text file (ooTextFile)")
    oclass, line = s.take("str", 'Object class = "TextGrid"')
    if oclass != "TextGrid":
        raise CorpusError(f"{path} line {line}: object class {oclass!r} is not a TextGrid")
    xmin, _ = s.take("num", "TextGrid xmin")
    xmax, _ = s.take("num", "TextGrid xmax")
    if s.peek_flag() == "<absent>":
        return xmin, xmax, []
    ntiers, line = s.take("num", "number of tiers")
    tiers: list[Tier] = []
    for t in range(int(ntiers)):
        cls, line = s.take("str", f"tier {t + 1} class")
        name, _ = s.take("str", f"tier {t + 1} name")
        txmin, _ = s.take("num", f"tier {name!r} xmin")
        txmax, _ = s.take("num", f"tier {name!r} xmax")
        n, _ = s.take("num", f"tier {name!r} size")
        entries: list[Entry] = []
        lines: list[int | None] = []
        if cls == "IntervalTier":
            for j in range(int(n)):
                a, ln = s.take("num", f"tier {name!r} interval {j + 1} xmin")
                b, _ = s.take("num", f"tier {name!r} interval {j + 1} xmax")
                lab, _ = s.take("str", f"tier {name!r} interval {j + 1} text")
                entries.append((a + 0.0, b + 0.0, lab))  # + 0.0 turns -0.0 into 0.0
                lines.append(ln)
            kind: Literal["interval", "point"] = "interval"
        elif cls == "TextTier":
            for j in range(int(n)):
                a, ln = s.take("num", f"tier {name!r} point {j + 1} time")
                lab, _ = s.take("str", f"tier {name!r} point {j + 1} mark")
                entries.append((a + 0.0, a + 0.0, lab))
                lines.append(ln)
            kind = "point"
        else:
            raise CorpusError(f"{path} line {line}: unknown tier class {cls!r} (expected IntervalTier or TextTier)")
        tiers.append(Tier(name, kind, txmin + 0.0, txmax + 0.0, tuple(entries), tuple(lines)))
    if s.i < len(s.toks):  # entries beyond the declared sizes would be dropped without a word: refuse the file
        _k, v, line = s.toks[s.i]
        last = (f"tier {tiers[-1].name!r} declares {len(tiers[-1].entries)} "
                f"{'interval' if tiers[-1].kind == 'interval' else 'point'}(s)" if tiers else "the file declares")
        raise CorpusError(f"{path} line {line}: {last} (and the file {int(ntiers)} tier(s)), but more data follows "
                          f"({v!r}); the 'size' lines do not match the entries: fix them, or export the file again")
    return xmin + 0.0, xmax + 0.0, tiers


def _parse_json(path: str, text: str) -> tuple[float, float, list[Tier]]:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path} line {exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(d, dict) or "tiers" not in d:
        raise CorpusError(f"{path}: JSON alignment needs a top-level object with 'tiers'")
    xmin = float(d.get("start", d.get("xmin", 0.0)))
    xmax = float(d.get("end", d.get("xmax", 0.0)))
    raw = d["tiers"]
    # MFA / praatio "json": {name: {"type": ..., "entries": [...]}}; praatio "textgrid_json": [{"name": ...}, ...]
    items = list(raw.items()) if isinstance(raw, dict) else [(t.get("name"), t) for t in raw]
    tiers: list[Tier] = []
    for name, t in items:
        if not isinstance(t, dict) or "entries" not in t:
            raise CorpusError(f"{path}: tier {name!r} has no 'entries'")
        ttype = str(t.get("type", t.get("class", "interval"))).lower()
        kind: Literal["interval", "point"] = "point" if ttype in ("point", "texttier", "pointtier") else "interval"
        entries: list[Entry] = []
        for j, e in enumerate(t["entries"]):
            try:
                if kind == "interval":
                    entries.append((float(e[0]) + 0.0, float(e[1]) + 0.0, str(e[2])))
                else:
                    entries.append((float(e[0]) + 0.0, float(e[0]) + 0.0, str(e[1])))
            except (TypeError, ValueError, IndexError) as exc:
                raise CorpusError(f"{path}: tier {name!r} entry {j + 1} is not [start, end, label]: {e!r}") from exc
        txmin = float(t.get("xmin", t.get("start", xmin)))
        txmax = float(t.get("xmax", t.get("end", xmax)))
        tiers.append(Tier(str(name), kind, txmin, txmax, tuple(entries), tuple([None] * len(entries))))
    return xmin, xmax, tiers


def read_textgrid(path: str | os.PathLike[str]) -> TextGrid:
    """Parse a TextGrid (long or short text format) or an MFA / praatio JSON alignment file.

    Raises :class:`~phonefair.corpus.schema.CorpusError` naming the file (and line) if it cannot be parsed.
    Duplicated tier names are renamed ``name (2)`` and noted in :attr:`TextGrid.notes`.
    """
    p = os.fspath(path)
    try:
        data = Path(p).read_bytes()
    except OSError as exc:
        raise CorpusError(f"{p}: cannot read alignment file: {exc}") from exc
    if data.startswith(b"ooBinaryFile"):
        raise CorpusError(f"{p}: binary Praat TextGrids are not supported; save it as a text file in Praat")
    text, notes = _decode(p, data)
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise CorpusError(f"{p}: alignment file is empty")
    if stripped[0] in "{[":
        xmin, xmax, tiers = _parse_json(p, stripped)
    else:
        xmin, xmax, tiers = _parse_text(p, text)
    by_name: dict[str, Tier] = {}
    for t in tiers:
        name = t.name
        k = 2
        while name in by_name:
            name = f"{t.name} ({k})"
            k += 1
        if name != t.name:
            notes.append(f"duplicated tier name {t.name!r} renamed {name!r}")
            t = Tier(name, t.kind, t.xmin, t.xmax, t.entries, t.lines)
        by_name[name] = t
    return TextGrid(p, xmin, xmax, by_name, notes)


# ---------------------------------------------------------------------------------------------- tiers
def find_tier(tg: TextGrid, kind: Literal["phones", "words"] = "phones", *, tier: str | None = None,
              speaker: str | None = None) -> str | None:
    """Name of the tier to use: ``tier`` if given (must exist), else ``f"{speaker} - {kind}"`` for a speaker,
    else the first interval tier named like ``phones`` / ``phone`` (``words`` / ``word``), case-insensitively.
    Returns ``None`` when nothing matches (the caller decides whether that is an error)."""
    if tier is not None:
        if tier not in tg.tiers:
            raise CorpusError(f"{tg.path}: no tier {tier!r}; tiers are {list(tg.tiers)}")
        return tier
    interval = [n for n, t in tg.tiers.items() if t.kind == "interval"]
    lower = {n.casefold(): n for n in reversed(interval)}
    if speaker is not None:
        for cand in (f"{speaker} - {kind}", f"{speaker} - {kind.rstrip('s')}"):
            if cand.casefold() in lower:
                return lower[cand.casefold()]
        return None
    for cand in PHONE_TIER_NAMES if kind == "phones" else WORD_TIER_NAMES:
        if cand in lower:
            return lower[cand]
    return None


def _speaker_tiers(tg: TextGrid) -> dict[str, str]:
    """speaker -> phone-tier name for MFA multi-speaker files (tiers ``"<spk> - phones"``)."""
    out: dict[str, str] = {}
    for n, t in tg.tiers.items():
        m = _SPEAKER_TIER.match(n)
        if t.kind == "interval" and m and m.group("kind").lower().startswith("phone"):
            out.setdefault(m.group("spk"), n)
    return out


def read_intervals(path: str | os.PathLike[str], tier: str | None = None, *,
                   kind: Literal["phones", "words"] = "phones", speaker: str | None = None,
                   include_empty: bool = False) -> list[Entry]:
    """``(start, end, label)`` of one interval tier, in file order, empty labels left out by default.

    The tier is ``tier`` if given, else chosen by name (see :func:`find_tier`; for a multi-speaker MFA file pass
    ``speaker`` or it must hold exactly one ``"<spk> - phones"`` tier). No checks on the intervals are made here:
    :func:`textgrid_phones` reports negative / zero-length / overlapping ones.
    """
    tg = read_textgrid(path)
    name = find_tier(tg, kind, tier=tier, speaker=speaker)
    if name is None and kind == "phones" and speaker is None:
        spk = _speaker_tiers(tg)
        if len(spk) == 1:
            name = next(iter(spk.values()))
        elif spk:
            raise CorpusError(f"{tg.path}: several speaker phone tiers {sorted(spk.values())}; pass speaker= or tier=")
    if name is None:
        raise CorpusError(f"{tg.path}: no {kind} tier found (tried {PHONE_TIER_NAMES if kind == 'phones' else WORD_TIER_NAMES}"
                          f"{' and speaker ' + repr(speaker) if speaker else ''}); tiers are {list(tg.tiers)}; "
                          f"pass tier=")
    t = tg.tiers[name]
    if t.kind != "interval":
        raise CorpusError(f"{tg.path}: tier {name!r} is a point tier, not an interval tier")
    return [e for e in t.entries if include_empty or e[2].strip()]


# ---------------------------------------------------------------------------------------------- phones
def _problem(severity: str, file: str, line: int | None, field_: str, message: str, action: str) -> dict[str, Any]:
    return {"severity": severity, "file": file, "line": line, "field": field_, "message": message, "action": action}


def _checked_intervals(tg: TextGrid, tier_name: str, problems: list[dict[str, Any]]
                       ) -> tuple[list[Entry], list[int | None]]:
    """Non-empty intervals of a tier, with negative times clipped, zero-length / reversed ones dropped and
    overlaps reported (all as problems)."""
    t = tg.tiers[tier_name]
    if t.kind != "interval":
        raise CorpusError(f"{tg.path}: tier {tier_name!r} is a point tier, not an interval tier")
    out: list[Entry] = []
    lines: list[int | None] = []
    prev_end = -math.inf
    fld = f"tier {tier_name!r}"
    for (a, b, lab), line in zip(t.entries, t.lines, strict=True):
        if not lab.strip():
            continue
        if not (math.isfinite(a) and math.isfinite(b)):
            problems.append(_problem("error", tg.path, line, fld, f"interval {lab!r} has non-finite time "
                                     f"[{a}, {b}]", "dropped phone"))
            continue
        if a < 0:
            if b <= 0:
                problems.append(_problem("error", tg.path, line, fld, f"interval {lab!r} lies at negative time "
                                         f"[{a}, {b}]", "dropped phone"))
                continue
            problems.append(_problem("warning", tg.path, line, fld, f"interval {lab!r} starts at negative time {a}",
                                     "clipped start to 0"))
            a = 0.0
        if b - a <= _EPS:
            problems.append(_problem("error", tg.path, line, fld, f"interval {lab!r} has zero or negative length "
                                     f"[{a}, {b}]", "dropped phone"))
            continue
        if a < prev_end - _EPS:
            problems.append(_problem("warning", tg.path, line, fld, f"interval {lab!r} [{a}, {b}] overlaps the "
                                     f"previous interval (ends {prev_end})", "kept"))
        prev_end = max(prev_end, b)
        out.append((a, b, lab))
        lines.append(line)
    return out, lines


def _assign_words(phones: list[Entry], words: list[Entry]) -> list[str | None]:
    """The word whose interval contains each phone's midpoint (``None`` if none does)."""
    if not words:
        return [None] * len(phones)
    ws = sorted(words)
    starts = np.array([w[0] for w in ws])
    out: list[str | None] = []
    for a, b, _ in phones:
        mid = (a + b) / 2
        k = int(np.searchsorted(starts, mid, side="right")) - 1
        out.append(ws[k][2] if k >= 0 and ws[k][0] <= mid < ws[k][1] else None)
    return out


def textgrid_phones(path: str | os.PathLike[str], *, phone_tier: str | None = None, word_tier: str | None = None
                    ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """All phone intervals of an alignment file as a table, plus problem dicts.

    Columns: ``speaker`` (from ``"<spk> - phones"`` tiers of multi-speaker MFA files, else <NA>), ``start``,
    ``end``, ``phone_raw``, ``word`` (the word interval containing the phone midpoint, else <NA>), ``line``
    (line of the interval in the file, <NA> for JSON). Empty labels (silence) are left out. Negative start times
    are clipped to 0, zero-length intervals dropped, overlaps kept - each reported as a problem.
    Raises :class:`CorpusError` if the file cannot be parsed or has no phone tier.
    """
    tg = read_textgrid(path)
    problems: list[dict[str, Any]] = [_problem("warning", tg.path, None, "file", n, "kept") for n in tg.notes]
    # (speaker, phone tier, word tier) triples
    plan: list[tuple[str | None, str, str | None]] = []
    name = find_tier(tg, "phones", tier=phone_tier)
    if name is not None:
        plan.append((None, name, find_tier(tg, "words", tier=word_tier)))
    else:
        for spk, tname in _speaker_tiers(tg).items():
            plan.append((spk, tname, find_tier(tg, "words", speaker=spk)))
    if not plan:
        raise CorpusError(f"{tg.path}: no phone tier found (tried {list(PHONE_TIER_NAMES)} and '<speaker> - phones');"
                          f" tiers are {list(tg.tiers)}; pass phone_tier=")
    frames = []
    for spk, ptier, wtier in plan:
        ph, lines = _checked_intervals(tg, ptier, problems)
        if wtier is not None and tg.tiers[wtier].kind == "interval":
            words = [e for e in tg.tiers[wtier].entries if e[2].strip()]
        else:
            words = []  # no word tier: the word column stays <NA> (words are optional)
        frames.append(pd.DataFrame({
            "speaker": pd.array([spk] * len(ph), dtype="string"),
            "start": np.array([e[0] for e in ph], dtype="float64"),
            "end": np.array([e[1] for e in ph], dtype="float64"),
            "phone_raw": pd.array([e[2].strip() for e in ph], dtype="string"),
            "word": pd.array(_assign_words(ph, words), dtype="string"),
            "line": pd.array(lines, dtype="Int64"),
        }))
    df = pd.concat(frames, ignore_index=True)
    df.attrs["provenance"] = {"file": tg.path, "phone_tiers": [p[1] for p in plan],
                              "word_tiers": [p[2] for p in plan], "word_rule": "word interval containing the "
                              "phone midpoint"}
    return df, problems
