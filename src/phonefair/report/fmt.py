"""Number and table formatting shared by the HTML report and the LaTeX tables: one format per quantity.

Accuracy and shares in % with one decimal, gaps and changes in signed percentage points, intervals in brackets,
the minus sign U+2212, missing values "–". HTML cells are escaped here; LaTeX cells by :mod:`~phonefair.report.latex`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

__all__ = [
    "MAX_ROWS",
    "MISSING",
    "ci",
    "df_table",
    "e",
    "est_ci",
    "finite",
    "html_table",
    "num",
    "pct",
    "pp",
    "pval",
    "swatch",
]

MISSING = "\u2013"
MINUS = "\u2212"
MAX_ROWS = 60  # longer tables are cut in the page; the full table is in tables/<name>.csv


def e(x: Any) -> str:
    """HTML-escaped text of ``x`` (every string from data goes through here)."""
    return html.escape(str(x), quote=True)


def finite(x: Any) -> bool:
    try:
        return x is not None and not pd.isna(x) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def num(x: Any, digits: int = 1, *, sign: bool = False, scale: float = 1.0) -> str:
    """``x × scale`` with ``digits`` decimals (``sign``: always a sign), U+2212 for minus, "–" when missing."""
    if not finite(x):
        return MISSING
    v = float(x) * scale
    if round(v, digits) == 0:
        v = 0.0  # no "−0.0"
    s = f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"
    return s.replace("-", MINUS)


def pct(x: Any, digits: int = 1) -> str:
    """A fraction as % (no sign)."""
    return num(x, digits, scale=100.0)


def pp(x: Any, digits: int = 1) -> str:
    """A difference of fractions as signed percentage points."""
    return num(x, digits, sign=True, scale=100.0)


def ci(lo: Any, hi: Any, digits: int = 1, *, scale: float = 100.0, sign: bool = False) -> str:
    if not (finite(lo) and finite(hi)):
        return ""
    return f"[{num(lo, digits, scale=scale, sign=sign)}, {num(hi, digits, scale=scale, sign=sign)}]"


def est_ci(est: Any, lo: Any, hi: Any, digits: int = 1, *, scale: float = 100.0, sign: bool = False) -> str:
    """``"x [lo, hi]"`` (the interval left out when missing)."""
    s = num(est, digits, scale=scale, sign=sign)
    c = ci(lo, hi, digits, scale=scale)
    return f"{s} {c}" if c and s != MISSING else s


def pval(p: Any) -> str:
    if not finite(p):
        return MISSING
    p = float(p)
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def swatch(color: str | None) -> str:
    """A small square in a group's colour, tying table rows to figure curves."""
    return f'<span class="sw" style="background:{e(color)}"></span>' if color else ""


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[bool] | None = None,
               cls: str = "data", titles: Mapping[str, str] | None = None, row_cls: Sequence[str] | None = None
               ) -> str:
    """A table from *already escaped* cells (``header`` is escaped here). ``numeric[i]``: right-aligned, no wrap.
    ``titles``: header → tooltip. ``row_cls``: a class per row."""
    num_cols = list(numeric) if numeric is not None else [False] * len(header)
    n_attr = ' class="n"'
    th = []
    for i, h in enumerate(header):
        tip = f' title="{e(titles[h])}"' if titles and h in titles else ""
        th.append(f"<th{n_attr if num_cols[i] else ''}{tip}>{e(h)}</th>")
    body = []
    for k, r in enumerate(rows):
        rc = f' class="{e(row_cls[k])}"' if row_cls and row_cls[k] else ""
        tds = "".join(f"<td{n_attr if num_cols[i] else ''}>{c}</td>" for i, c in enumerate(r))
        body.append(f"<tr{rc}>{tds}</tr>")
    return f'<table class="{e(cls)}"><thead><tr>{"".join(th)}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def df_table(df: pd.DataFrame, *, name: str = "", max_rows: int = MAX_ROWS, columns: Sequence[str] | None = None,
             cls: str = "data") -> str:
    """A generic table (every cell escaped; floats with 3 significant decimals); cut at ``max_rows`` with a
    pointer to the full CSV."""
    note = ""
    d = df if columns is None else df[[c for c in columns if c in df.columns]]
    if len(d) > max_rows:
        note = (f'<p class="muted">showing {max_rows} of {len(d)} rows; the full table is '
                f"tables/{e(name)}.csv</p>")
        d = d.head(max_rows)
    numeric = [pd.api.types.is_numeric_dtype(d[c]) and not pd.api.types.is_bool_dtype(d[c]) for c in d.columns]

    def cell(v: Any, is_num: bool) -> str:
        if v is None or (not isinstance(v, str) and pd.api.types.is_scalar(v) and pd.isna(v)):
            return MISSING
        if is_num and isinstance(v, float):
            return num(v, 3) if abs(v) >= 0.01 or v == 0 else f"{v:.2g}".replace("-", MINUS)
        return e(v)

    rows = [[cell(v, numeric[i]) for i, v in enumerate(r)] for r in d.itertuples(index=False, name=None)]
    return html_table([str(c) for c in d.columns], rows, numeric=numeric, cls=cls) + note
