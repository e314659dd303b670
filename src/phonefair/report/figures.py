"""The report's figures: tidy result tables in, a one-column matplotlib Figure out (``None`` if nothing to draw).

Conventions (docs/report.md): colour = group (:func:`~phonefair.report.style.group_colors`), line style and marker =
encoder (or fine-tuned variant); the x axis of every layer curve is the relative depth of
:func:`phonefair.layers.relative_depth` (0 = hidden state 0, 1 = last layer), so encoders of different depths
overlay, and the acoustic baseline sits at "layer −1" (x = −0.15). Every estimate is drawn with its 95 % interval
(bands or bars), and every axis states its unit: accuracy in %, gaps and changes in percentage points, squared
distances summed over embedding dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from phonefair.layers import layer_order, relative_depth
from phonefair.report.style import (
    BASELINE_COLOR,
    COLUMN_WIDTH_IN,
    NEUTRAL,
    encoder_styles,
    figure_to_base64,
    group_colors,
    new_figure,
    plain_text,
    save_figure,
    styled,
)

__all__ = [
    "BASELINE_X",
    "accuracy_by_layer",
    "figure_to_base64",
    "gap_by_layer",
    "group_colors",
    "identity_by_layer",
    "layer_curves",
    "layer_positions",
    "mechanism_shares",
    "phone_gaps_figure",
    "plain_text",
    "save_figure",
    "transfer_matrix",
    "variance_vs_accuracy",
]

#: relative depth of non-hierarchical feature sets (the acoustic baseline): "layer −1"
BASELINE_X = relative_depth("baseline", [])
#: where the report draws the baseline's point: further left than BASELINE_X, so that its tick label ("base")
#: does not run into the label of layer 0 in a one-column panel
BASELINE_SLOT = -0.3


def layer_positions(layers: Sequence[str]) -> dict[str, float]:
    """x position of each layer of one encoder: its relative depth; an encoder with no transformer layer at all
    (e.g. only acoustic feature sets drawn as an encoder of its own) gets evenly spaced positions on [0, 1]."""
    order = layer_order(layers)
    hier = [x for x in order if relative_depth(x, order) != BASELINE_X]
    if hier:
        return {x: relative_depth(x, order) for x in order}
    return {x: (i / (len(order) - 1) if len(order) > 1 else 0.0) for i, x in enumerate(order)}


def _encoders(df: pd.DataFrame, col: str) -> list[str]:
    return list(dict.fromkeys(df[col].astype(str))) if col in df.columns else [""]


def _select(df: pd.DataFrame, col: str, enc: str) -> pd.DataFrame:
    return df[df[col].astype(str) == enc] if col in df.columns else df


def _depth_axis(ax: Axes, *, baseline_label: str | None, layers: Sequence[str] | None) -> None:
    """Ticks: layer names when one encoder is drawn (thinned to ≤ 9), relative depth otherwise; the baseline's slot
    at −0.15 labelled with its feature set."""
    if layers is not None:
        pos = layer_positions(layers)
        names = [x for x in layer_order(layers) if pos[x] != BASELINE_X]
        step = max(1, int(np.ceil(len(names) / 9)))
        idx = list(range(0, len(names), step))
        if idx[-1] != len(names) - 1:  # always label the last layer; drop a label that would crowd it
            if len(idx) > 1 and len(names) - 1 - idx[-1] < step / 2:
                idx[-1] = len(names) - 1
            else:
                idx.append(len(names) - 1)
        keep = [names[i] for i in idx]
        ticks, labels = [pos[x] for x in keep], keep
    else:
        ticks, labels = [0.0, 0.25, 0.5, 0.75, 1.0], ["0", ".25", ".5", ".75", "1"]
    if baseline_label is not None:
        ax.axvline(BASELINE_SLOT / 2, color="#dddddd", lw=0.6)
        ticks, labels = [BASELINE_SLOT, *ticks], [baseline_label, *labels]
    ax.set_xticks(ticks, labels)
    ax.set_xlim((BASELINE_SLOT - 0.12) if baseline_label is not None else -0.05, 1.05)


@styled
def layer_curves(table: pd.DataFrame | None, *, est: str, lo: str, hi: str, ylabel: str, scale: float = 100.0,
                 encoder_col: str = "encoder", baseline: str | None = None, baseline_layer: str | None = None,
                 chance: Mapping[str, float] | float | None = None, zero_line: bool = False,
                 colors: Mapping[str, str] | None = None, title: str | None = None,
                 mark_layers: Mapping[str, str] | None = None) -> Figure | None:
    """Per group, ``est`` (× ``scale``) with its ``[lo, hi]`` band across relative depth, encoders overlaid.

    ``table``: rows ``layer, group, est, lo, hi`` and, for several encoders, ``encoder_col``. One encoder: one panel,
    every group in its colour. Several: one panel per group, encoders by line style. ``baseline``: an encoder of the
    table drawn as a point with its interval at "layer −1" (its feature set ``baseline_layer``, default: the first).
    ``chance``: a level per encoder (or one for all), drawn dotted. ``mark_layers``: ``{encoder: layer}`` marked
    with a ring (e.g. the headline layer).
    """
    need = {"layer", "group", est, lo, hi}
    if table is None or table.empty or not need <= set(table.columns):
        return None
    df = table.assign(layer=table["layer"].astype(str), group=table["group"].astype(str))
    encs = [e for e in _encoders(df, encoder_col) if e != baseline]
    if not encs:
        return None
    groups = sorted(df["group"].unique())
    cols = dict(colors) if colors else group_colors(groups)
    styles = encoder_styles(encs)
    single = len(encs) == 1
    base = _select(df, encoder_col, baseline) if baseline is not None else df.iloc[0:0]
    if len(base):
        baseline_layer = baseline_layer or layer_order(base["layer"])[0]
        base = base[base["layer"] == str(baseline_layer)]
    legend_ax = None
    if single:
        fig = new_figure(2.35)
        axes = [fig.subplots()]
        panel_of = dict.fromkeys(groups, axes[0])
    else:
        ncols = 1 if len(groups) == 1 else 2
        nrows = -(-len(groups) // ncols)
        fig = new_figure(1.25 * nrows + (0.55 if nrows * ncols == len(groups) else 0.3))
        all_axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel().tolist()
        axes = all_axes[:len(groups)]
        for ax in all_axes[len(groups):]:
            ax.axis("off")
        legend_ax = all_axes[len(groups)] if len(all_axes) > len(groups) else None
        for i, ax in enumerate(axes):  # x labels under every panel with no panel below it
            if i + ncols >= len(groups):
                ax.xaxis.set_tick_params(labelbottom=True)
        panel_of = dict(zip(groups, axes, strict=True))
    chances = chance if isinstance(chance, Mapping) else ({e: chance for e in encs} if chance is not None else {})
    for enc in encs:
        d_enc = _select(df, encoder_col, enc)
        pos = layer_positions(d_enc["layer"].unique())
        st = styles[enc]
        for g in groups:
            d = d_enc[d_enc["group"] == g]
            if d.empty:
                continue
            d = d.assign(_x=d["layer"].map(pos)).sort_values("_x")
            ax = panel_of[g]
            label = g if single else enc
            ax.plot(d["_x"], scale * d[est].astype(float), ls=st["ls"], marker=st["marker"], color=cols[g],
                    label=label, gid=f"{enc}|{g}|{est}")
            ax.fill_between(d["_x"], scale * d[lo].astype(float), scale * d[hi].astype(float), color=cols[g],
                            alpha=0.15, lw=0)
            if mark_layers and enc in mark_layers and str(mark_layers[enc]) in set(d["layer"]):
                r = d[d["layer"] == str(mark_layers[enc])].iloc[0]
                ax.plot([r["_x"]], [scale * float(r[est])], marker="o", ms=7, mfc="none", mec=cols[g], mew=0.8)
    for k, g in enumerate(groups):
        b = base[base["group"] == g]
        if len(b):
            r = b.iloc[0]
            y, ylo, yhi = (scale * float(r[c]) for c in (est, lo, hi))
            # one panel for every group: spread the groups' baseline points so their bars do not hide each other
            dx = (k - (len(groups) - 1) / 2) * min(0.05, 0.16 / max(len(groups), 1)) if single else 0.0
            panel_of[g].errorbar([BASELINE_SLOT + dx], [y], yerr=[[max(y - ylo, 0)], [max(yhi - y, 0)]], fmt="s",
                                 color=cols[g], mec="black", mew=0.5, capsize=2, ms=4, gid=f"{baseline}|{g}|{est}")
    multi_layers = None if not single else list(_select(df, encoder_col, encs[0])["layer"].unique())
    for ax in axes:
        if zero_line:
            ax.axhline(0, color="grey", lw=0.6)
        for enc, level in chances.items():
            if enc in encs and level is not None and np.isfinite(level):
                ax.axhline(scale * float(level), color="grey", ls=(0, (1, 1.5)), lw=0.8)
        _depth_axis(ax, baseline_label="base" if len(base) else None, layers=multi_layers)
    if not single:
        for g, ax in panel_of.items():
            ax.set_title(g, color=cols[g], fontweight="bold")
    if single:
        axes[0].set_xlabel("layer")
        axes[0].set_ylabel(ylabel)
    else:
        fig.supxlabel("relative depth (0 = hidden state 0, 1 = last layer)", fontsize=7)
        fig.supylabel(ylabel, fontsize=7)
    handles: list[Any] = []
    if single:
        handles += [Line2D([], [], color=cols[g], marker=styles[encs[0]]["marker"], label=g) for g in groups]
    else:
        handles += [Line2D([], [], color=NEUTRAL, ls=styles[e]["ls"], marker=styles[e]["marker"], label=e)
                    for e in encs]
    if len(base):
        handles.append(Line2D([], [], color=BASELINE_COLOR, marker="s", ls="none", mec="black", mew=0.5,
                              label=f"base: acoustic baseline ({baseline_layer})"))
    if chances and any(v is not None for v in chances.values()):
        handles.append(Line2D([], [], color="grey", ls=(0, (1, 1.5)), label="majority class"))
    if mark_layers:
        handles.append(Line2D([], [], color=NEUTRAL, marker="o", ms=7, mfc="none", ls="none", mew=0.8,
                              label="headline layer"))
    if legend_ax is not None:  # the free panel of the grid holds the legend
        legend_ax.legend(handles=handles, loc="center", handlelength=2.4)
    else:  # under the axes (their x label is the axes', so the two cannot overlap), two columns fit 3.3 in
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 2), handlelength=2.4)
    if title:
        fig.suptitle(title)
    return fig


def accuracy_by_layer(group_accuracy: pd.DataFrame | None, *, chance: Mapping[str, float] | float | None = None,
                      baseline: str | None = None, baseline_layer: str | None = None,
                      colors: Mapping[str, str] | None = None,
                      mark_layers: Mapping[str, str] | None = None) -> Figure | None:
    """Each group's mean speaker accuracy (standardised, cross-fitted; %) across depth with t-interval bands, the
    majority-class level and the acoustic baseline at "layer −1" (``group_accuracy`` of the audit)."""
    return layer_curves(group_accuracy, est="accuracy", lo="accuracy_ci_low", hi="accuracy_ci_high",
                        ylabel="phone accuracy (%)", chance=chance, baseline=baseline, baseline_layer=baseline_layer,
                        colors=colors, mark_layers=mark_layers)


def gap_by_layer(group_accuracy: pd.DataFrame | None, *, baseline: str | None = None,
                 baseline_layer: str | None = None, colors: Mapping[str, str] | None = None,
                 mark_layers: Mapping[str, str] | None = None) -> Figure | None:
    """Each group's gap ``A_ref − A_g`` (percentage points; positive = served worse) across depth with Welch
    bands, and the acoustic baseline's gap at "layer −1"."""
    return layer_curves(group_accuracy, est="gap", lo="gap_ci_low", hi="gap_ci_high",
                        ylabel="gap (pp; + = served worse)", zero_line=True, baseline=baseline,
                        baseline_layer=baseline_layer, colors=colors, mark_layers=mark_layers)


