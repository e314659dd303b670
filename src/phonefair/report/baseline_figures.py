"""Figures for the baseline comparison (phonefair.analysis.baseline): the tables of ``amplification()`` in, matplotlib
Figures out.

* :func:`gap_figure`: per group, the encoder's gap ``A_ref − A_g`` across relative depth (0 = first hidden state,
  1 = last; :func:`phonefair.layers.relative_depth`) with its CI band, and the baseline's gap as a point with its CI
  at "layer −1" (relative depth −0.15), continued as a dashed line so "inherited" reads as "the curve stays on the
  line";
* :func:`amplification_figure`: per group, the amplification (encoder gap − baseline gap) across depth with its CI
  band; the marker at each layer shows the reading.

Colours come from :func:`phonefair.report.style.group_colors` (re-exported here as :func:`group_colors`), the one
palette of every figure, so a group has the same colour everywhere. Figures are built
without pyplot (no global state to close).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from phonefair.layers import layer_order, relative_depth
from phonefair.report.style import group_colors

__all__ = ["READING_MARKERS", "amplification_figure", "gap_figure", "group_colors"]

#: marker per reading in :func:`amplification_figure`
READING_MARKERS: dict[str, str] = {"amplified": "^", "created": "*", "reduced": "v", "inherited": "o",
                                   "unclear": "d", "absent": ".", "insufficient": "x"}
_BASELINE_X = relative_depth("baseline", [])  # -0.15: where every non-hierarchical feature set sits


def gap_figure(gaps: pd.DataFrame, *, baseline_layer: str | None = None, best_layer: str | None = None,
               colors: Mapping[str, Any] | None = None, title: str | None = None) -> Figure:
    """Per-group panels of the encoder's gap curve (CI band) beside the baseline's gap (point + CI at −0.15).

    ``gaps``: the ``gaps`` table of :func:`~phonefair.analysis.baseline.amplification` (``source, layer, group, gap,
    ci_low, ci_high, is_headline``). ``baseline_layer``: the feature set drawn (default: the headline one);
    ``best_layer``: marked with a dotted line (default: the headline encoder layer).
    """
    _require(gaps, ["source", "layer", "group", "gap", "ci_low", "ci_high"], "gaps")
    enc = gaps[gaps["source"] == "encoder"]
    base = gaps[gaps["source"] == "baseline"]
    if enc.empty or base.empty:
        raise ValueError("gaps table needs rows of both sources ('encoder' and 'baseline')")
    baseline_layer = baseline_layer or _headline(base)
    best_layer = best_layer or _headline(enc)
    base = base[base["layer"].astype(str) == str(baseline_layer)]
    if base.empty:
        raise ValueError(f"baseline feature set {baseline_layer!r} is not in the gaps table")
    groups = sorted(enc["group"].astype(str).unique())
    cols = dict(colors) if colors else group_colors(groups)
    layers = layer_order(enc["layer"])
    fig, axes = _panels(len(groups))
    for ax, g in zip(axes, groups, strict=False):
        c = cols[g]
        d = enc[enc["group"].astype(str) == g].set_index(enc.loc[enc["group"].astype(str) == g, "layer"].astype(str))
        d = d.reindex(layers)
        x = np.array([relative_depth(k, layers) for k in layers])
        ax.plot(x, d["gap"].astype(float), color=c, marker="o", ms=3, lw=1.5, label="encoder")
        ax.fill_between(x, d["ci_low"].astype(float), d["ci_high"].astype(float), color=c, alpha=0.18, lw=0)
        b = base[base["group"].astype(str) == g]
        if len(b):
            b0 = b.iloc[0]
            ax.errorbar([_BASELINE_X], [b0["gap"]], yerr=[[b0["gap"] - b0["ci_low"]], [b0["ci_high"] - b0["gap"]]],
                        fmt="s", color=c, mec="black", ms=6, capsize=3, label=f"baseline ({baseline_layer})")
            ax.axhline(float(b0["gap"]), color=c, ls="--", lw=0.8, alpha=0.7)
        _decorate(ax, g, layers, best_layer, str(baseline_layer), "gap  A_ref − A_g")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title or "Group gap: encoder layers vs acoustic baseline (CI bands)", fontsize=10)
    return fig


def amplification_figure(amplification: pd.DataFrame, *, baseline_layer: str | None = None,
                         best_layer: str | None = None, colors: Mapping[str, Any] | None = None,
                         title: str | None = None) -> Figure:
    """Per-group panels of the amplification (encoder gap − baseline gap) across depth with CI bands; the marker at
    each layer is the reading (:data:`READING_MARKERS`).

    ``amplification``: the ``amplification`` table of :func:`~phonefair.analysis.baseline.amplification`.
    ``baseline_layer``: the feature set compared with (default: the headline one).
    """
    _require(amplification, ["layer", "baseline_layer", "group", "amplification", "ci_low", "ci_high", "reading"],
             "amplification")
    a = amplification
    if baseline_layer is None:
        baseline_layer = (str(a.loc[a["is_baseline_layer"].astype(bool), "baseline_layer"].iloc[0])
                          if "is_baseline_layer" in a.columns and a["is_baseline_layer"].any()
                          else str(a["baseline_layer"].iloc[0]))
    if best_layer is None and "is_best_layer" in a.columns and a["is_best_layer"].any():
        best_layer = str(a.loc[a["is_best_layer"].astype(bool), "layer"].iloc[0])
    a = a[a["baseline_layer"].astype(str) == str(baseline_layer)]
    if a.empty:
        raise ValueError(f"baseline feature set {baseline_layer!r} is not in the amplification table")
    groups = sorted(a["group"].astype(str).unique())
    cols = dict(colors) if colors else group_colors(groups)
    layers = layer_order(a["layer"])
    x_of = {k: relative_depth(k, layers) for k in layers}
    fig, axes = _panels(len(groups))
    seen: set[str] = set()
    for ax, g in zip(axes, groups, strict=False):
        c = cols[g]
        d = a[a["group"].astype(str) == g].copy()
        d.index = d["layer"].astype(str)
        d = d.reindex(layers)
        x = np.array([x_of[k] for k in layers])
        ax.plot(x, d["amplification"].astype(float), color=c, lw=1.5)
        ax.fill_between(x, d["ci_low"].astype(float), d["ci_high"].astype(float), color=c, alpha=0.18, lw=0)
        for r, m in READING_MARKERS.items():
            sel = (d["reading"].astype(str) == r).to_numpy()
            if sel.any():
                ax.scatter(x[sel], d["amplification"].astype(float).to_numpy()[sel], marker=m, s=30, color=c,
                           edgecolors="black", linewidths=0.5, zorder=3, label=r if r not in seen else None)
                seen.add(r)
        _decorate(ax, g, layers, best_layer, None, f"amplification vs {baseline_layer}")
    handles = [axes[0].scatter([], [], marker=READING_MARKERS[r], color="grey", edgecolors="black", linewidths=0.5,
                               label=r) for r in READING_MARKERS if r in seen]
    axes[0].legend(handles=handles, fontsize=7, loc="best", title="reading", title_fontsize=7)
    fig.suptitle(title or f"Amplification: encoder gap − baseline ({baseline_layer}) gap, paired CI bands",
                 fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------- helpers
def _require(df: pd.DataFrame, cols: list[str], name: str) -> None:
    if missing := [c for c in cols if c not in df.columns]:
        raise ValueError(f"{name} table lacks column(s) {missing}")


def _headline(d: pd.DataFrame) -> str:
    if "is_headline" in d.columns and d["is_headline"].astype(bool).any():
        return str(d.loc[d["is_headline"].astype(bool), "layer"].iloc[0])
    return str(layer_order(d["layer"])[0])


def _panels(n: int) -> tuple[Figure, list[Axes]]:
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.2 * ncols + 0.4, 2.8 * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _decorate(ax: Axes, group: str, layers: list[str], best_layer: str | None, baseline_label: str | None,
              ylabel: str) -> None:
    """Zero line, best-layer line, depth ticks (with the baseline's slot at −0.15 when one is drawn), labels."""
    ax.axhline(0, color="grey", lw=0.8)
    if best_layer is not None and str(best_layer) in layers:
        ax.axvline(relative_depth(str(best_layer), layers), color="black", ls=":", lw=0.8)
    ticks, labels = [0.0, 0.25, 0.5, 0.75, 1.0], ["0", ".25", ".5", ".75", "1"]
    if baseline_label is not None:
        ax.axvline(_BASELINE_X / 2, color="lightgrey", lw=0.8)  # separates the baseline from the depth axis
        ticks, labels = [_BASELINE_X, *ticks], [baseline_label, *labels]
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_xlim((_BASELINE_X - 0.1) if baseline_label is not None else -0.05, 1.05)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(group, fontsize=9)
    ax.set_xlabel("relative depth", fontsize=8)
    spec = ax.get_subplotspec()
    if spec is not None and spec.is_first_col():
        ax.set_ylabel(ylabel, fontsize=8)
