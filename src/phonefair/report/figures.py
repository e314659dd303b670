"""Figures for the report, one function per figure: tidy result tables in, a matplotlib Figure out.

Each function takes the table(s) of one encoder (the report facets by encoder) and returns ``None`` when the
table lacks what the figure needs, so the report can say "not computed" instead of failing.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["layer_order", "best_layer", "accuracy_by_layer", "train_test_heatmaps", "in_group_benefit",
           "variance_vs_accuracy", "decomposition_bars", "figure_to_base64", "save_figure", "plain_text"]

_COLORS = plt.get_cmap("tab10").colors
_F = TypeVar("_F", bound=Callable[..., Any])


def plain_text() -> AbstractContextManager[Any]:
    """Matplotlib settings under which every string is drawn as given. Group, phone and layer labels come from
    the data, and mathtext would read "$10k-$20k" as math (drawn "10k−20k") and fail to draw "a $_$ b". Used
    while a figure is built (legends, titles) and while it is drawn (tick labels are created then); the global
    settings are left alone."""
    return plt.rc_context({"text.parse_math": False})


def _plain(fn: _F) -> _F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with plain_text():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def layer_order(layers: pd.Series | list[str]) -> list[str]:
    """Layer names in depth order (:func:`phonefair.layers.layer_order`)."""
    from phonefair.layers import layer_order as order

    return order(layers)


@_plain
def accuracy_by_layer(group_accuracy: pd.DataFrame | None) -> Figure | None:
    """Left: each group's mean speaker accuracy (all-speaker probe, cross-fitted) per layer with t-interval bands.
    Right: each group's gap to the reference / the other groups, with Welch intervals (positive = served worse)."""
    if group_accuracy is None or group_accuracy.empty:
        return None
    ga = group_accuracy.assign(layer=group_accuracy["layer"].astype(str))
    order = layer_order(ga["layer"])
    x = np.arange(len(order))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for i, (grp, d) in enumerate(ga.groupby("group", sort=True)):
        d = d.set_index("layer").reindex(order)
        c = _COLORS[i % len(_COLORS)]
        axes[0].plot(x, 100 * d["accuracy"], marker="o", ms=3, color=c, label=str(grp))
        axes[0].fill_between(x, 100 * d["accuracy_ci_low"].astype(float), 100 * d["accuracy_ci_high"].astype(float),
                             color=c, alpha=0.15)
        axes[1].plot(x, 100 * d["gap"], marker="o", ms=3, color=c, label=str(grp))
        axes[1].fill_between(x, 100 * d["gap_ci_low"].astype(float), 100 * d["gap_ci_high"].astype(float),
                             color=c, alpha=0.15)
    for ax in axes:
        ax.set_xticks(x, order, rotation=0 if len(order) < 16 else 90)
        ax.set_xlabel("layer")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("phone accuracy (%)")
    axes[0].set_title("Accuracy per group (95% CI)", fontsize=10)
    axes[1].set_ylabel("gap (percentage points)")
    axes[1].set_title("Gap to the others (positive = served worse; 95% CI)", fontsize=10)
    axes[0].legend(fontsize=8, title="group", title_fontsize=8)
    return fig


def _population_label(row: pd.Series) -> str:
    kind = str(row.get("train_kind", "pooled"))
    grp = row.get("train_group")
    if kind == "pooled" or grp is None or pd.isna(grp):
        return kind
    return f"{kind}: {grp}"


@_plain
def train_test_heatmaps(probe_accuracy: pd.DataFrame | None, layers: list[str]) -> Figure | None:
    """Small multiples: training population (rows) × test group (columns) accuracy, one panel per layer."""
    if probe_accuracy is None or probe_accuracy.empty or not layers:
        return None
    pa = probe_accuracy
    if "metric" in pa:
        pa = pa[pa["metric"] == "accuracy"]
    pa = pa.assign(population=pa.apply(_population_label, axis=1), layer=pa["layer"].astype(str))
    pa = pa[pa["layer"].isin(layers)]
    if pa.empty:
        return None
    pops = list(dict.fromkeys(sorted(pa["population"], key=lambda s: (s != "pooled", s))))
    tests = sorted(pa["test_group"].astype(str).unique())
    n = len(layers)
    w = max(2.2, 0.55 * len(tests) + 1.2)
    h = max(2.2, 0.28 * len(pops) + 1.2)
    fig, axes = plt.subplots(1, n, figsize=(min(16, w * n + 2), h), constrained_layout=True, squeeze=False)
    vmin, vmax = float(pa["estimate"].min()), float(pa["estimate"].max())
    im = None
    for ax, layer in zip(axes[0], layers):
        m = (pa[pa["layer"] == layer].pivot_table(index="population", columns="test_group", values="estimate",
                                                   aggfunc="mean").reindex(index=pops, columns=tests))
        im = ax.imshow(m.to_numpy(dtype=float), vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(tests)), tests, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(pops)), pops if ax is axes[0][0] else [""] * len(pops), fontsize=7)
        ax.set_title(f"layer {layer}", fontsize=9)
        if len(tests) * len(pops) <= 64:
            for (i, j), v in np.ndenumerate(m.to_numpy(dtype=float)):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v < (vmin + vmax) / 2 else "black")
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    return fig


