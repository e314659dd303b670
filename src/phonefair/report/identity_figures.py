"""Figures of the identity lenses: where group and speaker identity live beside where the phone gap is.

One question per figure: *does the layer that encodes the group most also serve it worst?* Each panel puts, on the
relative depth of one encoder (:func:`phonefair.layers.relative_depth`, 0 = first hidden state, 1 = last):

* the pooled group-identity probe's balanced accuracy (``group_identity`` rows with ``phone == "*"``) with its CI
  band and its chance level (dotted, same colour);
* the closed-set speaker-identity accuracy over all speakers (``speaker_identity`` rows with ``group == "*"``) with
  its CI band and chance level;
* on the right axis, the phone-accuracy gap per group (``phone_gap``: ``layer, group, gap, ci_low, ci_high``) with CI
  bands and a zero line.

A ``compare`` state (e.g. after fairness fine-tuning) is drawn dashed on the same axes. Functions take tidy tables
and return a matplotlib Figure, or ``None`` when there is nothing to draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from phonefair.layers import layer_order, relative_depth
from phonefair.report.style import group_colors

__all__ = ["identity_by_depth", "identity_by_depth_grid"]

Tables = Mapping[str, pd.DataFrame | None]

# colour means group in every figure (phonefair.report.style.group_colors): the identity curves are black and grey
_GROUP_ID = "#222222"
_SPEAKER_ID = "#8a8a8a"


def _curve(df: pd.DataFrame | None, key: str, value: str, keep: str) -> pd.DataFrame:
    if df is None or df.empty or not {"layer", key, value} <= set(df.columns):
        return pd.DataFrame()
    d = df[df[key].astype(str) == keep]
    return d.assign(layer=d["layer"].astype(str))


def _all_layers(tables: Sequence[Tables]) -> list[str]:
    names: list[str] = []
    for t in tables:
        for df in t.values():
            if df is not None and not df.empty and "layer" in df.columns:
                names += df["layer"].astype(str).tolist()
    return layer_order(names)


def _draw_state(ax: Axes, gap_ax: Axes | None, tables: Tables, layers: list[str], *, dashed: bool,
                suffix: str) -> bool:
    ls = "--" if dashed else "-"
    drew = False

    def xs(d: pd.DataFrame) -> np.ndarray:
        return np.array([relative_depth(x, layers) for x in d["layer"]])

    for table, key, value, color, label in (
            ("group_identity", "phone", "balanced_accuracy", _GROUP_ID, "group identity (balanced acc.)"),
            ("speaker_identity", "group", "accuracy", _SPEAKER_ID, "speaker identity (acc.)")):
        d = _curve(tables.get(table), key, value, "*")
        if d.empty:
            continue
        d = d.assign(_x=xs(d)).sort_values("_x")
        ax.plot(d["_x"], d[value], ls, marker="o", ms=3, color=color, label=label + suffix)
        if {"ci_low", "ci_high"} <= set(d.columns):
            ax.fill_between(d["_x"], d["ci_low"].astype(float), d["ci_high"].astype(float), color=color,
                            alpha=0.08 if dashed else 0.18, lw=0)
        if "chance" in d.columns and not dashed:
            ax.plot(d["_x"], d["chance"], ":", color=color, lw=1, label=f"chance ({label.split(' (')[0]})")
        drew = True
    gap = tables.get("phone_gap")
    if gap_ax is not None and gap is not None and not gap.empty and {"layer", "group", "gap"} <= set(gap.columns):
        colors = group_colors(gap["group"].astype(str))
        for grp, d in gap.assign(layer=gap["layer"].astype(str)).groupby("group", sort=True):
            d = d.assign(_x=xs(d)).sort_values("_x")
            c = colors[str(grp)]
            gap_ax.plot(d["_x"], d["gap"], ls, marker="s", ms=3, color=c, lw=1.2, label=f"gap: {grp}{suffix}")
            if {"ci_low", "ci_high"} <= set(d.columns) and not dashed:
                gap_ax.fill_between(d["_x"], d["ci_low"].astype(float), d["ci_high"].astype(float), color=c,
                                    alpha=0.08, lw=0)
        drew = True
    return drew


def _has_gap(*states: Tables | None) -> bool:
    return any(s is not None and s.get("phone_gap") is not None and not s["phone_gap"].empty for s in states)


def identity_by_depth(group_identity: pd.DataFrame | None, speaker_identity: pd.DataFrame | None = None,
                      phone_gap: pd.DataFrame | None = None, *, title: str | None = None,
                      compare: Tables | None = None, labels: tuple[str, str] = ("before", "after"),
                      ax: Axes | None = None) -> Figure | None:
    """One encoder: group-identity and speaker-identity accuracy and the phone-accuracy gap on relative depth.

    ``compare``: the same three tables (keys ``group_identity``, ``speaker_identity``, ``phone_gap``) of a second
    state, drawn dashed; ``labels`` name the two states. ``ax``: draw into an existing axes (its figure is returned).
    Returns ``None`` when no table has rows.
    """
    state: Tables = {"group_identity": group_identity, "speaker_identity": speaker_identity, "phone_gap": phone_gap}
    layers = _all_layers([state] + ([compare] if compare else []))
    if not layers:
        return None
    own = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.8, 4.8), constrained_layout=True)
    else:
        fig = ax.figure  # type: ignore[assignment]
    gap_ax = ax.twinx() if _has_gap(state, compare) else None
    suffix = (f" ({labels[0]})", f" ({labels[1]})") if compare else ("", "")
    drew = _draw_state(ax, gap_ax, state, layers, dashed=False, suffix=suffix[0])
    if compare:
        drew |= _draw_state(ax, gap_ax, compare, layers, dashed=True, suffix=suffix[1])
    if not drew:
        if own:
            plt.close(fig)
        return None
    ax.set_xlabel("relative depth (0 = first hidden state, 1 = last)")
    ax.set_ylabel("identity probe accuracy")
    ax.set_ylim(0, 1.02)
    handles, names = ax.get_legend_handles_labels()
    if gap_ax is not None:
        gap_ax.axhline(0, color="grey", lw=0.7)
        gap_ax.set_ylabel("phone-accuracy gap (others − group)")
        h2, n2 = gap_ax.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    ax.legend(handles, names, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    if title:
        ax.set_title(title)
    return fig  # type: ignore[return-value]


def identity_by_depth_grid(by_encoder: Mapping[str, Tables], *, compare: Mapping[str, Tables] | None = None,
                           labels: tuple[str, str] = ("before", "after")) -> Figure | None:
    """One panel per encoder (:func:`identity_by_depth`), side by side; ``compare`` maps encoder -> tables of the
    second state. Encoders with nothing to draw are left out; ``None`` when none has anything."""
    names = [n for n, t in by_encoder.items() if _all_layers([t])]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(6.8 * len(names), 4.8), constrained_layout=True,
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        t = by_encoder[name]
        identity_by_depth(t.get("group_identity"), t.get("speaker_identity"), t.get("phone_gap"), title=name,
                          compare=(compare or {}).get(name), labels=labels, ax=ax)
    return fig