def shares_rows(shares: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`mechanism_shares` in drawing order (top to bottom): by encoder, group, space, with their
    panel title (``block``: "encoder · C"), the row ``label`` as drawn ("layer 0, lda") and a full ``row`` name
    ("encoder · C @ 0 (lda)") for tables."""
    s = shares.copy()
    if "encoder" not in s.columns:
        s["encoder"] = ""
    order = list(dict.fromkeys(s["encoder"].astype(str)))
    s = s.assign(_enc=s["encoder"].astype(str).map(order.index), _space=s["space"].astype(str))
    s = s.sort_values(["_enc", "group", "_space"], kind="stable").reset_index(drop=True)
    enc, grp, lay = s["encoder"].astype(str), s["group"].astype(str), s["layer"].astype(str)
    s["block"] = [(f"{e} · " if e else "") + g for e, g in zip(enc, grp, strict=True)]
    s["label"] = [f"layer {x}, {sp}" for x, sp in zip(lay, s["_space"], strict=True)]
    s["row"] = [(f"{e} · " if e else "") + f"{g} @ {x} ({sp})"
                for e, g, x, sp in zip(enc, grp, lay, s["_space"], strict=True)]
    return s.drop(columns=["_enc", "_space"])


@styled
def mechanism_shares(shares: pd.DataFrame | None, *, colors: Mapping[str, str] | None = None) -> Figure | None:
    """Why, for each group served worse (the ``shares`` table, at its peak layer, raw and discriminant space):

    left, the systematic share ``sys⁺ / (sys⁺ + rand⁺)`` in % with its speaker-bootstrap interval; right, the two
    excesses it is made of, in the same unit (squared distance summed over dimensions): the systematic excess (filled
    circle) and the random excess (open square), each with its interval. One pair of panels per (encoder, group),
    titled with both in the group's colour, one row per (layer, space): the share axis is common (0–100 %), the
    distance axis is shared within an encoder only (encoders' embeddings have different scales). The estimates are
    unbiased, so an excess near zero can come out negative; it is drawn where it is, left of the zero line (the share
    counts it as 0).
    """
    need = {"group", "layer", "space", "share_systematic", "systematic_excess", "random_excess"}
    if shares is None or shares.empty or not need <= set(shares.columns):
        return None
    s = shares_rows(shares)
    cols = dict(colors) if colors else group_colors(s["group"].astype(str))
    blocks = [(str(b), d) for b, d in s.groupby("block", sort=False)]
    sizes = [len(d) + 1.0 for _, d in blocks]
    fig = new_figure(0.75 + 0.17 * sum(sizes))
    grid = fig.add_gridspec(len(blocks), 2, height_ratios=sizes, width_ratios=[1, 1.25])
    ax_share = ax_ex = None
    ex_of: dict[str, Axes] = {}  # one distance axis per encoder: its groups compare, encoders' scales do not mix

    def points(ax: Axes, v: np.ndarray, lo: np.ndarray, hi: np.ndarray, yy: np.ndarray, **kw: Any) -> None:
        err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
        ax.errorbar(v, yy, xerr=np.where(np.isfinite(err), err, 0), fmt="none", ecolor="grey", elinewidth=0.8,
                    capsize=1.5)
        ax.plot(v, yy, ls="none", **kw)

    for b, (block, d) in enumerate(blocks):
        enc, g = str(d["encoder"].iloc[0]), str(d["group"].iloc[0])
        ax_share = fig.add_subplot(grid[b, 0], sharex=ax_share)
        ax_ex = fig.add_subplot(grid[b, 1], sharey=ax_share, sharex=ex_of.get(enc))
        ex_of.setdefault(enc, ax_ex)
        y = -np.arange(len(d), dtype=float)
        points(ax_share, 100 * d["share_systematic"].to_numpy(float), 100 * d["share_systematic_ci_low"].to_numpy(float),
               100 * d["share_systematic_ci_high"].to_numpy(float), y, marker="o", color=NEUTRAL, ms=3.5,
               gid="share_systematic")
        ax_share.set_yticks(y, d["label"])
        ax_share.tick_params(axis="y", length=0)
        ax_share.set_ylim(y[-1] - 0.6, 0.6)
        ax_share.set_xlim(-5, 105)
        ax_share.set_xticks([0, 50, 100])
        ax_share.axvline(50, color="#e5e5e5", lw=0.6, zorder=0)
        dy = 0.16
        points(ax_ex, d["systematic_excess"].to_numpy(float), d["systematic_excess_ci_low"].to_numpy(float),
               d["systematic_excess_ci_high"].to_numpy(float), y + dy, marker="o", color=NEUTRAL, ms=3.5,
               gid="systematic_excess")
        points(ax_ex, d["random_excess"].to_numpy(float), d["random_excess_ci_low"].to_numpy(float),
               d["random_excess_ci_high"].to_numpy(float), y - dy, marker="s", color=NEUTRAL, mfc="white", ms=3.5,
               gid="random_excess")
        ax_ex.axvline(0, color="grey", lw=0.6)
        ax_ex.tick_params(axis="y", labelleft=False, length=0)
        # the panel title names encoder and group (in the group's colour) and runs over both panels
        title = ax_share.set_title(block, loc="left", fontweight="bold", color=cols[g])
        title.set_in_layout(False)
        if b < len(blocks) - 1:
            ax_share.tick_params(axis="x", labelbottom=False)
            if str(blocks[b + 1][1]["encoder"].iloc[0]) == enc:
                ax_ex.tick_params(axis="x", labelbottom=False)
    assert ax_share is not None and ax_ex is not None
    ax_share.set_xlabel("systematic share (%)")
    ax_ex.set_xlabel("excess squared distance\n(sum over dimensions)")
    fig.legend(handles=[Line2D([], [], ls="none", marker="o", color=NEUTRAL, label="systematic excess"),
                        Line2D([], [], ls="none", marker="s", color=NEUTRAL, mfc="white", label="random excess")],
               loc="outside upper right", ncol=2)
    return fig


@styled
def transfer_matrix(probe_accuracy: pd.DataFrame | None, layer: str | None, *,
                    metric: str = "standardized_accuracy", title: str | None = None) -> Figure | None:
    """Training population (rows) × test group (columns) at one layer, accuracy in % written in every cell: the
    all-speaker probe, the size-matched pooled probe, and one size-matched probe per training group."""
    if probe_accuracy is None or probe_accuracy.empty or layer is None:
        return None
    pa = probe_accuracy
    if "metric" in pa.columns:
        pa = pa[pa["metric"] == metric]
    pa = pa[pa["layer"].astype(str) == str(layer)]
    if pa.empty:
        return None

    def pop(r: pd.Series) -> str:
        k, g = str(r["train_kind"]), r["train_group"]
        return {"all": "all speakers", "pooled": "pooled (size-matched)"}.get(k, f"{k}: {g}") \
            if k in ("all", "pooled") or pd.isna(g) else (f"trained on {g}" if k == "group" else f"without {g}")

    pa = pa.assign(population=pa.apply(pop, axis=1), test_group=pa["test_group"].astype(str))
    kinds = {"all speakers": 0, "pooled (size-matched)": 1}
    pops = sorted(pa["population"].unique(), key=lambda p: (kinds.get(p, 2), p))
    tests = sorted(pa["test_group"].unique())
    m = pa.pivot_table(index="population", columns="test_group", values="estimate", aggfunc="mean").reindex(
        index=pops, columns=tests).to_numpy(float) * 100
    cell = 0.42
    fig = new_figure(0.75 + cell * len(pops), min(COLUMN_WIDTH_IN, 1.6 + cell * len(tests)))
    ax = fig.subplots()
    finite = m[np.isfinite(m)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    im = ax.imshow(m, cmap="cividis", vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1, aspect="auto")
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6.5,
                    color="white" if v < (vmin + vmax) / 2 else "black", gid=f"cell|{pops[i]}|{tests[j]}")
    ax.set_xticks(range(len(tests)), tests, rotation=30 if max(map(len, tests)) > 4 else 0, ha="right"
                  if max(map(len, tests)) > 4 else "center")
    ax.set_yticks(range(len(pops)), pops)
    ax.set_xlabel("test group")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    cb = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    cb.set_label("accuracy (%)")
    ax.set_title(f"{title} · layer {layer}" if title else f"layer {layer}")
    return fig


@styled
def identity_by_layer(group_identity: pd.DataFrame | None, speaker_identity: pd.DataFrame | None,
                      group_accuracy: pd.DataFrame | None, *, colors: Mapping[str, str] | None = None,
                      encoders: Sequence[str] | None = None) -> Figure | None:
    """Where group and speaker identity live beside where the gap is, encoders overlaid on relative depth:
    group-identity balanced accuracy (%), closed-set speaker-identity accuracy (%), each with CI bands and its
    chance level (dotted), and each group's gap (pp) below."""
    gi = _pooled(group_identity, "phone")
    si = _pooled(speaker_identity, "group")
    if gi.empty and si.empty:
        return None
    encs = list(encoders) if encoders else list(dict.fromkeys(
        [*_encoders(gi, "encoder"), *_encoders(si, "encoder")] if len(gi) or len(si) else []))
    encs = [e for e in encs if (len(gi) and e in set(_encoders(gi, "encoder"))) or
            (len(si) and e in set(_encoders(si, "encoder")))]
    styles = encoder_styles(encs)
    panels = [(t, v, lab) for t, v, lab in ((gi, "balanced_accuracy", "group identity\nbalanced acc. (%)"),
                                            (si, "accuracy", "speaker identity\naccuracy (%)")) if len(t)]
    ga = group_accuracy if group_accuracy is not None and not group_accuracy.empty else None
    group_handles: list[Line2D] = []
    if ga is not None and "encoder" in ga.columns:
        ga = ga[ga["encoder"].astype(str).isin(encs)]
    n = len(panels) + (ga is not None and len(ga) > 0)
    fig = new_figure(0.6 + 1.15 * n)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0].tolist()
    for ax, (t, v, lab) in zip(axes, panels, strict=False):
        for enc in encs:
            d = _select(t, "encoder", enc)
            if d.empty:
                continue
            pos = layer_positions(_layers_of(enc, [gi, si, ga]))
            d = d.assign(_x=d["layer"].astype(str).map(pos)).sort_values("_x")
            st = styles[enc]
            ax.plot(d["_x"], 100 * d[v].astype(float), color=NEUTRAL, ls=st["ls"], marker=st["marker"], label=enc)
            if {"ci_low", "ci_high"} <= set(d.columns):
                ax.fill_between(d["_x"], 100 * d["ci_low"].astype(float), 100 * d["ci_high"].astype(float),
                                color=NEUTRAL, alpha=0.1, lw=0)
            if "chance" in d.columns:
                ax.plot(d["_x"], 100 * d["chance"].astype(float), color="grey", ls=(0, (1, 1.5)), lw=0.8)
        ax.set_ylabel(lab)
    if ga is not None and len(ga):
        ax = axes[-1]
        gcols = dict(colors) if colors else group_colors(ga["group"].astype(str))
        for enc in encs:
            d_enc = _select(ga, "encoder", enc)
            pos = layer_positions(_layers_of(enc, [gi, si, ga]))
            for g, d in d_enc.groupby(d_enc["group"].astype(str), sort=True):
                d = d.assign(_x=d["layer"].astype(str).map(pos)).sort_values("_x")
                ax.plot(d["_x"], 100 * d["gap"].astype(float), color=gcols[g], ls=styles[enc]["ls"],
                        marker=styles[enc]["marker"], ms=2.5)
                ax.fill_between(d["_x"], 100 * d["gap_ci_low"].astype(float), 100 * d["gap_ci_high"].astype(float),
                                color=gcols[g], alpha=0.1, lw=0)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_ylabel("gap (pp)")
        # group colours go in the figure legend: a legend inside the panel at loc="best" moves between renderings
        # and made constrained layout collapse when one figure was saved at several resolutions
        group_handles = [Line2D([], [], color=gcols[g], lw=2, label=g) for g in sorted(gcols)]
    for ax in axes:
        _depth_axis(ax, baseline_label=None, layers=None)
    axes[-1].set_xlabel("relative depth (0 = hidden state 0, 1 = last layer)")
    handles = [Line2D([], [], color=NEUTRAL, ls=styles[e]["ls"], marker=styles[e]["marker"], label=e) for e in encs]
    handles.append(Line2D([], [], color="grey", ls=(0, (1, 1.5)), label="chance"))
    fig.legend(handles=handles + group_handles, loc="outside upper center", ncol=min(3, len(handles)),
               handlelength=2.4)
    return fig


def _pooled(df: pd.DataFrame | None, key: str) -> pd.DataFrame:
    if df is None or df.empty or key not in df.columns:
        return pd.DataFrame()
    return df[df[key].astype(str) == "*"]


def _layers_of(enc: str, tables: Sequence[pd.DataFrame | None]) -> list[str]:
    out: list[str] = []
    for t in tables:
        if t is not None and len(t):
            out += _select(t, "encoder", enc)["layer"].astype(str).tolist()
    return out


@styled
def phone_gaps_figure(phone_gaps: pd.DataFrame | None, *, top: int = 10,
                      colors: Mapping[str, str] | None = None) -> Figure | None:
    """Where, phone by phone: for each group served worse (per encoder), its largest per-phone gaps (pp) against
    the groups it is served worse than, at its peak layer, with Welch intervals; filled = significant (BH)."""
    if phone_gaps is None or phone_gaps.empty:
        return None
    pg = phone_gaps.copy()
    if "encoder" not in pg.columns:
        pg["encoder"] = ""
    blocks = []
    for (enc, g), d in pg.groupby([pg["encoder"].astype(str), pg["group"].astype(str)], sort=False):
        blocks.append((enc, g, d.sort_values("gap", ascending=False).head(top)))
    n = len(blocks)
    if n == 0:
        return None
    cols = dict(colors) if colors else group_colors(pg["group"].astype(str))
    ncols = min(n, 2)
    nrows = -(-n // ncols)
    rows_per = max(len(b[2]) for b in blocks)
    fig = new_figure(0.5 + nrows * (0.3 + 0.13 * rows_per))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharex=True)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, (enc, g, d) in zip(axes, blocks, strict=False):
        y = np.arange(len(d))[::-1]
        v = 100 * d["gap"].to_numpy(float)
        lo, hi = 100 * d["ci_low"].to_numpy(float), 100 * d["ci_high"].to_numpy(float)
        ax.errorbar(v, y, xerr=np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)]), fmt="none",
                    ecolor="grey", elinewidth=0.7, capsize=1)
        sig = d["significant"].fillna(False).astype(bool).to_numpy() if "significant" in d else np.zeros(len(d), bool)
        ax.plot(v[sig], y[sig], "o", color=cols[g], ms=3.5)
        ax.plot(v[~sig], y[~sig], "o", mfc="white", color=cols[g], ms=3.5)
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_yticks(y, d["phone"].astype(str))
        layer = str(d["layer"].iloc[0]) if len(d) else ""
        ax.set_title((f"{enc}\n" if enc else "") + f"{g} @ {layer}", color=cols[g], fontsize=6.5)
    fig.supxlabel("per-phone gap (pp; filled = significant, BH)", fontsize=7)
    return fig


@styled
def variance_vs_accuracy(speaker_variance: pd.DataFrame | None, speaker_accuracy: pd.DataFrame | None,
                         layers: Mapping[str, str], *, space: str = "raw", colors: Mapping[str, str] | None = None,
                         variance_accuracy: pd.DataFrame | None = None) -> Figure | None:
    """Per speaker: normalised embedding variance vs accuracy (%) at each encoder's headline layer, one panel per
    encoder, coloured by group, with Spearman's ρ and its speaker-bootstrap interval in the title."""
    if speaker_variance is None or speaker_accuracy is None or not layers:
        return None
    sv, sa = speaker_variance.copy(), speaker_accuracy.copy()
    for t in (sv, sa):
        if "encoder" not in t.columns:
            t["encoder"] = ""
        t["layer"] = t["layer"].astype(str)
    if "space" in sv.columns:
        sv = sv[sv["space"].astype(str) == space]
    panels = []
    for enc, layer in layers.items():
        a = sa[(sa["encoder"].astype(str) == enc) & (sa["layer"] == str(layer))]
        v = sv[(sv["encoder"].astype(str) == enc) & (sv["layer"] == str(layer))]
        m = v[["speaker", "group", "variance"]].merge(a[["speaker", "standardized_accuracy"]], on="speaker")
        if len(m):
            panels.append((enc, str(layer), m))
    if not panels:
        return None
    cols = dict(colors) if colors else group_colors(sa["group"].astype(str))
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = new_figure(0.6 + 1.5 * nrows)
    all_axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    axes = all_axes[:len(panels)]
    for ax in all_axes[len(panels):]:
        ax.axis("off")
    for ax, (enc, layer, m) in zip(axes, panels, strict=False):
        for g, d in m.groupby(m["group"].astype(str), sort=True):
            ax.scatter(d["variance"], 100 * d["standardized_accuracy"], s=8, color=cols[g], label=g, lw=0)
        title = (f"{enc} · " if enc else "layer ") + f"{layer}"
        if variance_accuracy is not None and not variance_accuracy.empty:
            va = variance_accuracy.copy()
            if "encoder" not in va.columns:
                va["encoder"] = ""
            va = va[(va["encoder"].astype(str) == enc) & (va["layer"].astype(str) == layer)
                    & (va["space"].astype(str) == space)]
            if len(va) and np.isfinite(float(va["rho"].iloc[0])):
                r = va.iloc[0]
                title += f"\nρ = {r['rho']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        ax.set_title(title, fontsize=6.5)
    fig.supxlabel(f"normalised phone variance of the speaker ({space} space)", fontsize=7)
    fig.supylabel("speaker accuracy (%)", fontsize=7)
    handles = [Line2D([], [], color=cols[g], marker="o", ls="none", label=g) for g in sorted(cols)]
    if len(all_axes) > len(panels):
        all_axes[len(panels)].legend(handles=handles, loc="center")
    else:
        fig.legend(handles=handles, loc="outside upper center", ncol=min(4, len(handles)))
    return fig
