"""Writing one utterance's alignment as a Praat TextGrid (long text format), atomically.

Tiers ``words`` and ``phones`` (the names phonefair's loader and MFA use). Interval tiers must cover the whole
recording, so gaps — silence before, between and after words — are written as empty intervals, as MFA does; the
loader treats empty intervals as silence, not as phone tokens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["textgrid_text", "write_textgrid"]

Interval = tuple[float, float, str]


def _fill(intervals: Sequence[Interval], duration: float) -> list[Interval]:
    out: list[Interval] = []
    t = 0.0
    for start, end, label in intervals:
        if start > t + 1e-9:
            out.append((t, start, ""))
        out.append((max(start, t), end, label))
        t = end
    if duration > t + 1e-9:
        out.append((t, duration, ""))
    return out


def _quote(label: str) -> str:
    return '"' + label.replace('"', '""') + '"'


def textgrid_text(tiers: Mapping[str, Sequence[Interval]], duration: float) -> str:
    """The long-format TextGrid text of ``tiers`` (name -> time-ordered, non-overlapping labelled intervals)."""
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {duration:.6f}",
             "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for k, (name, intervals) in enumerate(tiers.items(), start=1):
        filled = _fill(intervals, duration)
        lines += [f"    item [{k}]:", '        class = "IntervalTier"', f"        name = {_quote(name)}",
                  "        xmin = 0", f"        xmax = {duration:.6f}", f"        intervals: size = {len(filled)}"]
        for i, (start, end, label) in enumerate(filled, start=1):
            lines += [f"        intervals [{i}]:", f"            xmin = {start:.6f}", f"            xmax = {end:.6f}",
                      f"            text = {_quote(label)}"]
    return "\n".join(lines) + "\n"


def write_textgrid(path: Path, tiers: Mapping[str, Sequence[Interval]], duration: float) -> None:
    """Write ``tiers`` to ``path`` through a temporary file and an atomic rename (a crash leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(textgrid_text(tiers, duration), encoding="utf-8")
    os.replace(tmp, path)
