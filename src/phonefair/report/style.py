"""One look for every figure of the report: group colours, encoder line styles, paper sizes, saving.

* :func:`group_colors` is the only palette: a group has the same colour in every figure (tab10 in sorted group
  order), so colour always means *group*. Encoders are told apart by line style and marker
  (:func:`encoder_styles`), never by colour; curves that are neither (identity probes, chance) are black or grey.
* Figures are sized for one paper column (:data:`COLUMN_WIDTH_IN` = 3.3 in) with 7-pt text
  (:func:`paper_style`), and saved as PNG, SVG and PDF (:func:`save_figure`), so a figure of the report can go into
  a paper as it is. Text from data (group, phone, layer names) is drawn literally: mathtext is off, so
  "$10k-$20k" stays "$10k-$20k".
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on servers and in CI

import matplotlib.pyplot as plt
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

__all__ = [
    "BASELINE_COLOR",
    "COLUMN_WIDTH_IN",
    "FIGURE_FORMATS",
    "NEUTRAL",
    "PNG_DPI",
    "encoder_styles",
    "figure_to_base64",
    "group_colors",
    "new_figure",
    "paper_style",
    "plain_text",
    "save_figure",
    "styled",
]

#: width of one column of a two-column paper (ACL, Interspeech, IEEE), inches
COLUMN_WIDTH_IN = 3.3
#: formats every figure is saved in under figures/
FIGURE_FORMATS = ("png", "svg", "pdf")
#: curves that are not a group (identity probes, chance, the acoustic baseline's label)
NEUTRAL = "#222222"
BASELINE_COLOR = "#777777"
_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 2)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_F = TypeVar("_F", bound=Callable[..., Any])

_RC: dict[str, Any] = {
    "text.parse_math": False,  # labels come from data: draw "$" literally
    "font.size": 7, "axes.titlesize": 7.5, "axes.labelsize": 7, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5, "legend.title_fontsize": 6.5, "figure.titlesize": 8,
    "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.linewidth": 0.6, "grid.linewidth": 0.4,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5,
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in PDFs (publishers reject Type 3 fonts)
    "svg.fonttype": "none",  # SVG text stays text (searchable, editable)
    "svg.hashsalt": "phonefair",  # deterministic element ids: a rerun gives the same SVG
    # constrained layout already fits everything: no "tight" bounding box (it would draw every figure twice), so
    # a saved figure is exactly its nominal width
}


def group_colors(groups: Iterable[Any]) -> dict[str, str]:
    """``{group: hex colour}``: tab10 in sorted group order, the one palette of every figure."""
    cmap = colormaps["tab10"]
    palette = [to_hex(cmap(i)) for i in range(cmap.N)]
    return {g: palette[i % len(palette)] for i, g in enumerate(sorted({str(x) for x in groups}))}


def encoder_styles(encoders: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{encoder: {"ls": ..., "marker": ...}}`` in the given order (the first encoder is drawn solid with
    circles): encoders are told apart by line style and marker, so that colour keeps meaning group."""
    return {str(e): {"ls": _LINESTYLES[i % len(_LINESTYLES)], "marker": _MARKERS[i % len(_MARKERS)]}
            for i, e in enumerate(encoders)}


def paper_style() -> AbstractContextManager[Any]:
    """Matplotlib settings for one-column paper figures (7-pt text, thin lines, TrueType fonts, literal text)."""
    return plt.rc_context(_RC)


def plain_text() -> AbstractContextManager[Any]:
    """Settings under which every string is drawn as given (no mathtext): group, phone and layer labels come from
    data, and mathtext would read "$10k-$20k" as math and fail on "a $_$ b". Global settings are left alone."""
    return plt.rc_context({"text.parse_math": False})


def styled(fn: _F) -> _F:
    """Build a figure under :func:`paper_style` (text objects take their settings when created)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with paper_style():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(height_in: float, width_in: float = COLUMN_WIDTH_IN) -> Figure:
    """A figure without pyplot's global state (nothing to close), constrained layout."""
    return Figure(figsize=(width_in, height_in), layout="constrained")


@styled
def figure_to_base64(fig: Figure, dpi: int = 200) -> str:
    """PNG bytes of ``fig`` as base64 text (for an ``<img src="data:...">``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


#: no creation date in the files: the same figure gives the same bytes on a rerun
_NO_DATE: dict[str, dict[str, Any]] = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}
#: resolution of the saved PNG (also the one embedded in the report)
PNG_DPI = 200


@styled
def save_figure(fig: Figure, directory: Path, stem: str, *, formats: Sequence[str] = FIGURE_FORMATS) -> list[Path]:
    """Write ``stem.png`` (:data:`PNG_DPI`), ``stem.svg`` and ``stem.pdf`` (or the given ``formats``) under
    ``directory``; returns the paths in the order of ``formats``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = directory / f"{stem}.{fmt}"
        fig.savefig(p, format=fmt, **({"dpi": PNG_DPI} if fmt == "png" else {}), metadata=_NO_DATE.get(fmt))
        paths.append(p)
    return paths