@_plain
def in_group_benefit(benefit: pd.DataFrame | None, layer: str | None) -> Figure | None:
    """In-group benefit (group-trained minus pooled probe accuracy on that group) with CIs at ``layer``,
    and across layers."""
    if benefit is None or benefit.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    b = benefit.assign(layer=benefit["layer"].astype(str))
    ax = axes[0]
    d = b[b["layer"] == layer] if layer is not None else b.iloc[0:0]
    if not d.empty:
        d = d.sort_values("group")
        y = np.arange(len(d))
        err = np.vstack([d["delta"] - d["ci_low"], d["ci_high"] - d["delta"]]).astype(float)
        sig = d["significant"].fillna(False).astype(bool) if "significant" in d else np.zeros(len(d), bool)
        ax.errorbar(d["delta"], y, xerr=np.abs(err), fmt="none", ecolor="grey", capsize=3)
        ax.scatter(d["delta"], y, c=["tab:red" if s else "tab:blue" for s in sig], zorder=3)
        ax.set_yticks(y, d["group"].astype(str))
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("accuracy: group-trained − pooled")
    ax.set_title(f"In-group benefit at layer {layer} (red: q < alpha)", fontsize=10)
    ax = axes[1]
    order = layer_order(b["layer"])
    x = np.arange(len(order))
    for i, (grp, g) in enumerate(b.groupby("group", sort=True)):
        g = g.set_index("layer").reindex(order)
        c = _COLORS[i % len(_COLORS)]
        ax.plot(x, g["delta"], marker="o", ms=3, color=c, label=str(grp))
        ax.fill_between(x, g["ci_low"].astype(float), g["ci_high"].astype(float), color=c, alpha=0.12)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, order, rotation=0 if len(order) < 16 else 90)
    ax.set_xlabel("layer")
    ax.legend(fontsize=8)
    ax.set_title("In-group benefit across layers", fontsize=10)
    return fig


@_plain
def variance_vs_accuracy(speaker_variance: pd.DataFrame | None, speaker_accuracy: pd.DataFrame | None,
                         layer: str | None, *, space: str = "raw",
                         variance_accuracy: pd.DataFrame | None = None) -> Figure | None:
    """Per-speaker embedding variance vs per-speaker probe accuracy at ``layer``, coloured by group."""
    if speaker_variance is None or speaker_accuracy is None or layer is None:
        return None
    sv = speaker_variance.assign(layer=speaker_variance["layer"].astype(str))
    if "space" in sv:
        sv = sv[sv["space"] == space]
    sv = sv[sv["layer"] == layer]
    sa = speaker_accuracy.assign(layer=speaker_accuracy["layer"].astype(str))
    sa = sa[sa["layer"] == layer]
    m = sv[["speaker", "group", "variance"]].merge(sa[["speaker", "accuracy"]], on="speaker", how="inner")
    if m.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    for i, (grp, d) in enumerate(m.groupby("group", sort=True)):
        ax.scatter(d["variance"], d["accuracy"], s=18, color=_COLORS[i % len(_COLORS)], label=str(grp))
    title = f"Speakers at layer {layer} ({space} space)"
    if variance_accuracy is not None and not variance_accuracy.empty:
        va = variance_accuracy.assign(layer=variance_accuracy["layer"].astype(str))
        va = va[(va["layer"] == layer) & ((va["space"] == space) if "space" in va else True)]
        if not va.empty:
            r = va.iloc[0]
            title += f"\nSpearman rho {r['rho']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("within-speaker embedding variance")
    ax.set_ylabel("speaker accuracy (pooled probe)")
    ax.legend(fontsize=8)
    return fig


@_plain
def decomposition_bars(decomposition: pd.DataFrame | None, layer: str | None) -> Figure | None:
    """Per group: systematic shift² vs between- and within-speaker variance (phone average), per space."""
    if decomposition is None or decomposition.empty or layer is None:
        return None
    d = decomposition.assign(layer=decomposition["layer"].astype(str))
    d = d[(d["layer"] == layer) & (d["phone"].astype(str) == "*")]
    if d.empty:
        return None
    spaces = sorted(d["space"].astype(str).unique()) if "space" in d else ["raw"]
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.5 * len(spaces), 3.6), constrained_layout=True,
                             squeeze=False)
    parts = [("shift_sq", "systematic shift²", "tab:red"),
             ("between_speaker_var", "between-speaker var", "tab:orange"),
             ("within_speaker_var", "within-speaker var", "tab:blue")]
    for ax, space in zip(axes[0], spaces):
        s = d[d["space"].astype(str) == space].sort_values("group") if "space" in d else d
        y = np.arange(len(s))
        left = np.zeros(len(s))
        for col, label, color in parts:
            v = s[col].astype(float).fillna(0).to_numpy()
            ax.barh(y, v, left=left, color=color, label=label)
            left += v
        ax.set_yticks(y, s["group"].astype(str))
        ax.set_title(f"Error decomposition, layer {layer}, {space} space", fontsize=10)
        ax.set_xlabel("squared distance")
    axes[0][0].legend(fontsize=8)
    return fig


@_plain
def figure_to_base64(fig: Figure) -> str:
    """PNG bytes of ``fig`` as base64 text (for an ``<img src="data:...">``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@_plain
def save_figure(fig: Figure, directory: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` under ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.png", directory / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths
