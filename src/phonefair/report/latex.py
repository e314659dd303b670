"""Headline tables as LaTeX (booktabs), beside their CSV and Parquet, for papers.

:func:`latex_table` writes one ``table`` environment with ``\\toprule`` / ``\\midrule`` / ``\\bottomrule`` (the
``booktabs`` package), every cell escaped (``& % $ # _ { } ~ ^ \\`` and the Unicode minus), numbers right-aligned.
Text outside ASCII (IPA phone labels, accented group names) is kept as it is: compile with XeLaTeX or LuaLaTeX, or
map it (e.g. ``tipa``) yourself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["escape_latex", "latex_table"]

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}", "|": r"\textbar{}", "\u2212": "$-$", "\u2013": "--", "\u2014": "---"}


def escape_latex(text: Any) -> str:
    """``text`` with every character LaTeX would interpret replaced by its literal form."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def latex_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str, label: str,
                numeric: Sequence[bool] | None = None, notes: str | None = None) -> str:
    """A booktabs ``table`` environment (``[t]``, ``\\small``) with the escaped ``header`` and ``rows``.

    ``numeric[i]``: column ``i`` is right-aligned (default: left). ``notes``: a footnote line under the table.
    Cells are escaped here, so pass plain text (``"+3.2 [1.1, 5.3]"``), not LaTeX.
    """
    k = len(header)
    if any(len(r) != k for r in rows):
        raise ValueError(f"latex_table: every row needs {k} cells")
    align = "".join("r" if (numeric and numeric[i]) else "l" for i in range(k))
    lines = [r"% phonefair table: needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(escape_latex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(escape_latex(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        lines.append(r"\par\smallskip{\footnotesize " + escape_latex(notes) + "}")
    lines += [rf"\caption{{{escape_latex(caption)}}}", rf"\label{{{_label(label)}}}", r"\end{table}", ""]
    return "\n".join(lines)


def _label(label: str) -> str:
    """A label LaTeX accepts (letters, digits, ``:-.``)."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in ":-.") else "-" for ch in label)
